"""The Dockerfile writer: a FROM scratch build context for an ``ImagePlan``.

Values reach the container exactly as given. ENV and LABEL values are written in
single quotes, where the Dockerfile expands nothing (``$HOME`` stays ``$HOME``); a
single quote is closed, written in double quotes, and reopened, as in a shell. The one
thing a Dockerfile line cannot carry is a line break, so such a value is refused. Keys
are written bare, so one that would not read back as one key (white space, ``=``,
quotes, a line break) is refused too.
ENTRYPOINT and CMD use the JSON (exec) form, written as UTF-8.
"""

from __future__ import annotations

import json
import posixpath
import re

from minify.errors import DockerfileError
from minify.plan.image import Entry, EntryType, ImagePlan, owned_trees
from minify.plan.layers import base_entries


def render(plan: ImagePlan) -> str:
    """A Dockerfile that copies ``rootfs/`` into an empty image; deterministic text."""
    config = plan.config
    lines = [
        "# Written by minify: the exact loader closure of its programs, nothing else.",
        "# minify.lock.json lists every file and why it is here.",
        "FROM scratch",
        *(["COPY base/ /"] if base_entries(plan) else []),
        "COPY rootfs/ /",
    ]
    lines.extend(f"COPY --chown={e.owner[0]}:{e.owner[1]} owned{e.path} {e.path}" for e in owned_copies(plan))
    lines.extend(f"ENV {_key(key, 'an ENV name')}={quote(value, f'--env {key}')}" for key, value in config.env)
    lines.extend(f"LABEL {_key(key, 'a LABEL key')}={quote(value, f'label {key}')}" for key, value in config.labels)
    if config.exposed_ports:
        lines.append("EXPOSE " + " ".join(_text(p, "an exposed port") for p in config.exposed_ports))
    if config.volumes:
        lines.append(f"VOLUME {exec_form(config.volumes, 'a volume')}")
    if config.stop_signal:
        lines.append(f"STOPSIGNAL {_text(config.stop_signal, 'the stop signal')}")
    if config.working_dir:
        lines.append(f"WORKDIR {_text(config.working_dir, 'the working folder')}")
    if config.user:
        lines.append(f"USER {config.user}")
    if config.entrypoint:
        lines.append(f"ENTRYPOINT {exec_form(config.entrypoint, 'the entrypoint')}")
    if config.cmd:
        lines.append(f"CMD {exec_form(config.cmd, '--cmd')}")
    return "\n".join(lines) + "\n"


def _text(value: str, what: str) -> str:
    """Refuse what cannot reach the container as given: line breaks, NUL, and names
    that are not UTF-8 (undecodable bytes travel as surrogate escapes)."""
    if any(ch in value for ch in "\n\r\0"):
        raise DockerfileError(f"{what}: a Dockerfile cannot carry a line break or NUL in a value ({value!r})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DockerfileError(f"{what}: {value!r} is not valid UTF-8, which an image config must be") from None
    return value


#: What a key may hold and still mean one key on its line: no white space (it would
#: start the next pair), no ``=`` (it would end the key), no quotes or backslashes
#: (the Dockerfile parser would read them), no line break (it would start a new
#: instruction: ``maintainer=x\nENV LD_PRELOAD=...``), no control character.
_KEY_FORBIDDEN = frozenset(" \t\n\r\v\f=\"'\\$`") | {chr(c) for c in range(32)} | {chr(127)}


def _key(key: str, what: str) -> str:
    """An ENV name or LABEL key, written as it is; one a Dockerfile line cannot carry
    as one key (a source image's ``maintainer=x\nENV LD_PRELOAD=...``) is refused."""
    bad = sorted({ch for ch in key if ch in _KEY_FORBIDDEN})
    if not key or bad:
        shown = ", ".join(repr(ch) for ch in bad) or "nothing"
        raise DockerfileError(f"{what} {key!r} cannot be written in a Dockerfile as one key (it holds {shown})")
    return _text(key, what)


def quote(value: str, what: str) -> str:
    """One Dockerfile word whose value is exactly ``value``."""
    return "'" + _text(value, what).replace("'", "'\"'\"'") + "'"


def exec_form(args: tuple[str, ...], what: str) -> str:
    return json.dumps([_text(a, what) for a in args], ensure_ascii=False)


def owned_copies(plan: ImagePlan) -> list[Entry]:
    """One ``COPY --chown`` per entry of an owned tree whose owner differs from its
    folder's (or whose folder is outside the trees): each copies its whole subtree,
    and a later one gives a child its own owner back."""
    trees = owned_trees(plan)
    owner = {e.path: e.owner for e in trees}
    return [e for e in trees if owner.get(posixpath.dirname(e.path)) != e.owner]


def _owned_tops(plan: ImagePlan) -> list[Entry]:
    """Owned trees' top entries (whose folder is not in a tree)."""
    trees = owned_trees(plan)
    paths = {e.path for e in trees}
    return [e for e in trees if posixpath.dirname(e.path) not in paths]


def render_dockerignore(plan: ImagePlan) -> str:
    """Keep out of ``COPY rootfs/ /`` what another COPY brings: the base layer's files
    (``COPY base/ /``, the layer images from one root share) and owned entries (a
    folder ``COPY rootfs/`` creates as 0:0 would not be given away by the later
    ``COPY --chown``). Only files and links of the base: its folders hold the app's too."""
    lines = ["# Written by minify: these come from base/ or owned/ (see Dockerfile)."]
    lines.extend(_pattern(f"rootfs{e.path}") for e in base_entries(plan) if e.type is not EntryType.DIR)
    lines.extend(_pattern(f"rootfs{e.path}") for e in _owned_tops(plan))
    return "\n".join(lines) + "\n"


def _pattern(path: str) -> str:
    """A .dockerignore line that matches exactly ``path``: the characters its patterns
    give a meaning (``*``, ``?``, ``[``, ``\\``) escaped, and a leading ``!`` or ``#``."""
    escaped = re.sub(r"([*?\[\\])", r"\\\1", path)
    return "\\" + escaped if escaped.startswith(("!", "#")) else escaped


def needs_dockerignore(plan: ImagePlan) -> bool:
    return bool(base_entries(plan)) or any(e.owned for e in plan.entries)
