"""What differs between target architectures: ld.so.cache flags, $LIB, $PLATFORM, vdso.

Values from glibc (sysdeps/generic/ldconfig.h, sysdeps/*/dl-cache.h) and the Debian
multiarch triplets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str
    machine: int  # e_machine
    elf_class: int
    triplet: str  # Debian multiarch
    cache_flags: int  # FLAG_ELF_LIBC6 | architecture bits
    platform: str  # AT_PLATFORM on a baseline CPU
    vdso: str
    musl: str  # the <arch> of ld-musl-<arch>.so.1
    upstream_lib: str  # $LIB without multiarch
    interpreter: str  # the glibc PT_INTERP programs of this architecture name

    @property
    def debian_lib(self) -> str:
        return f"lib/{self.triplet}"


ARCHES: tuple[Arch, ...] = (
    Arch(
        "x86_64",
        62,
        64,
        "x86_64-linux-gnu",
        0x0303,
        "x86_64",
        "linux-vdso.so.1",
        "x86_64",
        "lib64",
        "/lib64/ld-linux-x86-64.so.2",
    ),
    Arch(
        "aarch64",
        183,
        64,
        "aarch64-linux-gnu",
        0x0A03,
        "aarch64",
        "linux-vdso.so.1",
        "aarch64",
        "lib64",
        "/lib/ld-linux-aarch64.so.1",
    ),
    Arch("i386", 3, 32, "i386-linux-gnu", 0x0003, "i686", "linux-gate.so.1", "i386", "lib", "/lib/ld-linux.so.2"),
    Arch(
        "armhf",
        40,
        32,
        "arm-linux-gnueabihf",
        0x0903,
        "v7l",
        "linux-vdso.so.1",
        "armhf",
        "lib",
        "/lib/ld-linux-armhf.so.3",
    ),
    Arch(
        "ppc64le",
        21,
        64,
        "powerpc64le-linux-gnu",
        0x0503,
        "power8",
        "linux-vdso64.so.1",
        "powerpc64le",
        "lib64",
        "/lib64/ld64.so.2",
    ),
    Arch("s390x", 22, 64, "s390x-linux-gnu", 0x0403, "z196", "linux-vdso64.so.1", "s390x", "lib64", "/lib/ld64.so.1"),
    Arch(
        "riscv64",
        243,
        64,
        "riscv64-linux-gnu",
        0x1003,
        "riscv64",
        "linux-vdso.so.1",
        "riscv64",
        "lib64/lp64d",
        "/lib/ld-linux-riscv64-lp64d.so.1",
    ),
)


def arch_for(machine: int, elf_class: int) -> Arch | None:
    for arch in ARCHES:
        if arch.machine == machine and arch.elf_class == elf_class:
            return arch
    return None


def machine_name(machine: int, elf_class: int) -> str:
    arch = arch_for(machine, elf_class)
    return arch.name if arch else f"e_machine {machine} ({elf_class}-bit)"


def host_arch() -> str:
    """This machine's architecture, in the names ``Arch.name`` uses."""
    machine = os.uname().machine
    return {"amd64": "x86_64", "arm64": "aarch64", "i686": "i386", "armv7l": "armhf"}.get(machine, machine)
