"""ELF files as frozen facts: LIEF (imported here alone), compact images, the facts cache."""
