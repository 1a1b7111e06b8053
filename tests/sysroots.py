"""Sysroots of the architectures Debian ships, judged by each one's own loader.

A sysroot is laid out as Debian installs libc6 (multiarch): the C library of Debian's
``libc6-dev-ARCH-cross`` in ``/lib/TRIPLET``, the loader reached through the path
programs name in PT_INTERP, and a cache written by the target's own ``ldconfig``
(``libc-bin:ARCH``, which the test command downloads into ``.cache/libc-bin``, run
under qemu) where Debian's archive has one for that architecture. The truth comes from
running a program in a chroot of the sysroot under ``qemu-ARCH-static``: once with
``LD_TRACE_LOADED_OBJECTS=1`` (what the loader maps) and once for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Where tests/run.sh unpacks libc-bin:ARCH (one folder per Debian architecture).
LIBC_BIN = REPO / ".cache/libc-bin"


@dataclass(frozen=True)
class Cross:
    """One architecture: its names for Debian, gcc and qemu, and its loader's path."""

    name: str  # minify's Arch.name
    deb: str  # Debian's architecture name
    triplet: str  # the multiarch folder
    gnu: str  # the cross compiler's prefix and /usr/<gnu> folder
    qemu: str  # qemu-<qemu>-static
    interpreter: str  # PT_INTERP of its programs

    @property
    def gcc(self) -> str:
        return f"{self.gnu}-gcc"

    @property
    def qemu_static(self) -> str:
        return f"qemu-{self.qemu}-static"

    @property
    def ldconfig(self) -> Path | None:
        """The target's own ldconfig, when Debian's archive has libc-bin for it."""
        path = LIBC_BIN / self.deb / "sbin/ldconfig"
        return path if path.is_file() else None

    @property
    def libdir(self) -> str:
        return f"/lib/{self.triplet}"


CROSSES = (
    Cross("armhf", "armhf", "arm-linux-gnueabihf", "arm-linux-gnueabihf", "arm", "/lib/ld-linux-armhf.so.3"),
    Cross("i386", "i386", "i386-linux-gnu", "i686-linux-gnu", "i386", "/lib/ld-linux.so.2"),
    Cross(
        "riscv64", "riscv64", "riscv64-linux-gnu", "riscv64-linux-gnu", "riscv64", "/lib/ld-linux-riscv64-lp64d.so.1"
    ),
    Cross("ppc64le", "ppc64el", "powerpc64le-linux-gnu", "powerpc64le-linux-gnu", "ppc64le", "/lib64/ld64.so.2"),
    Cross("s390x", "s390x", "s390x-linux-gnu", "s390x-linux-gnu", "s390x", "/lib/ld64.so.1"),
    Cross("mips64el", "mips64el", "mips64el-linux-gnuabi64", "mips64el-linux-gnuabi64", "mips64el", "/lib64/ld.so.1"),
    Cross("armel", "armel", "arm-linux-gnueabi", "arm-linux-gnueabi", "arm", "/lib/ld-linux.so.3"),
    Cross("mipsel", "mipsel", "mipsel-linux-gnu", "mipsel-linux-gnu", "mipsel", "/lib/ld.so.1"),
)


def make_sysroot(cross: Cross, root: Path) -> Path:
    """The cross C library laid out as Debian's libc6 installs it, with ``/qemu`` (the
    static emulator) at the top so that a chroot of the root can run its programs."""
    lib = root / cross.libdir.lstrip("/")
    lib.mkdir(parents=True)
    (root / "usr" / cross.libdir.lstrip("/")).mkdir(parents=True)
    (root / "etc").mkdir()
    for folder in ("lib", "lib64", "lib32"):
        source = Path("/usr") / cross.gnu / folder
        if not source.is_dir():
            continue
        for item in source.iterdir():
            if ".so" in item.name and not item.name.endswith(".a") and _is_elf_or_link(item):
                dest = lib / item.name
                if not dest.exists() and not dest.is_symlink():
                    if item.is_symlink():
                        dest.symlink_to(os.readlink(item))
                    else:
                        shutil.copy2(item, dest)
    interp = root / cross.interpreter.lstrip("/")
    interp.parent.mkdir(parents=True, exist_ok=True)
    if not interp.exists():
        interp.symlink_to(os.path.relpath(lib / interp.name, interp.parent))
    qemu = shutil.which(cross.qemu_static)
    assert qemu is not None, cross.qemu_static
    shutil.copy2(qemu, root / "qemu")
    return root


def _is_elf_or_link(path: Path) -> bool:
    if path.is_symlink():
        return True
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def run_ldconfig(cross: Cross, root: Path) -> bool:
    """Write ``root``'s ld.so.cache with the target's own ldconfig; False when Debian's
    archive has none for this architecture."""
    ldconfig = cross.ldconfig
    if ldconfig is None:
        return False
    subprocess.run([cross.qemu_static, str(ldconfig), "-r", str(root)], check=True, capture_output=True, timeout=120)
    return (root / "etc/ld.so.cache").is_file()


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def in_chroot(root: Path, argv: list[str], env: dict[str, str] | None = None, timeout: int = 60) -> Ran:
    """Run ``argv`` (a program of the sysroot) under its qemu, in a chroot of ``root``."""

    def enter() -> None:
        os.chroot(root)
        os.chdir("/")

    full = {"PATH": "/usr/bin:/bin"}
    full.update(env or {})
    proc = subprocess.run(["/qemu", *argv], capture_output=True, text=True, env=full, timeout=timeout, preexec_fn=enter)
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def patch_flags(path: Path, set_bits: int, clear_bits: int = 0) -> None:
    """Change a built library's e_flags (the loader reads them from the ELF header): the
    way to get a copy of another float ABI or ABI version without its toolchain."""
    data = bytearray(path.read_bytes())
    is64 = data[4] == 2
    order = "little" if data[5] == 1 else "big"
    offset = 48 if is64 else 36
    flags = int.from_bytes(data[offset : offset + 4], order)
    flags = (flags & ~clear_bits) | set_bits
    data[offset : offset + 4] = flags.to_bytes(4, order)
    path.write_bytes(bytes(data))
