"""What differs between target architectures, in one table: how a program names its
architecture, which candidate files its loader accepts, and the ld.so.cache flags,
$LIB, $PLATFORM and vdso it uses.

Values from glibc: the flags of sysdeps/generic/ldconfig.h and ``_dl_cache_check_flags``
of each sysdeps/unix/sysv/linux/*/dl-cache.h; ``elf_machine_matches_host`` of each
sysdeps/*/dl-machine.h and the ARM ``VALID_FLOAT_ABI`` of sysdeps/unix/sysv/linux/arm/
ldsodefs.h (e_flags); the ``LIBC_ABI_MAX`` that libc-abis gives each target. Checked
against each architecture's own loader under qemu (tests/test_arches.py): Debian's
loader skips a candidate of the other byte order or of another float ABI, as it skips
one of another machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minify.elf.files import ElfHeader

EM_386 = 3
EM_MIPS = 8
EM_PPC64 = 21
EM_S390 = 22
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183
EM_RISCV = 243

ELFOSABI_SYSV = 0
ELFOSABI_GNU = 3
ELFOSABI_ARM_AEABI = 97

# e_flags bits the loaders look at (elf.h)
EF_ARM_ABI_FLOAT_SOFT = 0x200
EF_ARM_ABI_FLOAT_HARD = 0x400
EF_RISCV_FLOAT_ABI = 0x6
EF_RISCV_FLOAT_ABI_DOUBLE = 0x4
EF_PPC64_ABI = 0x3
EF_MIPS_ABI2 = 0x20
EF_MIPS_FP64 = 0x200
EF_MIPS_NAN2008 = 0x400

#: ldconfig's FLAG_ELF: a library it could not tie to a C library. Only the generic
#: _dl_cache_check_flags (i386 among Debian's) accepts it.
FLAG_ELF = 0x1
FLAG_ELF_LIBC6 = 0x3


class FloatRule(Enum):
    """The e_flags check of an architecture's ``elf_machine_matches_host`` (or ARM's
    ``VALID_FLOAT_ABI``): a candidate that fails it is skipped, like one of another
    machine."""

    NONE = "none"
    ARM_HARD = "arm-hard"  # an EABI5 object must not be marked soft-float
    ARM_SOFT = "arm-soft"  # an EABI5 object must not be marked hard-float
    RISCV_DOUBLE = "riscv-lp64d"  # the float ABI bits say double
    PPC64_ELFV2 = "ppc64-elfv2"  # the ABI bits are 0 or 2
    MIPS_LEGACY_NAN = "mips-legacy-nan"  # no NaN2008, no FP64 (n64: Debian's mips64el)
    MIPS_O32_LEGACY_NAN = "mips-o32-legacy-nan"  # and not n32 (EF_MIPS_ABI2)


@dataclass(frozen=True)
class Arch:
    """What the loader of one architecture does differently: its ELF identity, the
    ld.so.cache flags it accepts, its multiarch triplet and its file names."""

    name: str
    machine: int  # e_machine
    elf_class: int
    big_endian: bool
    triplet: str  # Debian multiarch
    cache_flags: tuple[int, ...]  # the ld.so.cache entry flags its loader accepts, its own first
    platform: str  # AT_PLATFORM on a baseline CPU
    vdso: str
    musl: str  # the <arch> of ld-musl-<arch>.so.1
    upstream_lib: str  # $LIB without multiarch
    interpreter: str  # the glibc PT_INTERP programs of this architecture name
    floats: FloatRule = FloatRule.NONE
    osabis: tuple[int, ...] = (ELFOSABI_SYSV, ELFOSABI_GNU)  # VALID_ELF_OSABI
    abi_max: int = 3  # LIBC_ABI_MAX: EI_ABIVERSION below it is valid with ELFOSABI_GNU
    sysv_abi_max: int = 1  # EI_ABIVERSION below it is valid with ELFOSABI_SYSV (MIPS: 6)

    @property
    def debian_lib(self) -> str:
        return f"lib/{self.triplet}"

    def rejects(self, header: ElfHeader) -> str | None:
        """Why the loader skips ``header`` as not for this host (another machine, byte
        order or float ABI), or None. Class is checked by the caller, first, as glibc does."""
        if header.machine != self.machine:
            return f"skipped: wrong machine (e_machine {header.machine})"
        if (header.endian.value == "big") != self.big_endian:
            return f"skipped: other byte order ({header.endian.value}-endian)"
        return _float_problem(self.floats, header.flags)


def _float_problem(rule: FloatRule, flags: int) -> str | None:
    eabi5 = flags >> 24 == 5
    if rule is FloatRule.ARM_HARD and eabi5 and flags & EF_ARM_ABI_FLOAT_SOFT:
        return "skipped: soft-float ABI (the loader is hard-float)"
    if rule is FloatRule.ARM_SOFT and eabi5 and flags & EF_ARM_ABI_FLOAT_HARD:
        return "skipped: hard-float ABI (the loader is soft-float)"
    if rule is FloatRule.RISCV_DOUBLE and flags & EF_RISCV_FLOAT_ABI != EF_RISCV_FLOAT_ABI_DOUBLE:
        names = {0: "soft-float (lp64)", 2: "single-float (lp64f)", 6: "quad-float (lp64q)"}
        return f"skipped: {names[flags & EF_RISCV_FLOAT_ABI]} ABI (the loader is lp64d)"
    if rule is FloatRule.PPC64_ELFV2 and flags & EF_PPC64_ABI not in (0, 2):
        return f"skipped: ELF ABI version {flags & EF_PPC64_ABI} (the loader is ELFv2)"
    if rule in (FloatRule.MIPS_LEGACY_NAN, FloatRule.MIPS_O32_LEGACY_NAN):
        if rule is FloatRule.MIPS_O32_LEGACY_NAN and flags & EF_MIPS_ABI2:
            return "skipped: n32 ABI (the loader is o32)"
        if flags & EF_MIPS_NAN2008:
            return "skipped: 2008 NaN encoding (the loader uses the legacy one)"
        if flags & EF_MIPS_FP64:
            return "skipped: the old o32 FP64 ABI"
    return None


def _arch(name: str, machine: int, elf_class: int, triplet: str, flags: int, **more: object) -> Arch:
    """An entry of the table; most architectures take the defaults."""
    values: dict[str, object] = {
        "big_endian": False,
        "cache_flags": (flags,),
        "platform": name,
        "vdso": "linux-vdso.so.1",
        "musl": name,
        "upstream_lib": "lib64" if elf_class == 64 else "lib",
        "interpreter": "",
    }
    values.update(more)
    return Arch(name, machine, elf_class, triplet=triplet, **values)  # type: ignore[arg-type]


ARCHES: tuple[Arch, ...] = (
    _arch("x86_64", EM_X86_64, 64, "x86_64-linux-gnu", 0x0303, interpreter="/lib64/ld-linux-x86-64.so.2", abi_max=4),
    _arch("aarch64", EM_AARCH64, 64, "aarch64-linux-gnu", 0x0A03, interpreter="/lib/ld-linux-aarch64.so.1"),
    # the generic _dl_cache_check_flags: flags 1 (ldconfig found no libc dependency) or 3
    _arch(
        "i386",
        EM_386,
        32,
        "i386-linux-gnu",
        FLAG_ELF_LIBC6,
        cache_flags=(FLAG_ELF_LIBC6, FLAG_ELF),
        platform="i686",
        vdso="linux-gate.so.1",
        interpreter="/lib/ld-linux.so.2",
        abi_max=4,
    ),
    _arch(
        "armhf",
        EM_ARM,
        32,
        "arm-linux-gnueabihf",
        0x0903,
        cache_flags=(0x0903, FLAG_ELF_LIBC6),
        platform="v7l",
        interpreter="/lib/ld-linux-armhf.so.3",
        floats=FloatRule.ARM_HARD,
        osabis=(ELFOSABI_SYSV, ELFOSABI_GNU, ELFOSABI_ARM_AEABI),
    ),
    _arch(
        "armel",
        EM_ARM,
        32,
        "arm-linux-gnueabi",
        0x0B03,
        cache_flags=(0x0B03, FLAG_ELF_LIBC6),
        platform="v5l",
        musl="arm",
        interpreter="/lib/ld-linux.so.3",
        floats=FloatRule.ARM_SOFT,
        osabis=(ELFOSABI_SYSV, ELFOSABI_GNU, ELFOSABI_ARM_AEABI),
    ),
    _arch(
        "ppc64le",
        EM_PPC64,
        64,
        "powerpc64le-linux-gnu",
        0x0503,
        platform="power8",
        vdso="linux-vdso64.so.1",
        musl="powerpc64le",
        interpreter="/lib64/ld64.so.2",
        floats=FloatRule.PPC64_ELFV2,
        abi_max=4,
    ),
    _arch(
        "s390x",
        EM_S390,
        64,
        "s390x-linux-gnu",
        0x0403,
        big_endian=True,
        platform="z196",
        vdso="linux-vdso64.so.1",
        interpreter="/lib/ld64.so.1",
    ),
    _arch(
        "riscv64",
        EM_RISCV,
        64,
        "riscv64-linux-gnu",
        0x1003,
        upstream_lib="lib64/lp64d",
        interpreter="/lib/ld-linux-riscv64-lp64d.so.1",
        floats=FloatRule.RISCV_DOUBLE,
        abi_max=4,
    ),
    _arch(
        "mips64el",
        EM_MIPS,
        64,
        "mips64el-linux-gnuabi64",
        0x0703,
        platform="mips64",
        interpreter="/lib64/ld.so.1",
        floats=FloatRule.MIPS_LEGACY_NAN,
        sysv_abi_max=6,
    ),
    _arch(
        "mipsel",
        EM_MIPS,
        32,
        "mipsel-linux-gnu",
        FLAG_ELF_LIBC6,
        cache_flags=(FLAG_ELF_LIBC6, FLAG_ELF),
        platform="mips",
        interpreter="/lib/ld.so.1",
        floats=FloatRule.MIPS_O32_LEGACY_NAN,
        sysv_abi_max=6,
    ),
)

#: Architectures a program may be built for that minify does not model, by name, so
#: that a refusal says which one it met: (e_machine, class, big endian) -> name.
UNSUPPORTED: dict[tuple[int, int, bool], str] = {
    (EM_X86_64, 32, False): "x32",
    (EM_MIPS, 64, True): "mips64 (big-endian)",
    (EM_MIPS, 32, True): "mips (big-endian)",
    (EM_PPC64, 64, True): "ppc64 (big-endian)",
    (20, 32, True): "powerpc",
    (EM_AARCH64, 64, True): "aarch64_be",
    (EM_ARM, 32, True): "armeb",
    (EM_S390, 32, True): "s390 (31-bit)",
    (EM_RISCV, 32, False): "riscv32",
    (2, 32, True): "sparc",
    (43, 64, True): "sparc64",
    (258, 64, False): "loongarch64",
    (4, 32, True): "m68k",
    (0x9026, 64, False): "alpha",
    (15, 32, True): "hppa",
    (42, 32, False): "sh4",
    (50, 64, False): "ia64",
}


def arch_of(header: ElfHeader) -> Arch | None:
    """The architecture a program (or a library given as an input) is built for: its
    machine, class and byte order, and for 32-bit ARM and MIPS the ABI its e_flags (or
    loader) name."""
    big = header.endian.value == "big"
    found = [a for a in ARCHES if (a.machine, a.elf_class, a.big_endian) == (header.machine, header.elf_class, big)]
    if len(found) > 1 and header.machine == EM_ARM:
        hard = header.flags & EF_ARM_ABI_FLOAT_HARD or (header.interpreter or "").endswith("-armhf.so.3")
        found = [a for a in found if (a.floats is FloatRule.ARM_HARD) == bool(hard)]
    if header.machine == EM_MIPS and header.elf_class == 32 and header.flags & EF_MIPS_ABI2:
        return None  # n32
    return found[0] if found else None


def machine_name(header: ElfHeader) -> str:
    """The architecture's name, also for one minify does not model."""
    arch = arch_of(header)
    if arch is not None:
        return arch.name
    big = header.endian.value == "big"
    if header.machine == EM_MIPS and header.elf_class == 32 and header.flags & EF_MIPS_ABI2:
        return "mipsn32" + ("" if big else "el")
    known = UNSUPPORTED.get((header.machine, header.elf_class, big))
    if known:
        return known
    order = "big" if big else "little"
    return f"e_machine {header.machine} ({header.elf_class}-bit, {order}-endian)"


#: ELF architectures (``Arch.name``) as OCI platforms: architecture and variant.
PLATFORMS: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "i386": ("386", None),
    "armhf": ("arm", "v7"),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "armel": ("arm", "v5"),
    "mips64el": ("mips64le", None),
    "mipsel": ("mipsle", None),
}


def host_arch() -> str:
    """This machine's architecture, in the names ``Arch.name`` uses."""
    machine = os.uname().machine
    return {
        "amd64": "x86_64",
        "arm64": "aarch64",
        "i686": "i386",
        "armv7l": "armhf",
        "armv8l": "armhf",
        "armv5tel": "armel",
        "mips64": "mips64el",
        "mips": "mipsel",
    }.get(machine, machine)
