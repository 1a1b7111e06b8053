"""``minify image``: the pipeline of ``minify rootfs`` (``minify.build.pipeline``),
then the OCI image written from the plan and placed at DEST (``minify.write.oci``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from functools import partial

from minify.build.options import Prepared, RootfsOptions
from minify.build.pipeline import copied_facts, prepare, run_tests, verify_rootfs, with_source
from minify.errors import MinifyError, OutOfDate, PlanError
from minify.plan.image import ImagePlan
from minify.sources.fromimage import Origin
from minify.sources.imagediff import differences
from minify.sources.reader import Platform, parse_platform, parse_source, source_platforms
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

#: One platform's root: a context that gives its options and, for --from, its Origin.
Source = Callable[[], AbstractContextManager[tuple[RootfsOptions, Origin | None]]]


def write_image(
    options: RootfsOptions,
    dest: ImageDest,
    *,
    progress: Callable[[int, int], None] | None = None,
    check: bool = False,
    roots: tuple[str, ...] = (),
) -> ImageResult:
    """Plan as ``minify rootfs`` does, materialise and verify the rootfs, write the
    image beside DEST, and rename it into place. With ``check`` (``--check``), DEST is
    left as it is: the image is made beside it, and its digest must be DEST's
    (``OutOfDate`` otherwise), which the byte for byte reproducible output allows.
    ``roots`` (``--platform-root PLATFORM=DIR``), or ``--from`` with ``--platform all``
    (or a comma list): one image per platform, in an index."""
    options = replace(options, output=dest.path)
    if roots:
        return _write_platforms(options, _platform_roots(roots, dest, options), dest, progress, check)
    if _several(options):
        return _write_platforms(options, _from_platforms(options), dest, progress, check)
    with with_source(options) as (inner, origin):
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
        hashes, capabilities, checked = _materialised(prepared, options, rootfs, progress, check=check)
        warnings.extend(checked)
        layout = os.path.join(tmp, "layout")
        written = write_layout(plan, rootfs, layout, dest, epoch=epoch, capabilities=capabilities)
        if check:
            _compare(dest, written.digest, lambda: _differences(dest, plan, hashes, platform))
        else:
            refuse_foreign(dest, force=options.force)  # again, under the lock
            oci.place(layout, dest, out, epoch)
    compressed, uncompressed = (sum(getattr(w, f) for w in written.layers) for f in ("compressed", "uncompressed"))
    return ImageResult(
        dest, written.digest, compressed, uncompressed, platform, plan, tuple(warnings), prepared.report, written.layers
    )


def _materialised(
    prepared: Prepared,
    options: RootfsOptions,
    rootfs: str,
    progress: Callable[[int, int], None] | None,
    *,
    check: bool,
) -> tuple[dict[str, str], dict[str, bytes], list[str]]:
    """The plan written as ``rootfs`` and verified (the copies with their source's
    facts), and ``--test`` run in it unless ``check`` (which never runs anything):
    the sha256 of each file, the file capabilities (the layer keeps them, so the
    copy's warning about them is not given) and the warnings."""
    plan = prepared.plan
    hashes, _, capabilities = materialise(plan, rootfs, progress=progress, digests=prepared.digests)
    warnings = verify_rootfs(rootfs, plan, copied_facts(rootfs, plan, prepared.digests, hashes, prepared.cache))
    if not check:
        warnings.extend(run_tests(options, plan, rootfs, prepared.out))
    return hashes, capabilities, warnings


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


def _platform_roots(roots: tuple[str, ...], dest: ImageDest, options: RootfsOptions) -> list[tuple[Platform, Source]]:
    """``PLATFORM=DIR`` pairs, sorted by platform (the order given does not matter)."""
    if options.source is not None:
        raise MinifyError("--platform-root and --from both name where the files come from; give one")
    pairs: dict[str, tuple[Platform, Source]] = {}
    for text in roots:
        name, sep, root = text.partition("=")
        platform = parse_platform(name) if sep and root else None
        if platform is None:
            raise MinifyError(f"--platform-root {text!r}: expected PLATFORM=DIR, e.g. linux/arm64=/srv/arm64")
        if str(platform) in pairs:
            raise MinifyError(f"--platform-root: {platform} given twice")
        one = replace(options, root=root)
        pairs[str(platform)] = (platform, partial(_as_is, one))
    return [pairs[key] for key in sorted(pairs)]


@contextlib.contextmanager
def _as_is(options: RootfsOptions) -> Iterator[tuple[RootfsOptions, Origin | None]]:
    yield options, None


def _from_platforms(options: RootfsOptions) -> list[tuple[Platform, Source]]:
    """``--from`` with ``--platform all`` (every platform of its index) or a comma list."""
    assert options.source is not None and options.platform is not None
    if options.platform == "all":
        beside = os.path.dirname(os.path.abspath(options.output or "."))
        oci.make_parent(beside)  # (a containers-storage export lands there: images are big)
        with tempfile.TemporaryDirectory(prefix=".minify-platforms-", dir=beside) as work:
            wanted = source_platforms(parse_source(options.source), work)
    else:
        wanted = [p for p in (parse_platform(t) for t in options.platform.split(",")) if p is not None]
    unique = {str(p): p for p in wanted}
    return [
        (p, partial(with_source, replace(options, platform=str(p)))) for p in (unique[key] for key in sorted(unique))
    ]


def _several(options: RootfsOptions) -> bool:
    return (
        options.source is not None
        and options.platform is not None
        and (options.platform == "all" or "," in options.platform)
    )


def _write_platforms(
    options: RootfsOptions,
    sources: list[tuple[Platform, Source]],
    dest: ImageDest,
    progress: Callable[[int, int], None] | None,
    check: bool,
) -> ImageResult:
    """Each platform's root (a folder, or a platform of ``--from``) analysed, planned,
    materialised and verified on its own, in turn; then one index of them all."""
    if dest.transport is Transport.DOCKER_ARCHIVE:
        raise MinifyError("several platforms: a docker-archive holds one; write oci: or oci-archive:")
    epoch = source_date_epoch()
    refuse_foreign(dest, force=options.force)
    warnings: list[str] = []
    images: list[oci.Built] = []
    with contextlib.ExitStack() as stack:
        tmp = None
        out = None
        for n, (want, source) in enumerate(sources):
            inner, origin = stack.enter_context(source())
            one = _prepared_for(want, inner, origin, dest)
            if out is None:
                out = one.out
                oci.make_parent(out.parent)
                warnings.extend(stack.enter_context(output.writing(out)))
                tmp = stack.enter_context(oci.temporary(out))
            assert tmp is not None
            rootfs = os.path.join(tmp, f"rootfs-{n}")
            _, capabilities, checked = _materialised(one, inner, rootfs, progress, check=check)
            warnings.extend(f"{want}: {w}" for w in (*one.plan.warnings, *checked))
            images.append(oci.Built(one.plan, rootfs, capabilities))
        assert tmp is not None and out is not None
        layout = os.path.join(tmp, "layout")
        written = oci.write_index_layout(images, layout, dest, epoch=epoch)
        if check:
            _compare(dest, written.digest, lambda: [])
        else:
            refuse_foreign(dest, force=options.force)  # again, under the lock
            oci.place(layout, dest, out, epoch)
    compressed, uncompressed = (sum(getattr(w, f) for w in written.layers) for f in ("compressed", "uncompressed"))
    return ImageResult(
        dest,
        written.digest,
        compressed,
        uncompressed,
        platform_of(images[0].plan),
        images[0].plan,
        tuple(dict.fromkeys(warnings)),
        None,
        written.layers,
        tuple(str(want) for want, _ in sources),
    )


def _prepared_for(want: Platform, options: RootfsOptions, origin: Origin | None, dest: ImageDest) -> Prepared:
    """One platform's plan, checked to be for that platform; its errors name it."""
    try:
        one = prepare(options, folder=dest.transport is Transport.OCI, origin=origin)
    except MinifyError as exc:
        raise PlanError(f"{want}: {exc}") from None
    got = platform_of(one.plan)
    if not Platform(got["os"], got["architecture"], got.get("variant")).matches(want):
        shown = "/".join(got[k] for k in ("os", "architecture", "variant") if k in got)
        raise PlanError(f"{want}: its programs are {shown}")
    return one
