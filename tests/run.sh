#!/usr/bin/env bash
# The test command: installs everything the tests need on a fresh Debian machine
# (compilers, musl, the aarch64 cross toolchain and qemu, podman and runc, strace),
# installs minify with its test extras, then runs lint, types and the test suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k rootfs`.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    gcc g++ libc6-dev make musl-tools
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
    podman runc uidmap
    strace util-linux coreutils dash
    pax-utils libtree
    xz-utils openssl git sqlite3 curl gdb
    python3 tzdata ca-certificates libzstd1 libc-bin
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
python3 -m ruff check minify tests
python3 -m ruff format --check minify tests
python3 -m mypy
python3 -m pytest -q "$@"
