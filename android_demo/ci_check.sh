#!/usr/bin/env bash
# Offline checks of the Android demo: no Gradle, no Google Maven; Debian, npm and PyPI packages only.
#
#   bash android_demo/ci_check.sh            # installs what is missing (apt-get / npm as root), then checks
#   bash android_demo/ci_check.sh --no-install
#
# Steps: JVM unit tests of :core; the Python <-> :core contract tests (tests/test_android_contract.py); the app
# sources compiled against android.jar (API 23, Debian bullseye) and ExecuTorch's Java API (npm
# react-native-executorch 0.7.3); an APK assembled with dx + aapt2 carrying libexecutorch.so, libfbjni.so and
# libc++_shared.so (npm react-native 0.70.15) for arm64-v8a and x86_64, zipaligned, signed with a generated
# debug key and checked statically (offline/check_apk.py). A step whose tool cannot be had is skipped with its
# reason. The last line is "android: N passed, N failed, N skipped"; exit status 1 when anything failed.
# Environment: PYTHON (default: python3), EDGECPM_ANDROID_CACHE (default: ~/.cache/edgecpm/android).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PYTHON:-python3}
CACHE=${EDGECPM_ANDROID_CACHE:-$HOME/.cache/edgecpm/android}
OUT=$HERE/build/offline
INSTALL=1
[ "${1:-}" = "--no-install" ] && INSTALL=0
MIN_SDK=26
RNE=react-native-executorch@0.7.3
RNE_SHA1=3cd3aad65049318cd54994a631407c1340cb8d32
RN=react-native@0.70.15
RN_SHA1=65f2c5c399ff8e2a892cef9b094cc0888653a874
JAVA_SHARE=/usr/share/java
JSON_JAR=$JAVA_SHARE/com.android.json.jar
JUNIT_JAR=$JAVA_SHARE/junit-platform-console-standalone.jar
JUNIT_API=$JAVA_SHARE/junit-jupiter-api.jar
FWRES=/usr/share/android-framework-res/framework-res.apk
BULLSEYE=$CACHE/bullseye/root/usr/share/java
DX_JAR=$BULLSEYE/com.android.dx-10.0.0.jar
ANDROID_JAR=$BULLSEYE/com.android.android-23.jar
ENGINE=$CACHE/engine

passed=0 failed=0 skipped=0
T0=$(date +%s)
mkdir -p "$OUT" "$CACHE"

