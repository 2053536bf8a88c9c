"""Static checks of an APK that no phone is needed for (run by android_demo/ci_check.sh).

* the APK's package, minSdk and launchable activity (`aapt2 dump badging`), and `dexdump -c` checksums;
* each requested ABI has native libraries, and every `.so` under `lib/<abi>/` is an ELF of that ABI's machine;
* every NEEDED library is in the same ABI folder or is one of the NDK's stable system libraries;
* the API level in `.note.android.ident` is at most minSdk (the library loads on the oldest supported phone);
* every `native` method in the dex resolves: a `Java_...` export of some library, or (fbjni's
  RegisterNatives) the class path and the method name both as strings in some library;
* the ExecuTorch program identifier of the SDK's `executorch` (`file_identifier` of schema/program.fbs) is in
  `libexecutorch.so`, so the runtime reads the flatbuffer version the SDK writes (necessary, not sufficient);
* the LOAD segment alignment of each library is reported (16 KiB pages need 0x4000).

Prints one line per failure and ends with "N passed, N failed"; exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MACHINE = {"arm64-v8a": "AArch64", "x86_64": "Advanced Micro Devices X86-64", "armeabi-v7a": "ARM", "x86": "80386"}
NDK_SYSTEM_LIBS = {
    "libc.so",
    "libm.so",
    "libdl.so",
    "liblog.so",
    "libz.so",
    "libandroid.so",
    "libjnigraphics.so",
    "libEGL.so",
    "libGLESv1_CM.so",
    "libGLESv2.so",
    "libGLESv3.so",
    "libOpenSLES.so",
    "libOpenMAXAL.so",
    "libvulkan.so",
    "libmediandk.so",
    "libnativewindow.so",
    "libsync.so",
    "libneuralnetworks.so",
    "libcamera2ndk.so",
    "libaaudio.so",
    "libamidi.so",
    "libbinder_ndk.so",
    "libstdc++.so",
}


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, errors="replace").stdout


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, what: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what}")


def jni_mangle(s: str) -> str:
    out = []
    for ch in s:
        if ch == "/" or ch == ".":
            out.append("_")
        elif ch == "_":
            out.append("_1")
        elif ch == ";":
            out.append("_2")
        elif ch == "[":
            out.append("_3")
        elif ch.isascii() and ch.isalnum():
            out.append(ch)
        else:
            out.append(f"_0{ord(ch):04x}")
    return "".join(out)


def native_methods(dexdump: str) -> list[tuple[str, str]]:
    """(class path with slashes, method name) of every native method in `dexdump` output."""
    found = []
    cls = None
    name = None
    for line in dexdump.splitlines():
        m = re.match(r"\s*Class descriptor\s*:\s*'L(.+);'", line)
        if m:
            cls = m.group(1)
            continue
        m = re.match(r"\s*#\d+\s*:\s*\(in L(.+);\)", line)
        if m:
            cls = m.group(1)
            continue
        m = re.match(r"\s*name\s*:\s*'(.+)'", line)
        if m:
            name = m.group(1)
            continue
        m = re.match(r"\s*access\s*:\s*0x[0-9a-f]+ \((.*)\)", line)
        if m and "NATIVE" in m.group(1).split() and cls and name:
            found.append((cls, name))
    return sorted(set(found))


def sdk_program_identifier() -> bytes | None:
    try:
        import executorch
    except ImportError:
        return None
    fbs = Path(list(executorch.__path__)[0]) / "schema" / "program.fbs"
    m = re.search(r'file_identifier\s+"(\w{4})"', fbs.read_text()) if fbs.is_file() else None
    return m.group(1).encode() if m else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("apk")
    ap.add_argument("--min-sdk", type=int, required=True)
    ap.add_argument("--abi", action="append", required=True)
    ap.add_argument("--package", default="org.edgecpm.demo")
    args = ap.parse_args(argv)
    c = Checks()
    apk = Path(args.apk)

    badging = run("aapt2", "dump", "badging", str(apk))
    c.check(f"package: name='{args.package}'" in badging, f"package is not {args.package}")
    m = re.search(r"sdkVersion:'(\d+)'", badging)
    c.check(m is not None and int(m.group(1)) == args.min_sdk, f"minSdk is not {args.min_sdk}")
    c.check("launchable-activity: name='org.edgecpm.demo.MainActivity'" in badging, "no launchable MainActivity")

    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(apk) as z:
        z.extractall(tmp)
        root = Path(tmp)
        dexes = sorted(root.glob("classes*.dex"))
        c.check(bool(dexes), "no classes.dex")
        dump = ""
        for dex in dexes:
            c.check(
                subprocess.run(["dexdump", "-c", str(dex)], capture_output=True).returncode == 0,
                f"{dex.name}: dexdump -c checksum failed",
            )
            dump += run("dexdump", str(dex))
        libs = sorted((root / "lib").glob("*/*.so"))
        abis = sorted({p.parent.name for p in libs})
        for abi in args.abi:
            c.check(abi in abis, f"no native libraries for {abi}")
        c.check(all(a in MACHINE for a in abis), f"unknown ABI folders {abis}")
        strings: dict[Path, bytes] = {}
        exports: set[str] = set()
        identifier = sdk_program_identifier()
        for so in libs:
            abi = so.parent.name
            header = run("readelf", "-h", str(so))
            c.check(
                f"Machine:                           {MACHINE.get(abi, '?')}" in header,
                f"{abi}/{so.name} is not an ELF for {abi}",
            )
            dynamic = run("readelf", "-d", "-W", str(so))
            for need in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic):
                c.check(
                    (so.parent / need).is_file() or need in NDK_SYSTEM_LIBS,
                    f"{abi}/{so.name} needs {need}, which is neither in the APK nor an NDK system library",
                )
            notes = run("readelf", "-n", "-W", str(so))
            m = re.search(r"\.note\.android\.ident.*?description data: ([0-9a-f]{2}) ([0-9a-f]{2})", notes, re.S)
            if m:
                api = int(m.group(2) + m.group(1), 16)
                c.check(api <= args.min_sdk, f"{abi}/{so.name} is built for API {api} > minSdk {args.min_sdk}")
            aligns = re.findall(r"^\s*LOAD\s.*\s(0x[0-9a-f]+)$", run("readelf", "-l", "-W", str(so)), re.M)
            print(f"info {abi}/{so.name}: LOAD p_align {min((int(a, 16) for a in aligns), default=0):#x}")
            for line in run("readelf", "--dyn-syms", "-W", str(so)).splitlines():
                parts = line.split()
                if len(parts) >= 8 and parts[6] != "UND" and parts[7].startswith("Java_"):
                    exports.add(parts[7].split("@")[0])
            strings[so] = so.read_bytes()
            if so.name == "libexecutorch.so" and identifier:
                c.check(
                    identifier in strings[so],
                    f"{abi}/libexecutorch.so lacks the SDK's program identifier {identifier.decode()}",
                )
        natives = native_methods(dump)
        c.check(bool(natives), "the dex declares no native methods (is the engine's Java API missing?)")
        for cls, name in natives:
            short = f"Java_{jni_mangle(cls)}_{jni_mangle(name)}"
            by_export = short in exports or any(e.startswith(short + "__") for e in exports)
            by_register = any(cls.encode() in data and name.encode() in data for data in strings.values())
            c.check(by_export or by_register, f"native method {cls}.{name} has no implementation in any library")
        print(f"info {len(natives)} native methods, {len(libs)} native libraries ({', '.join(abis)})")
    print(f"{c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
