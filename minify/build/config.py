"""The image's configuration (entrypoint, user, env, labels), from the options, the
presets and a source image's own, and the checks on it: the entrypoint is in the
image, modes a user would not expect are named.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from minify.build.options import RootfsOptions
from minify.errors import ImageSourceError, PlanError
from minify.plan.image import EntryType, ImageConfig, ImagePlan, Mapping, user_spec
from minify.plan.presets import NONROOT
from minify.version import __version__

if TYPE_CHECKING:
    from minify.sources.fromimage import Origin


def surprising_modes(plan: ImagePlan) -> list[str]:
    """Modes a user would not expect to ship (a source image's 0777 entrypoint, a 07777
    home), named: a world-writable program or folder lets any user of the container
    change what runs; a set-id folder changes who owns what is made in it."""
    out = []
    entry = plan.lookup(plan.config.entrypoint[0]) if plan.config.entrypoint else None
    if entry is not None and entry.mode & 0o022:
        out.append(
            f"the entrypoint {plan.config.entrypoint[0]} is writable by others than its owner ({entry.mode:04o})"
        )
    for item in plan.entries:
        if item.type is not EntryType.DIR:
            continue
        if item.mode & 0o002 and not item.mode & 0o1000:
            out.append(f"{item.path}: a folder anyone may write to, without the sticky bit ({item.mode:04o})")
        if item.mode & 0o6000:
            out.append(f"{item.path}: a folder with set-id bits ({item.mode:04o})")
    return out


def entrypoint_note(options: RootfsOptions, config: ImageConfig, inputs: int) -> list[str]:
    """With several inputs, say which one the image runs."""
    if options.source is not None or options.entrypoint is not None or inputs < 2 or not config.entrypoint:
        return []
    return [
        f"note: the ENTRYPOINT is {config.entrypoint[0]}, the first of {inputs} inputs (--entrypoint names another)"
    ]


def check_entrypoint(plan: ImagePlan, config: ImageConfig, options: RootfsOptions, origin: Origin | None) -> None:
    """``--entrypoint`` names a path of the image; a source's own was resolved through
    its PATH already (``Origin.entry``)."""
    if options.entrypoint is None and origin is not None:
        if origin.entry is not None and plan.lookup(origin.entry) is None:
            raise ImageSourceError(f"the entrypoint {origin.entry} did not make it into the image")
        return
    if config.entrypoint and plan.lookup(config.entrypoint[0]) is None:
        raise PlanError(f"--entrypoint {config.entrypoint[0]} is not in the image")


def image_config(
    options: RootfsOptions,
    first: str | None,
    maps: tuple[Mapping, ...],
    preset_env: tuple[tuple[str, str], ...] = (),
    origin: Origin | None = None,
) -> ImageConfig:
    user = NONROOT if options.user == "nonroot" else options.user
    if user is not None:
        user_spec(user)
    if origin is not None:
        return _source_config(options, origin, preset_env, user)
    env = [*preset_env, *options.env]
    entrypoint: tuple[str, ...] = ()
    if options.entrypoint:
        entrypoint = (options.entrypoint,)
    elif first is not None:  # the first input, as given (a script or a program)
        path = first
        for m in sorted(maps, key=lambda m: -len(m.source)):
            moved = m.apply(path)
            if moved is not None:
                path = moved
                break
        entrypoint = (path,)
    return ImageConfig(entrypoint, options.cmd, user, tuple(dict.fromkeys(env)), _labels())


def _labels(source: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
    """minify's own labels, after a source image's (its description only where the
    source has none)."""
    labels = dict(source)
    labels.setdefault(
        "org.opencontainers.image.description", "minified by minify: the exact loader closure, nothing else"
    )
    labels["io.github.minify.version"] = __version__
    return tuple(labels.items())


def _source_config(
    options: RootfsOptions, origin: Origin, preset_env: tuple[tuple[str, str], ...], user: str | None
) -> ImageConfig:
    """The source image's config, with what the options name instead; the environment
    merged by name (the source's, the presets', ``--env``)."""
    base = origin.config
    env = dict(base.env)
    env.update(preset_env)
    env.update(options.env)
    return replace(
        base,
        entrypoint=(options.entrypoint,) if options.entrypoint else base.entrypoint,
        cmd=options.cmd or base.cmd,
        user=user or base.user,
        env=tuple(env.items()),
        labels=(*_labels(base.labels), ("io.github.minify.source", origin.digest)),
    )
