"""``minify image``: the pipeline of ``minify rootfs`` (``minify.build.pipeline``),
then the OCI image written from the plan and placed at DEST (``minify.write.oci``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

from minify.build.options import RootfsOptions
from minify.build.pipeline import copied_facts, prepare, run_tests, verify_rootfs, with_source
from minify.errors import OutOfDate
from minify.plan.image import ImagePlan
from minify.sources.fromimage import Origin
from minify.sources.imagediff import differences
from minify.sources.reader import Platform
from minify.write import oci, output
from minify.write.oci import (
    ImageDest,
    ImageResult,
    Transport,
    platform_of,
    refuse_foreign,
    source_date_epoch,
    write_layout,
)
from minify.write.rootfs import materialise


def write_image(
    options: RootfsOptions,
    dest: ImageDest,
    *,
    progress: Callable[[int, int], None] | None = None,
    check: bool = False,
) -> ImageResult:
    """Plan as ``minify rootfs`` does, materialise and verify the rootfs, write the
    image beside DEST, and rename it into place. With ``check`` (``--check``), DEST is
    left as it is: the image is made beside it, and its digest must be DEST's
    (``OutOfDate`` otherwise), which the byte for byte reproducible output allows."""
    with with_source(replace(options, output=dest.path)) as (inner, origin):
        return _write_image(inner, origin, dest, progress, check)


def _write_image(
    options: RootfsOptions,
    origin: Origin | None,
    dest: ImageDest,
    progress: Callable[[int, int], None] | None,
    check: bool,
) -> ImageResult:
    epoch = source_date_epoch()
    prepared = prepare(options, folder=dest.transport is Transport.OCI, origin=origin)
    plan, out = prepared.plan, prepared.out
    platform = platform_of(plan)
    refuse_foreign(dest, force=options.force)
    oci.make_parent(out.parent)
    warnings = list(plan.warnings)
    with output.writing(out) as notes, oci.temporary(out) as tmp:
        warnings.extend(notes)
        rootfs = os.path.join(tmp, "rootfs")
        hashes, _, capabilities = materialise(plan, rootfs, progress=progress, digests=prepared.digests)
        facts = copied_facts(rootfs, plan, prepared.digests, hashes, prepared.cache)
        warnings.extend(verify_rootfs(rootfs, plan, facts))
        if not check:  # --check never runs anything
            warnings.extend(run_tests(options, plan, rootfs, out))
        layout = os.path.join(tmp, "layout")
        written = write_layout(plan, rootfs, layout, dest, epoch=epoch, capabilities=capabilities)
        if check:
            _compare(dest, written.digest, lambda: _differences(dest, plan, hashes, platform))
        else:
            refuse_foreign(dest, force=options.force)  # again, under the lock
            oci.place(layout, dest, out, epoch)
    return ImageResult(
        dest, written.digest, written.compressed, written.uncompressed, platform, plan, tuple(warnings), prepared.report
    )


def _compare(dest: ImageDest, digest: str, differences: Callable[[], list[str]]) -> None:
    """DEST must hold ``digest``; if not, ``OutOfDate`` names the paths that differ."""
    have = oci.digest_of(dest.path)
    if have is None:
        raise OutOfDate((f"{dest.path}: missing, or not an image minify wrote",))
    if have != digest:
        raise OutOfDate((f"{dest}: its image is {have}; it would be {digest}", *differences()))


def _differences(dest: ImageDest, plan: ImagePlan, hashes: dict[str, str], platform: dict[str, str]) -> list[str]:
    wanted = Platform(platform["os"], platform["architecture"], platform.get("variant"))
    return differences(dest.transport.value, dest.path, plan, hashes, wanted)
