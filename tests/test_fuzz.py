"""Fuzzing every parser that reads a user's file: seeded mutations of real files, through the API and the CLI.

Each case copies a real seed (a tiny checkpoint, its GGUF / ONNX export, a device TOML, an ExecuTorch-style
artifact), mutates one file (truncation at every region boundary, bit flips, huge length fields, wrong types,
NaN/inf, duplicate keys, deep nesting, non-UTF-8), and calls the public entry point. A case passes when it
either works or raises `EdgecpmError` (CLI: one line on stderr, exit 2), within a time bound, under an address
space limit (a header that claims 10^12 bytes must not allocate them), and without writing anything.

The cases run in a worker process (`python tests/test_fuzz.py --target T --cases N --seed S`) that sets
RLIMIT_AS to its size after start-up plus a fixed bound, so an unbounded allocation shows up as MemoryError.
Reproduce one failure with the target, seed and case index it prints.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADROOM = 3 << 30  # address space a worker may grow by after start-up (fixed bound; the seeds are < 2 MB)
CASE_SECONDS = 10.0  # time bound per case
RSS_FIXED_BOUND = 512 << 20  # fixed part of the memory bound: peak RSS growth <= 2 x input + this
SEED_ROOT = Path(os.environ.get("EDGECPM_TEST_CACHE", Path.home() / ".cache" / "edgecpm" / "checkpoints")) / "fuzz"

# ---------------------------------------------------------------------------------------------------------
# Seeds (real files, produced once and cached)


def _tiny_checkpoint() -> Path:
    from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

    return cached_checkpoint(SyntheticSpec())


def _seed(name: str, build) -> Path:
    target = SEED_ROOT / name
    if not target.exists():
        tmp = SEED_ROOT / f".{name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def seed_checkpoint() -> Path:
    return _seed("checkpoint", lambda d: shutil.copytree(_tiny_checkpoint(), d))


def seed_gguf() -> Path:
    def build(d: Path) -> None:
        from edgecpm.exporters.registry import run_export

        run_export(_tiny_checkpoint(), "gguf", d, quant="q8_0", progress=False)

    return _seed("gguf-q8_0", build)


def seed_onnx() -> Path:
    def build(d: Path) -> None:
        from edgecpm.exporters.registry import run_export

        run_export(_tiny_checkpoint(), "onnx", d, quant="fp32", progress=False)

    return _seed("onnx-fp32", build)


def seed_executorch_like() -> Path:
    """An ExecuTorch artifact's manifest and tokenizer around a placeholder program (the Android packager is
    run with verify=False on it: the manifest is what is fuzzed, not the .pte)."""

    def build(d: Path) -> None:
        from edgecpm.config import load_hf_config
        from edgecpm.exporters.manifest import make_manifest

        src = _tiny_checkpoint()
        d.mkdir(parents=True)
        (d / "model.pte").write_bytes(b"\0" * 64)
        for name in ("tokenizer.model", "tokenizer_config.json"):
            shutil.copyfile(src / name, d / name)
        make_manifest(
            "executorch",
            "8da4w",
            load_hf_config(src),
            ["model.pte"],
            "sha256:0",
            tokenizer_files=["tokenizer.model", "tokenizer_config.json"],
            max_seq_len=64,
            max_context_len=128,
        ).write(d)

    return _seed("executorch-like", build)


def seed_device_toml() -> Path:
    return ROOT / "device_profiles" / "snapdragon-8-gen3.toml"


# ---------------------------------------------------------------------------------------------------------
# Mutators (all driven by one random.Random, so a (seed, case) pair reproduces exactly)

HUGE_INTS = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1, 10**12, 10**18]
WEIRD_VALUES = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -1,
    0,
    10**12,
    10**30,
    -(10**30),
    1.5,
    "x",
    "",
    "\udcff",
    [],
    {},
    None,
    True,
    False,
    [1, 2],
    {"a": 1},
    "\x00" * 3,
    "é" * 50,
    2**64,
    -(2**63),
]


def mutate_bytes(data: bytes, rng: random.Random, boundaries: list[int]) -> bytes:
    """Byte-level damage; `boundaries` are the offsets where the file's regions start (header, fields,
    tensor data ...), where truncation and overwrites hurt most."""
    b = bytearray(data)
    op = rng.choice(
        ["truncate_boundary", "truncate", "bitflip", "huge_u64", "huge_u32", "insert", "delete", "zero_run", "non_utf8"]
    )
    cut_points = [x for x in boundaries if 0 <= x <= len(b)] or [0]
    if op == "truncate_boundary":
        at = rng.choice(cut_points) + rng.choice([-1, 0, 1])
        return bytes(b[: max(0, at)])
    if op == "truncate":
        return bytes(b[: rng.randrange(len(b) + 1)])
    if op == "bitflip":
        for _ in range(rng.randint(1, 8)):
            i = (
                rng.randrange(len(b))
                if rng.random() < 0.5 or not boundaries
                else min(len(b) - 1, max(0, rng.choice(cut_points) + rng.randrange(16)))
            )
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if op in ("huge_u64", "huge_u32"):
        width, fmt = (8, "<Q") if op == "huge_u64" else (4, "<I")
        value = rng.choice(HUGE_INTS) % (1 << (8 * width))
        at = rng.choice(cut_points) + rng.choice([0, 4, 8, 12, 16]) if rng.random() < 0.8 else rng.randrange(len(b))
        at = min(max(0, at), max(0, len(b) - width))
        b[at : at + width] = struct.pack(fmt, value)
        return bytes(b)
    if op == "insert":
        at = rng.randrange(len(b) + 1)
        return bytes(b[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + b[at:])
    if op == "delete":
        at = rng.randrange(len(b) + 1)
        return bytes(b[:at] + b[at + rng.randint(1, 64) :])
    if op == "zero_run":
        at = rng.randrange(len(b) + 1)
        n = rng.randint(1, 256)
        b[at : at + n] = b"\0" * len(b[at : at + n])
        return bytes(b)
    at = rng.randrange(len(b) + 1)  # non_utf8
    return bytes(b[:at] + rng.choice([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + b[at:])


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value):
    if not path:
        return value
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return obj


def _delete(obj, path):
    if not path:
        return obj
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return obj


def mutate_json(text: str, rng: random.Random) -> bytes:
    """Structure-aware damage to a JSON document (falls back to bytes for 1 case in 4)."""
    if rng.random() < 0.25:
        return mutate_bytes(text.encode("utf-8"), rng, [0, len(text) // 2, len(text)])
    obj = json.loads(text)
    op = rng.choice(["set", "set", "set", "delete", "duplicate", "deep", "wrap", "huge_string", "root"])
    paths = list(_paths(obj))[1:] or [()]
    path = rng.choice(paths)
    if op == "set":
        obj = _set(obj, path, rng.choice(WEIRD_VALUES))
    elif op == "delete" and path:
        obj = _delete(obj, path)
    elif op == "duplicate" and isinstance(obj, dict) and obj:
        key = rng.choice(list(obj))
        body = json.dumps(obj)[1:-1]
        value = json.dumps(rng.choice(WEIRD_VALUES), allow_nan=True)
        order = [f"{json.dumps(key)}: {value}", body] if rng.random() < 0.5 else [body, f"{json.dumps(key)}: {value}"]
        return ("{" + ", ".join(x for x in order if x) + "}").encode()
    elif op == "deep":
        depth = rng.choice([100, 1000, 100_000])
        nested = "[" * depth + "1" + "]" * depth
        if path:
            marker = "__DEEP__"
            return json.dumps(_set(obj, path, marker)).replace(json.dumps(marker), nested).encode()
        return nested.encode()
    elif op == "wrap" and path:
        obj = _set(obj, path, [_get_path(obj, path)])
    elif op == "huge_string" and path:
        obj = _set(obj, path, "A" * rng.choice([10**5, 10**6]))
    elif op == "root":
        obj = rng.choice([[], "config", 1, None, [obj]])
    try:
        return json.dumps(obj, allow_nan=True, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        return text.encode()


def _get_path(obj, path):
    for key in path:
        obj = obj[key]
    return obj


TOML_VALUES = [
    "nan",
    "inf",
    "-inf",
    "-1",
    "0",
    "1e400",
    "99999999999999999999999",
    '"x"',
    "[]",
    "{}",
    "true",
    '"unknown"',
    "[[[[[[[[1]]]]]]]]",
    "1979-05-27",
    "0.0",
    '"\\uD800"',
]


def mutate_toml(text: str, rng: random.Random) -> bytes:
    lines = text.splitlines()
    op = rng.choice(["value", "value", "value", "dup_line", "drop_line", "bytes", "deep", "table"])
    if op == "bytes":
        return mutate_bytes(text.encode(), rng, [0, len(text)])
    idx = [i for i, ln in enumerate(lines) if "=" in ln]
    i = rng.choice(idx) if idx else 0
    if op == "value" and idx:
        line = lines[i]
        if "value =" in line:
            head, _, tail = line.partition("value =")
            rest = tail.split(",", 1)
            lines[i] = head + "value = " + rng.choice(TOML_VALUES) + ("," + rest[1] if len(rest) > 1 else "")
        else:
            key = line.split("=", 1)[0]
            lines[i] = key + "= " + rng.choice(TOML_VALUES)
    elif op == "dup_line" and idx:
        lines.insert(i, lines[i])
    elif op == "drop_line" and idx:
        del lines[i]
    elif op == "deep":
        lines.append("deep = " + "[" * 5000 + "1" + "]" * 5000)
    elif op == "table":
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(["[memory]", "[compute]", "[[memory]]", "[a.b.c]"]))
    return ("\n".join(lines) + "\n").encode()


TEMPLATE_SNIPPETS = [
    "{{ 1/0 }}",
    "{{ 'a' * 10**10 }}",
    "{{ 'a' * 1000000000 }}",
    "{{ [0] * 10**9 }}",
    "{{ 10 ** 10 ** 10 }}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{% for %}",
    "{{",
    "{{ messages[99] }}",
    "{{ raise_exception('no') }}",
    "{{ messages.append(1) }}",
    "{{ x.y.z }}",
    "{% set a = messages.pop() %}",
    "{{ lipsum.__globals__ }}",
    "{{ range(10**9) | list }}",
    "{{ ' ' | center(10**9) }}",
    "{{ 'x' | indent(10**9) }}",
    "{{ 'ab' | wordwrap(0) }}",
    "{{ 'a' ~ 1 }}",
    "{% for m in messages %}{% for m2 in messages %}{{ m2 }}{% endfor %}{% endfor %}",
    "{{ (1,2) | join }}",
    "{{ 'x' | format(1, 2, 3) }}",
    "{{ '%s %s' % 1 }}",
    "{{ messages | tojson }}",
    "{{ [] | first }}",
    "{{ 99999999999999999999 | int * 'a' }}",
    "{{ 'a' | replace('', 'b' * 100000) }}",
    "{{ 'aaa' * 100000 * 100000 }}",
]


def mutate_template(template: str, rng: random.Random) -> str:
    op = rng.random()
    snippet = rng.choice(TEMPLATE_SNIPPETS)
    if op < 0.5:
        at = rng.randrange(len(template) + 1)
        return template[:at] + snippet + template[at:]
    if op < 0.7:
        return snippet
    if op < 0.85:
        return template[: rng.randrange(len(template) + 1)]
    chars = list(template)
    for _ in range(rng.randint(1, 5)):
        if chars:
            chars[rng.randrange(len(chars))] = rng.choice("{}%#()[]'\"|.~\\\x00")
    return "".join(chars)


# ---------------------------------------------------------------------------------------------------------
# Region boundaries of the real files (where truncation matters)


def gguf_boundaries(path: Path) -> list[int]:
    import gguf

    r = gguf.GGUFReader(str(path))
    out = {0, 4, 8, 16, 24, int(r.data_offset), len(r.data)}
    for f in r.fields.values():
        out.add(int(f.offset))
        out.add(int(f.offset) + 8)
    for t in r.tensors:
        out.add(int(t.field.offset))
        out.add(int(t.data_offset))
        out.add(int(t.data_offset) + int(t.n_bytes))
    return sorted(out)


def safetensors_boundaries(path: Path) -> list[int]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {0, 8, 8 + n, len(data)}
    for k, v in header.items():
        if k != "__metadata__":
            out.update((8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]))
    return sorted(out)


def mutate_safetensors(data: bytes, rng: random.Random, boundaries: list[int]) -> bytes:
    """Half the cases damage the JSON header semantically and rewrite the length field."""
    if rng.random() < 0.5:
        return mutate_bytes(data, rng, boundaries)
    (n,) = struct.unpack("<Q", data[:8])
    header = mutate_json(data[8 : 8 + n].decode(), rng)
    length = len(header) if rng.random() < 0.9 else rng.choice(HUGE_INTS)
    return struct.pack("<Q", length % (1 << 64)) + header + data[8 + n :]


# ---------------------------------------------------------------------------------------------------------
# Targets: (seed folder, file to mutate, mutator, API exercise)


def _exercise_checkpoint(d: Path) -> None:
    from edgecpm.weights import open_checkpoint

    config, source = open_checkpoint(d)
    for name in source.names():
        source.get(name)


def _exercise_gguf(d: Path) -> None:
    from edgecpm.gguf_vocab import tokenizer_from_gguf
    from edgecpm.weights import open_checkpoint

    config, source = open_checkpoint(d / "model.gguf")
    tok = tokenizer_from_gguf(source.reader, config.eos_token_ids)
    tok.decode(tok.encode("Hello world <|im_end|>"))
    for name in source.names():
        source.get_numpy(name)


def _exercise_tokenizer(d: Path) -> None:
    from edgecpm.tokenizer import load_tokenizer_dir

    tok = load_tokenizer_dir(d, bos_id=1, eos_ids=(2,))
    ids = tok.encode("Hello world <|im_end|> é")
    tok.decode(ids)
    tok.apply_chat_template([{"role": "user", "content": "Hi"}])


def _exercise_device(d: Path) -> None:
    from edgecpm.device_profiles.profile import read_profile_file
    from edgecpm.planning.planner import plan

    profile = read_profile_file(d / "snapdragon-8-gen3.toml")
    plan("minicpm4-0.5b", profile, context=4096)


def _exercise_artifact(d: Path) -> None:
    from edgecpm.exporters.manifest import read_manifest
    from edgecpm.planning.planner import plan

    m = read_manifest(d)
    m.model_config  # noqa: B018 - parsing is the point
    plan(str(d), "x86-64-laptop", context=256)


def _exercise_artifact_load(d: Path) -> None:
    import edgecpm

    _exercise_artifact(d)
    model = edgecpm.load(d)
    model.logits(model.tokenizer.encode("Hi"))


def _exercise_android(d: Path) -> None:
    from edgecpm.exporters.executorch_android import package_android

    package_android(d, d.parent / "bundle", verify=False)


def _mut_json(data: bytes, rng, _b) -> bytes:
    return mutate_json(data.decode("utf-8"), rng)


def _mut_toml(data: bytes, rng, _b) -> bytes:
    return mutate_toml(data.decode("utf-8"), rng)


def _mut_chat_template(data: bytes, rng, _b) -> bytes:
    cfg = json.loads(data)
    cfg["chat_template"] = mutate_template(cfg.get("chat_template") or "", rng)
    return json.dumps(cfg).encode()


def _mut_bytes(data: bytes, rng, boundaries) -> bytes:
    return mutate_bytes(data, rng, boundaries)


def _device_seed() -> Path:
    def build(d: Path) -> None:
        d.mkdir(parents=True)
        shutil.copyfile(seed_device_toml(), d / seed_device_toml().name)

    return _seed("device", build)


TARGETS = {
    # name: (seed folder, file inside it, mutator, boundaries(path) or None, exercise)
    "gguf": (seed_gguf, "model.gguf", _mut_bytes, gguf_boundaries, _exercise_gguf),
    "safetensors": (
        seed_checkpoint,
        "model-00001-of-00002.safetensors",
        mutate_safetensors,
        safetensors_boundaries,
        _exercise_checkpoint,
    ),
    "shards_index": (seed_checkpoint, "model.safetensors.index.json", _mut_json, None, _exercise_checkpoint),
    "config_json": (seed_checkpoint, "config.json", _mut_json, None, _exercise_checkpoint),
    "tokenizer_model": (seed_checkpoint, "tokenizer.model", _mut_bytes, None, _exercise_tokenizer),
    "tokenizer_config": (seed_checkpoint, "tokenizer_config.json", _mut_json, None, _exercise_tokenizer),
    "chat_template": (seed_checkpoint, "tokenizer_config.json", _mut_chat_template, None, _exercise_tokenizer),
    "tokenizer_json": (seed_onnx, "tokenizer.json", _mut_json, None, _exercise_tokenizer),
    "device_toml": (_device_seed, "snapdragon-8-gen3.toml", _mut_toml, None, _exercise_device),
    "manifest_gguf": (seed_gguf, "edgecpm.json", _mut_json, None, _exercise_artifact_load),
    "manifest_onnx": (seed_onnx, "edgecpm.json", _mut_json, None, _exercise_artifact),
    "android_manifest": (seed_executorch_like, "edgecpm.json", _mut_json, None, _exercise_android),
}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() or p.is_dir()
    }


def run_target(name: str, cases: int, seed: int, start: int = 0) -> dict:
    """Run `cases` mutations of one target in this process; return counts and failures."""
    from edgecpm.errors import EdgecpmError

    seed_fn, fname, mutator, boundaries_fn, exercise = TARGETS[name]
    seed_dir = seed_fn()
    original = (seed_dir / fname).read_bytes()
    boundaries = boundaries_fn(seed_dir / fname) if boundaries_fn else [0, len(original)]
    counts = {"cases": 0, "ok": 0, "edgecpm_error": 0}
    failures: list[dict] = []
    slowest = 0.0
    input_bytes = sum(p.stat().st_size for p in seed_dir.rglob("*") if p.is_file())
    largest_case = len(original)
    _reset_peak_rss()  # building the seeds (exports) must not count as the cases' peak
    rss_start = _rss_bytes()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        base = Path(tmp) / "case"
        shutil.copytree(seed_dir, base)
        for i in range(start, start + cases):
            rng = random.Random(f"{name}:{seed}:{i}")
            data = mutator(original, rng, boundaries)
            largest_case = max(largest_case, len(data))
            (base / fname).write_bytes(data)
            before = _snapshot(Path(tmp))
            t0 = time.perf_counter()
            outcome = "ok"
            try:
                exercise(base)
            except EdgecpmError as exc:
                outcome = "edgecpm_error"
                if "\n" in str(exc):
                    failures.append({"case": i, "kind": "multi-line message", "error": str(exc)[:300]})
            except BaseException as exc:  # noqa: BLE001 - everything else is a finding
                if isinstance(exc, KeyboardInterrupt):
                    raise
                outcome = "other"
                tb = traceback.extract_tb(exc.__traceback__)
                where = next(
                    (
                        f"{Path(f.filename).name}:{f.lineno}"
                        for f in reversed(tb)
                        if "edgecpm" in f.filename or "/main/" in f.filename
                    ),
                    "?",
                )
                failures.append({"case": i, "kind": type(exc).__name__, "error": str(exc)[:300], "where": where})
            elapsed = time.perf_counter() - t0
            slowest = max(slowest, elapsed)
            if elapsed > CASE_SECONDS:
                failures.append({"case": i, "kind": "slow", "seconds": round(elapsed, 1)})
            counts["cases"] += 1
            if outcome != "other":
                counts[outcome] += 1
            bundle = Path(tmp) / "bundle"
            after = _snapshot(Path(tmp))
            written = sorted(
                set(after) - set(before) - {"bundle", *(k for k in after if k.startswith("bundle/"))}
                if outcome == "ok"
                else set(after) - set(before)
            )
            if outcome == "ok" and name == "android_manifest":
                shutil.rmtree(bundle, ignore_errors=True)  # a bundle from a manifest that still parses is fine
            if written:
                failures.append({"case": i, "kind": "wrote files", "files": written[:5]})
                for w in written:
                    p = Path(tmp) / w
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    # memory bound: the peak RSS may grow over the warmed-up start by 2x the input (seed folder with the largest
    # mutated file in place of the original) plus a fixed bound
    peak = _peak_rss_bytes()
    growth = max(0, peak - rss_start)
    largest_input = input_bytes - len(original) + largest_case
    bound = 2 * largest_input + RSS_FIXED_BOUND
    if growth > bound:
        failures.append({"case": "all", "kind": "memory", "rss_growth_mib": growth >> 20, "bound_mib": bound >> 20})
    return {
        "target": name,
        **counts,
        "failures": failures,
        "seconds": round(time.perf_counter() - started, 1),
        "slowest_s": round(slowest, 2),
        "input_mib": round(largest_input / 2**20, 2),
        "peak_rss_mib": peak >> 20,
        "rss_growth_mib": growth >> 20,
        "rss_bound_mib": bound >> 20,
    }


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))


def _peak_rss_bytes() -> int:
    """Peak RSS since the last `_reset_peak_rss` (VmHWM); ru_maxrss where /proc has no VmHWM."""
    with open("/proc/self/status") as f:
        hwm = [int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:")]
    return hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: '5' > /proc/self/clear_refs) so a target's bound starts here.

    Where that is not allowed the peak keeps what seed building and earlier targets used, so a bound can only be
    exceeded spuriously, never missed; the test then still fails loudly rather than passing.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _limit_address_space() -> int:
    with open("/proc/self/status") as f:
        vm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
    limit = vm + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    return limit


def worker_main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--target", action="append", required=True)
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0)
    args = ap.parse_args(argv)
    targets = list(TARGETS) if args.target == ["all"] else args.target
    import edgecpm.exporters.executorch_android  # noqa: F401
    import edgecpm.gguf_vocab  # noqa: F401
    import edgecpm.planning.planner  # noqa: F401 - imports and seeds before the limit
    import edgecpm.weights  # noqa: F401

    for t in targets:
        TARGETS[t][0]()
    for t in targets:  # warm each exercise once on the intact seed (lazy imports happen here)
        TARGETS[t][4](TARGETS[t][0]())
    limit = _limit_address_space()
    for t in targets:
        res = run_target(t, args.cases, args.seed, args.start)
        res["address_space_limit_gib"] = round(limit / 2**30, 2)
        print(json.dumps(res), flush=True)


def run_worker(targets: list[str], cases: int, seed: int = 0, timeout: float = 600) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cases", str(cases), "--seed", str(seed)]
    for t in targets:
        cmd += ["--target", t]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    results = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert r.returncode == 0 and len(results) == len(targets), f"worker died (rc {r.returncode}): {r.stderr[-3000:]}"
    return results


# ---------------------------------------------------------------------------------------------------------
# Tests


def _report(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(
            f"{r['target']}: {r['cases']} cases, {r['edgecpm_error']} EdgecpmError, {r['ok']} ok, "
            f"{len(r['failures'])} failures, {r['seconds']} s (slowest case {r['slowest_s']} s, bound "
            f"{CASE_SECONDS:g} s), peak RSS {r['peak_rss_mib']} MiB (growth {r['rss_growth_mib']} MiB, bound "
            f"{r['rss_bound_mib']} MiB = 2 x {r['input_mib']} MiB input + "
            f"{RSS_FIXED_BOUND >> 20} MiB), address space limit {r.get('address_space_limit_gib')} GiB"
        )
        for f in r["failures"][:5]:
            lines.append(f"    {f}")
    return "\n".join(lines)


DEFAULT_CASES = {
    "gguf": 60,
    "safetensors": 60,
    "shards_index": 40,
    "config_json": 60,
    "tokenizer_model": 40,
    "tokenizer_config": 40,
    "chat_template": 60,
    "tokenizer_json": 30,
    "device_toml": 60,
    "manifest_gguf": 15,
    "manifest_onnx": 40,
    "android_manifest": 40,
}


def test_fuzz_parsers_api_default():
    """Seeded, reproducible: a few hundred mutations over every parser, in one bounded worker."""
    failures = []
    results = []
    groups: dict[int, list[str]] = {}
    for t, n in DEFAULT_CASES.items():
        groups.setdefault(n, []).append(t)
    for n, targets in groups.items():
        results += run_worker(targets, n, seed=1, timeout=300)
    for r in results:
        failures += [(r["target"], f) for f in r["failures"]]
    assert not failures, _report(results)


CLI_CASES = [
    ("gguf", "inspect"),
    ("safetensors", "inspect"),
    ("config_json", "generate"),
    ("shards_index", "inspect"),
    ("manifest_gguf", "inspect"),
    ("device_toml", "plan"),
    ("tokenizer_model", "generate"),
]


@pytest.mark.parametrize("target,command", CLI_CASES)
def test_fuzz_cli_one_line_exit_2(target, command, tmp_path):
    """Through the CLI: every damaged input ends in exit 0 or 2 with one line on stderr, no traceback."""
    seed_fn, fname, mutator, boundaries_fn, _ = TARGETS[target]
    seed_dir = seed_fn()
    case = tmp_path / "case"
    shutil.copytree(seed_dir, case)
    original = (seed_dir / fname).read_bytes()
    boundaries = boundaries_fn(seed_dir / fname) if boundaries_fn else [0, len(original)]
    for i in range(3):
        rng = random.Random(f"cli:{target}:{i}")
        (case / fname).write_bytes(mutator(original, rng, boundaries))
        if command == "plan":
            args = ["plan", "minicpm4-0.5b", "--device", str(case / fname)]
        elif command == "generate":
            args = ["generate", str(case), "--prompt", "Hi", "--max-new-tokens", "2"]
        else:
            args = ["inspect", str(case / fname if fname.endswith(".gguf") else case)]
        before = _snapshot(tmp_path)
        r = subprocess.run(
            [sys.executable, "-m", "edgecpm", *args], capture_output=True, text=True, timeout=120, env=dict(os.environ)
        )
        assert r.returncode in (0, 1, 2), f"case {i}: rc {r.returncode}: {r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, r.stderr[-2000:]
        if r.returncode == 2:
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("edgecpm: error: "), r.stderr[-2000:]
        assert _snapshot(tmp_path) == before, "the command wrote files"


def test_huge_length_fields_do_not_allocate(tmp_path):
    """A safetensors header length and a GGUF string/array length that claim 10^12 bytes or items: one
    EdgecpmError, fast, and no allocation of that size (the worker runs under RLIMIT_AS = start + 3 GiB)."""
    code = r"""