ok() { passed=$((passed + ${2:-1})); echo "ok    $1"; }
bad() { failed=$((failed + 1)); echo "FAIL  $1"; [ -n "${2:-}" ] && [ -f "$2" ] && tail -n 25 "$2" | sed 's/^/      /'; }
skip() { skipped=$((skipped + 1)); echo "skip  $1: $2"; }
have() { command -v "$1" > /dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------- installs
install_debian() {
    local want=()
    have javac || want+=(default-jdk-headless)
    [ -f "$JUNIT_JAR" ] || want+=(junit5)
    [ -f "$JSON_JAR" ] || want+=(libandroid-json-java)
    have aapt2 || want+=(aapt)
    have zipalign || want+=(zipalign)
    have apksigner || want+=(apksigner)
    have dexdump || want+=(dexdump)
    have readelf || want+=(binutils)
    [ -f "$FWRES" ] || want+=(android-framework-res)
    [ ${#want[@]} -eq 0 ] && return 0
    if [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ] && have apt-get; then
        echo "installing from Debian: ${want[*]}"
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}"; } \
            > "$OUT/apt.log" 2>&1 || echo "      apt-get failed (see $OUT/apt.log)"
    fi
}

# dx and android.jar exist only in Debian bullseye: fetched with a private apt configuration (system sources
# untouched) and unpacked into the cache.
install_bullseye() {
    [ -f "$DX_JAR" ] && [ -f "$ANDROID_JAR" ] && return 0
    [ "$INSTALL" = 1 ] && have apt-get && have dpkg-deb || return 0
    local d=$CACHE/bullseye mirror
    mirror=$(grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null |
             grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ')
    [ -n "$mirror" ] || return 0
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/debs" "$d/root"
    echo "deb ${mirror%/} bullseye main" > "$d/sources.list"
    local o=(-o "Dir::Etc::SourceList=$d/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache")
    {
        apt-get "${o[@]}" update -q &&
        (cd "$d/debs" && apt-get "${o[@]}" download dalvik-exchange libandroid-23-java) &&
        for deb in "$d"/debs/*.deb; do dpkg-deb -x "$deb" "$d/root"; done
    } > "$OUT/bullseye.log" 2>&1 || echo "      bullseye download failed (see $OUT/bullseye.log)"
}

# ExecuTorch's Java API + libexecutorch.so, and the libfbjni.so / libc++_shared.so it needs, from npm
# tarballs pinned by sha1 (npm pack: no install scripts, no dependencies).
install_engine() {
    [ -f "$ENGINE/classes.jar" ] && [ -f "$ENGINE/lib/arm64-v8a/libfbjni.so" ] && return 0
    [ "$INSTALL" = 1 ] && have npm || return 0
    local t=$CACHE/npm
    mkdir -p "$t" "$ENGINE/lib/arm64-v8a" "$ENGINE/lib/x86_64"
    {
        set -e
        cd "$t"
        [ -f react-native-executorch-0.7.3.tgz ] || npm pack -q "$RNE"
        [ -f react-native-0.70.15.tgz ] || npm pack -q "$RN"
        echo "$RNE_SHA1  react-native-executorch-0.7.3.tgz" | sha1sum -c -
        echo "$RN_SHA1  react-native-0.70.15.tgz" | sha1sum -c -
        rm -rf x && mkdir x
        tar xzf react-native-executorch-0.7.3.tgz -C x package/android/libs/classes.jar \
            package/third-party/android/libs/executorch
        local aar=package/android/com/facebook/react/react-native/0.70.15/react-native-0.70.15-release.aar
        tar xzf react-native-0.70.15.tgz -C x "$aar"
        (cd x && unzip -q -o "$aar" 'jni/arm64-v8a/libfbjni.so' 'jni/arm64-v8a/libc++_shared.so' \
            'jni/x86_64/libfbjni.so' 'jni/x86_64/libc++_shared.so')
        for abi in arm64-v8a x86_64; do
            cp "x/package/third-party/android/libs/executorch/$abi/libexecutorch.so" "$ENGINE/lib/$abi/"
            cp "x/jni/$abi/libfbjni.so" "x/jni/$abi/libc++_shared.so" "$ENGINE/lib/$abi/"
        done
        cp x/package/android/libs/classes.jar "$ENGINE/classes.jar"
        rm -rf x
    } > "$OUT/npm.log" 2>&1 || { echo "      npm fetch failed (see $OUT/npm.log)"; rm -f "$ENGINE/classes.jar"; }
}

install_debian
install_bullseye
install_engine

# ---------------------------------------------------------------------------------------------- :core
CORE=$OUT/core
core_tests() {
    if ! have javac || [ ! -f "$JSON_JAR" ] || [ ! -f "$JUNIT_JAR" ]; then
        skip ":core unit tests" "needs javac, junit5 and libandroid-json-java (apt-get)"
        return
    fi
    rm -rf "$CORE" && mkdir -p "$CORE/main" "$CORE/test"
    local log=$OUT/core.log
    if javac --release 8 -Xlint:-options -encoding UTF-8 -cp "$JSON_JAR" -d "$CORE/main" \
            $(find "$HERE/core/src/main/java" -name '*.java') > "$log" 2>&1 &&
       javac --release 8 -Xlint:-options -encoding UTF-8 -cp "$JSON_JAR:$JUNIT_API:$CORE/main" -d "$CORE/test" \
            $(find "$HERE/core/src/test/java" -name '*.java') >> "$log" 2>&1 &&
       java -jar "$JUNIT_JAR" -cp "$CORE/main:$CORE/test:$JSON_JAR" --select-package org.edgecpm.demo.core \
            --disable-banner --details=summary --disable-ansi-colors >> "$log" 2>&1; then
        local n
        n=$(grep -oE '\[ +[0-9]+ tests successful' "$log" | grep -oE '[0-9]+')
        ok ":core unit tests on the JVM (${n:-?} JUnit tests)" "${n:-1}"
    else
        bad ":core unit tests" "$log"
    fi
}

contract_tests() {
    if ! have javac || [ ! -f "$JSON_JAR" ]; then
        skip "contract tests" "needs javac and libandroid-json-java"
        return
    fi
    if ! "$PY" -c "import edgecpm, pytest, executorch.runtime" > /dev/null 2>&1; then
        skip "contract tests" "$PY cannot import edgecpm, pytest and executorch"
        return
    fi
    local log=$OUT/contract.log
    if (cd "$ROOT" && "$PY" -m pytest -q -p no:cacheprovider tests/test_android_contract.py) > "$log" 2>&1 &&
       ! grep -qE '[0-9]+ skipped' "$log"; then
        ok "contract tests: Python bundle <-> :core (tests/test_android_contract.py)"
    else
        bad "contract tests (tests/test_android_contract.py)" "$log"
    fi
}

version_pin() {
    local pinned sdk
    pinned=$(sed -n 's/^executorch *= *"\(.*\)"/\1/p' "$HERE/gradle/libs.versions.toml")
    if ! sdk=$("$PY" -c "from executorch.version import __version__ as v; print(v.split('+')[0])" 2>/dev/null); then
        skip "executorch version pin" "$PY has no executorch"
        return
    fi
    if [ "$pinned" = "$sdk" ]; then
        ok "app's org.pytorch:executorch-android $pinned = the SDK's executorch $sdk"
    else
        bad "gradle/libs.versions.toml pins executorch-android $pinned but the SDK exports with executorch $sdk"
    fi
}

# ---------------------------------------------------------------------------------------------- :app + APK
APP=$OUT/app
compile_app() {
    if [ ! -f "$ANDROID_JAR" ]; then skip "compile :app" "no android.jar (Debian bullseye libandroid-23-java)"; return 1; fi
    if [ ! -f "$ENGINE/classes.jar" ]; then skip "compile :app" "no ExecuTorch Java API (npm $RNE)"; return 1; fi
    if [ ! -d "$CORE/main" ]; then skip "compile :app" ":core was not compiled"; return 1; fi
    rm -rf "$APP" && mkdir -p "$APP/compat" "$APP/classes" "$APP/gen" "$APP/res"
    local log=$OUT/app.log j8=(-source 8 -target 8 -Xlint:-options -encoding UTF-8 -bootclasspath "$ANDROID_JAR")
    # :core against android.jar too: it must only use what Android has (org.json included)
    javac "${j8[@]}" -d "$APP/core" $(find "$HERE/core/src/main/java" -name '*.java') > "$log" 2>&1 &&
    javac "${j8[@]}" -d "$APP/compat" $(find "$HERE/offline/compat" -name '*.java') >> "$log" 2>&1 &&
    sed 's|<manifest |<manifest package="org.edgecpm.demo" |' "$HERE/app/src/main/AndroidManifest.xml" \
        > "$APP/AndroidManifest.xml" &&
    aapt2 compile --dir "$HERE/app/src/main/res" -o "$APP/res.zip" >> "$log" 2>&1 &&
    aapt2 link -I "$FWRES" --manifest "$APP/AndroidManifest.xml" --java "$APP/gen" -o "$APP/base.apk" \
        --min-sdk-version $MIN_SDK --target-sdk-version 29 --version-code 1 --version-name 0.1 \
        "$APP/res.zip" >> "$log" 2>&1 &&
    javac "${j8[@]}" -cp "$APP/core:$ENGINE/classes.jar:$APP/compat" -d "$APP/classes" \
        $(find "$HERE/app/src/main/java" "$APP/gen" -name '*.java') >> "$log" 2>&1
    if [ $? -eq 0 ]; then ok "compile :app + :core against android.jar (API 23) and ExecuTorch's LlmModule API"
    else bad "compile :app" "$log"; return 1; fi
}

build_apk() {
    local log=$OUT/apk.log
    if [ ! -f "$DX_JAR" ]; then skip "assemble APK" "no dx (Debian bullseye dalvik-exchange)"; return 1; fi
    for t in zipalign apksigner keytool; do
        have $t || { skip "assemble APK" "no $t"; return 1; }
    done
    rm -f "$APP"/*.dex "$APP"/app*.apk
    java -jar "$DX_JAR" --dex --min-sdk-version=$MIN_SDK --output="$APP/classes.dex" \
        "$APP/classes" "$APP/core" "$APP/compat" "$ENGINE/classes.jar" > "$log" 2>&1 &&
    cp "$APP/base.apk" "$APP/app.unaligned.apk" &&
    "$PY" - "$APP/app.unaligned.apk" "$APP/classes.dex" "$ENGINE/lib" >> "$log" 2>&1 <<'EOF' &&
import sys, zipfile
from pathlib import Path
apk, dex, libs = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
with zipfile.ZipFile(apk, "a") as z:
    z.write(dex, "classes.dex", compress_type=zipfile.ZIP_DEFLATED)
    for so in sorted(libs.glob("*/*.so")):
        z.write(so, f"lib/{so.parent.name}/{so.name}", compress_type=zipfile.ZIP_STORED)
EOF
    zipalign -f -p 4 "$APP/app.unaligned.apk" "$APP/app.aligned.apk" >> "$log" 2>&1 &&
    { [ -f "$CACHE/debug.keystore" ] || keytool -genkeypair -keystore "$CACHE/debug.keystore" -storepass android \
        -keypass android -alias androiddebugkey -keyalg RSA -keysize 2048 -validity 10000 \
        -dname "CN=Android Debug,O=Android,C=US" >> "$log" 2>&1; } &&
    apksigner sign --ks "$CACHE/debug.keystore" --ks-pass pass:android --key-pass pass:android \
        --out "$APP/edgecpm-demo-debug.apk" "$APP/app.aligned.apk" >> "$log" 2>&1 &&
    apksigner verify "$APP/edgecpm-demo-debug.apk" >> "$log" 2>&1 &&
    zipalign -c -p 4 "$APP/edgecpm-demo-debug.apk" >> "$log" 2>&1
    if [ $? -eq 0 ]; then
        ok "APK assembled, zipaligned, signed and verified: $(du -h "$APP/edgecpm-demo-debug.apk" | cut -f1) $APP/edgecpm-demo-debug.apk"
    else bad "assemble APK" "$log"; return 1; fi
}

check_apk() {
    local log=$OUT/check_apk.log
    if ! have readelf || ! have dexdump; then skip "static APK check" "needs readelf and dexdump"; return; fi
    if "$PY" "$HERE/offline/check_apk.py" "$APP/edgecpm-demo-debug.apk" --min-sdk $MIN_SDK \
        --abi arm64-v8a --abi x86_64 > "$log" 2>&1; then
        ok "static APK check: $(tail -n 1 "$log")"
    else
        bad "static APK check" "$log"
    fi
}

core_tests
contract_tests
version_pin
if compile_app && build_apk; then check_apk; else skip "static APK check" "no APK was built"; fi

echo "android checks took $(( $(date +%s) - T0 )) s"
echo "android: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
