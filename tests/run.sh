#!/usr/bin/env bash
# The test command: installs everything the tests need on a fresh Debian machine
# (compilers, musl, the cross toolchains of the architectures Debian ships and qemu,
# podman and runc, strace,
# mmdebstrap (a real Debian image of apps, built once per session),
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
    gcc-arm-linux-gnueabihf libc6-dev-armhf-cross gcc-arm-linux-gnueabi libc6-dev-armel-cross
    gcc-i686-linux-gnu libc6-dev-i386-cross gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
    gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross gcc-s390x-linux-gnu libc6-dev-s390x-cross
    gcc-mips64el-linux-gnuabi64 libc6-dev-mips64el-cross gcc-mipsel-linux-gnu libc6-dev-mipsel-cross
    podman runc uidmap
    strace util-linux coreutils dash
    pax-utils libtree skopeo umoci docker-registry graphviz
    xz-utils zstd openssl git sqlite3 curl gdb file zsh
    tesseract-ocr tesseract-ocr-eng pandoc emacs-nox neovim r-base-core libreoffice-writer-nogui
    python3 python3-venv tzdata ca-certificates libzstd1 libc-bin libcap2-bin systemd ruby less postgresql
    openjdk-17-jre-headless mmdebstrap
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

# Each target's own ldconfig (a static program, run under qemu) writes the cache of the
# sysroots the tests minify (tests/sysroots.py): libc-bin:ARCH downloaded with apt into a
# private state folder, so this machine's dpkg architectures stay as they are. An
# architecture the archive has no libc-bin for (riscv64 before Debian 13) gets none, and
# its sysroot is judged without a cache.
bins=.cache/libc-bin
targets=(arm64 armhf armel i386 ppc64el s390x mips64el mipsel riscv64)
wanted=()
for a in "${targets[@]}"; do [ -e "$bins/$a/.done" ] || wanted+=("$a"); done
if [ "${#wanted[@]}" -gt 0 ]; then
    mkdir -p "$bins/lists/partial" "$bins/cache/archives/partial" "$bins/debs"
    apt_x=(-qq -o Dir::State::Status=/dev/null -o "Dir::State::Lists=$PWD/$bins/lists" -o "Dir::Cache=$PWD/$bins/cache")
    for a in "${wanted[@]}"; do apt_x+=(-o "APT::Architectures::=$a"); done
    apt-get "${apt_x[@]}" update
    # one query and one download (each apt call reads every architecture's lists)
    mapfile -t found < <(apt-cache "${apt_x[@]}" policy "${wanted[@]/#/libc-bin:}" 2>/dev/null |
        awk '/^libc-bin:/ {p=$1} /Candidate:/ && $2 != "(none)" {sub(":$", "", p); print p}')
    [ "${#found[@]}" -eq 0 ] || (cd "$bins/debs" && apt-get "${apt_x[@]}" download "${found[@]}" 2>/dev/null)
    for a in "${wanted[@]}"; do
        mkdir -p "$bins/$a"
        for deb in "$bins"/debs/libc-bin_*_"$a".deb; do
            [ -e "$deb" ] && dpkg-deb -x "$deb" "$bins/$a"
        done
        [ -x "$bins/$a/sbin/ldconfig" ] || echo "no libc-bin for $a in the archive: its sysroot is judged without a cache"
        touch "$bins/$a/.done"
    done
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
py=$PWD/.venv/bin/python
export PATH="$PWD/.venv/bin:$PATH"
"$py" -m pip install -q --disable-pip-version-check -e '.[test]'
"$py" -m ruff check minify tests benchmarks
"$py" -m ruff format --check minify tests benchmarks
"$py" -m mypy
# the layers of the pipeline (read, analyse, plan, write): pyproject.toml [tool.importlinter]
.venv/bin/lint-imports
"$py" -m pytest -q "$@"

# The declared floor of LIEF (pyproject.toml) is tested too: the ELF reading tests,
# judged by the real loader, with exactly that version.
floor=$(sed -n 's/.*"lief>=\([0-9.]*\)".*/\1/p' pyproject.toml)
[ -x .venv-lief-floor/bin/python ] || python3 -m venv .venv-lief-floor
.venv-lief-floor/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' "lief==$floor"
echo "LIEF $floor (the declared floor):"
PATH="$PWD/.venv-lief-floor/bin:$PATH" .venv-lief-floor/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_loader_rules.py tests/test_bad_input.py tests/test_elf.py