import json, resource, struct, sys, time
from pathlib import Path
from edgecpm.errors import EdgecpmError
from edgecpm.weights import GGUFSource, SafetensorsSource
d = Path(sys.argv[1])
with open("/proc/self/status") as f:
    vm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
res = {}
st = d / "model.safetensors"
st.write_bytes(struct.pack("<Q", 10**12) + b"{}")
gg = d / "model.gguf"
# GGUF v3: 0 tensors, 1 kv: key "a", type ARRAY of UINT8 with 10^12 items, then nothing
gg.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"a" + struct.pack("<IIQ", 9, 0, 10**12))
gs = d / "str.gguf"
gs.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 10**12) + b"a")
for name, fn in (("safetensors", lambda: SafetensorsSource([st])), ("gguf_array", lambda: GGUFSource(gg)),
                 ("gguf_string", lambda: GGUFSource(gs))):
    t0 = time.perf_counter()
    try:
        fn(); res[name] = "no error"
    except EdgecpmError as e:
        res[name] = "EdgecpmError"
    except BaseException as e:
        res[name] = type(e).__name__ + ": " + str(e)[:200]
    res[name + "_s"] = time.perf_counter() - t0
print(json.dumps(res))
"""
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for name in ("safetensors", "gguf_array", "gguf_string"):
        assert res[name] == "EdgecpmError", res
        assert res[name + "_s"] < 5, res


def _hypothesis_config_strategy():
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8)
    )
    return st.recursive(
        scalars,
        lambda ch: st.one_of(st.lists(ch, max_size=4), st.dictionaries(st.text(max_size=6), ch, max_size=4)),
        max_leaves=12,
    )


def test_config_fields_property_hypothesis():
    """hypothesis: any JSON value in any published config.json field -> a ModelConfig or ConfigError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from edgecpm.config import config_from_hf_dict
    from edgecpm.errors import EdgecpmError

    base = json.loads((seed_checkpoint() / "config.json").read_text())
    keys = sorted(base) + ["head_dim", "shared_layers", "mixer_types", "sparse_config", "rope_theta"]

    @settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(keys), _hypothesis_config_strategy(), st.booleans())
    def check(key, value, sala):
        d = dict(base)
        if sala:
            d.update(architectures=["MiniCPMSALAForCausalLM"], mixer_types=["minicpm4", "lightning-attn"])
        d[key] = value
        try:
            cfg = config_from_hf_dict(d)
        except EdgecpmError:
            return
        for v in (cfg.scale_emb, cfg.scale_depth, cfg.rms_norm_eps, cfg.rope_theta, float(cfg.dim_model_base)):
            assert math.isfinite(v) and v > 0, (key, value)
        assert 0 < cfg.num_layers <= 100_000

    check()


SLOW_CASES = int(os.environ.get("EDGECPM_FUZZ_CASES", "10000"))


@pytest.mark.slow
def test_fuzz_parsers_api_10000_each():
    """>= 10,000 cases per parser (EDGECPM_FUZZ_CASES overrides), each parser in its own bounded worker."""
    results = []
    for t in TARGETS:
        results += run_worker([t], SLOW_CASES, seed=2, timeout=6 * 3600)
        print(_report(results[-1:]), flush=True)  # one line per parser as it finishes (pytest -s shows them)
    print(_report(results))
    assert not [f for r in results for f in r["failures"]], _report(results)


if __name__ == "__main__":
    worker_main(sys.argv[1:])
