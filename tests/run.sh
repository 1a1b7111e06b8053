#!/usr/bin/env bash
# The test command: installs everything the tests need on a fresh Debian machine
# (compilers, musl, the aarch64 cross toolchain and qemu, podman and runc, strace,
# the real programs whose jobs the tests run from images: R, tesseract, pandoc, emacs,
# neovim, LibreOffice, zsh,
# skopeo, umoci and a registry),
# installs minify with its test extras into .venv (Debian's Python refuses pip outside
# a virtual environment), then runs lint, types and the test suite, and the ELF tests
# once more with the oldest LIEF that pyproject.toml accepts.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k rootfs`.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    gcc g++ libc6-dev make musl-tools
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
    podman runc uidmap
    strace util-linux coreutils dash
    pax-utils libtree skopeo umoci docker-registry graphviz
    xz-utils openssl git sqlite3 curl gdb file zsh
    tesseract-ocr tesseract-ocr-eng pandoc emacs-nox neovim r-base-core libreoffice-writer-nogui
    python3 python3-venv tzdata ca-certificates libzstd1 libc-bin libcap2-bin systemd ruby less postgresql
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
    # The packages' services (a registry on :5000, postgresql) are not started: the
    # tests start what they need on 127.0.0.1 themselves, and stop it.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        trap '$sudo rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$policy" ] || $sudo rm -f "$policy"
fi

# The aarch64 C library's own ldconfig (a static program, run under qemu) makes the
# cache of the aarch64 sysroot a test minifies: libc-bin:arm64 downloaded with apt into
# a private state folder, so this machine's dpkg architectures stay as they are.
arm=.cache/arm64
if [ ! -x "$arm/sbin/ldconfig" ]; then
    mkdir -p "$arm/lists/partial" "$arm/cache/archives/partial" "$arm/debs"
    apt_arm=(-qq -o APT::Architectures::=arm64 -o APT::Architecture=arm64 -o "Dir::State::Lists=$PWD/$arm/lists"
        -o "Dir::Cache=$PWD/$arm/cache" -o Dir::State::Status=/dev/null)
    apt-get "${apt_arm[@]}" update
    (cd "$arm/debs" && apt-get "${apt_arm[@]}" download libc-bin:arm64 2>/dev/null)
    dpkg-deb -x "$arm"/debs/libc-bin_*_arm64.deb "$arm"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
py=$PWD/.venv/bin/python
export PATH="$PWD/.venv/bin:$PATH"
"$py" -m pip install -q --disable-pip-version-check -e '.[test]'
"$py" -m ruff check minify tests
"$py" -m ruff format --check minify tests
"$py" -m mypy
"$py" -m pytest -q "$@"

# The declared floor of LIEF (pyproject.toml) is tested too: the ELF reading tests,
# judged by the real loader, with exactly that version.
floor=$(sed -n 's/.*"lief>=\([0-9.]*\)".*/\1/p' pyproject.toml)
[ -x .venv-lief-floor/bin/python ] || python3 -m venv .venv-lief-floor
.venv-lief-floor/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' "lief==$floor"
echo "LIEF $floor (the declared floor):"
PATH="$PWD/.venv-lief-floor/bin:$PATH" .venv-lief-floor/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_loader_rules.py tests/test_bad_input.py tests/test_elf.py
