"""The shape of every document minify reads from an image, checked in one place.

An image is untrusted input: its index, manifests and config, docker's
``manifest.json``, and the files its root holds that minify reads (``/etc/passwd``,
``/etc/group``, the dpkg status, the apk database, ``/etc/os-release``). Each field
minify uses is declared here once, with its type, its size and the characters it may
hold, and a document is checked against its shape before any reader uses a field.
So a reader never meets a list where it wants a string, and the user gets one line
that names the document and the field (``index.json: manifests[1].platform.variant
is an object, not a string``), not a traceback or a guess.

Fields minify does not use are not checked (an image may carry anything there); a
``null`` where a field is optional counts as absent, as docker writes ``"Cmd": null``.
The walk is iterative and only goes where a shape goes, so a document's depth
cannot exhaust the stack (``json`` itself refuses what nests deeper than it reads).

Image documents (JSON, ``/etc/passwd``, ``/etc/group``) that are not of their shape
end the run (exit 2): what they describe cannot be read another way. Package
databases and ``os-release`` are metadata for scanners, and the host's own root is
read the same way: a stanza or line that is not of its shape is skipped with a
warning naming the file, the line and the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from minify.errors import ImageSourceError

#: Items a list or object of an image document may hold (a layer list, Env, Labels).
MOST_ITEMS = 10_000
#: Characters in one string field.
MOST_CHARS = 64 << 10


class Shape:
    """What a value must be; ``problem`` says what it is instead (None: it fits)."""

    def problem(self, value: object) -> str | None:
        raise NotImplementedError

    def parts(self, value: object) -> Iterator[tuple[str, object, Shape]]:
        """The value's parts that have shapes of their own: (path step, part, shape)."""
        return iter(())


@dataclass(frozen=True)
class Text(Shape):
    """A string of at most ``most`` characters, without NUL, matching ``pattern``."""

    what: str = "a string"
    pattern: str | None = None
    most: int = MOST_CHARS
    _compiled: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_compiled", re.compile(self.pattern, re.DOTALL))

    def problem(self, value: object) -> str | None:
        if type(value) is str and len(value) <= self.most and "\0" not in value:
            if self._compiled is None or self._compiled.fullmatch(value) is not None:
                return None  # the common case first: database stanzas check a million fields
        if not isinstance(value, str):
            return f"is {kind(value)}, not {self.what}"
        if len(value) > self.most:
            return f"is {len(value)} characters long, more than {self.most}"
        return f"{_shown(value)} is not {self.what}"


@dataclass(frozen=True)
class Number(Shape):
    """An integer (not true or false) from ``low`` to ``high``."""

    low: int = 0
    high: int = (1 << 63) - 1

    def problem(self, value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"is {kind(value)}, not a number"
        if not self.low <= value <= self.high:
            return f"is {value}, outside {self.low}..{self.high}"
        return None


@dataclass(frozen=True)
class Items(Shape):
    """A list of at most ``most`` items, each of shape ``item``."""

    item: Shape
    most: int = MOST_ITEMS

    def problem(self, value: object) -> str | None:
        if not isinstance(value, list):
            return f"is {kind(value)}, not a list"
        if len(value) > self.most:
            return f"has {len(value)} items, more than {self.most}"
        return None

    def parts(self, value: object) -> Iterator[tuple[str, object, Shape]]:
        assert isinstance(value, list)
        return ((f"[{n}]", item, self.item) for n, item in enumerate(value))


@dataclass(frozen=True)
class Table(Shape):
    """An object whose keys are free (annotations, Labels): keys of shape ``key``,
    values of shape ``value`` (None: any value)."""

    key: Text = Text("a key", most=1024)
    value: Shape | None = Text()
    most: int = MOST_ITEMS

    def problem(self, value: object) -> str | None:
        if not isinstance(value, dict):
            return f"is {kind(value)}, not an object"
        if len(value) > self.most:
            return f"has {len(value)} keys, more than {self.most}"
        for key in value:
            wrong = self.key.problem(key)
            if wrong is not None:
                return f"has a key that {wrong}" if wrong.startswith(("is ", "has ")) else f"has a key {wrong}"
        return None

    def parts(self, value: object) -> Iterator[tuple[str, object, Shape]]:
        assert isinstance(value, dict)
        if self.value is None:
            return iter(())
        return ((f"[{key!r}]", item, self.value) for key, item in value.items())


@dataclass(frozen=True)
class Fields(Shape):
    """An object with named fields: those in ``fields`` are checked when present (a
    null counts as absent), those in ``required`` must be present; others are free."""

    fields: Mapping[str, Shape]
    required: tuple[str, ...] = ()

    def problem(self, value: object) -> str | None:
        if not isinstance(value, dict):
            return f"is {kind(value)}, not an object"
        missing = [name for name in self.required if value.get(name) is None]
        return f"has no {missing[0]}" if missing else None

    def parts(self, value: object) -> Iterator[tuple[str, object, Shape]]:
        assert isinstance(value, dict)
        return ((f".{name}", value[name], shape) for name, shape in self.fields.items() if value.get(name) is not None)

    def first(self, value: Mapping[str, str]) -> str | None:
        """The first field of a flat record of strings that does not fit, as
        ``NAME 'value' is not ...``: the fast path for database stanzas (a status
        file may hold 200,000), with the Text checks inlined."""
        for name in self.required:
            if name not in value:
                return f"has no {name}"
        for name, shape in self.fields.items():
            got = value.get(name)
            if got is None:
                continue
            if isinstance(shape, Text) and shape._compiled is not None and len(got) <= shape.most:
                if "\0" not in got and shape._compiled.fullmatch(got) is not None:
                    continue
            wrong = shape.problem(got)
            if wrong is not None:
                return f"{name} {wrong}"
        return None


def kind(value: object) -> str:
    """A JSON value's kind, as a message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    for types, name in ((str, "a string"), (int | float, "a number"), (list, "a list"), (dict, "an object")):
        if isinstance(value, types):
            return name
    return type(value).__name__


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def problem(value: object, shape: Shape) -> tuple[str, str] | None:
    """The first place ``value`` does not fit ``shape``: (field path, what is wrong)."""
    stack: list[tuple[str, object, Shape]] = [("", value, shape)]
    while stack:
        path, item, expected = stack.pop()
        wrong = expected.problem(item)
        if wrong is not None:
            return path.lstrip("."), wrong
        parts = [(path + step, part, sub) for step, part, sub in expected.parts(item)]
        stack.extend(reversed(parts))  # in document order
    return None


def check(document: str, value: object, shape: Shape) -> None:
    """Refuse ``value`` (the document named ``document``) with one line unless it fits."""
    found = problem(value, shape)
    if found is not None:
        path, wrong = found
        raise ImageSourceError(f"{document}: {path or 'the document'} {wrong}")


# -- the image's JSON documents -------------------------------------------------------

#: Any JSON object (what a document is before its kind is known).
OBJECT = Fields({})
DIGEST = Text("a sha256 digest", r"sha256:[0-9a-f]{64}", most=80)
MEDIA_TYPE = Text("a media type", r"[A-Za-z0-9][A-Za-z0-9.+_/-]*", most=255)
#: os, architecture, variant: written into the new image's config and index.
PLATFORM_WORD = Text("a platform name (letters, digits, '.', '_', '-')", r"[A-Za-z0-9][A-Za-z0-9._-]*", most=64)
ANNOTATIONS = Table()
PLATFORM = Fields(
    {"os": PLATFORM_WORD, "architecture": PLATFORM_WORD, "variant": PLATFORM_WORD, "os.version": Text(most=256)},
    required=("os", "architecture"),
)
DESCRIPTOR = Fields(
    {"mediaType": MEDIA_TYPE, "digest": DIGEST, "size": Number(), "annotations": ANNOTATIONS, "platform": PLATFORM},
    required=("digest",),
)
INDEX = Fields(
    {"schemaVersion": Number(), "mediaType": MEDIA_TYPE, "manifests": Items(DESCRIPTOR), "annotations": ANNOTATIONS},
    required=("manifests",),
)
#: Layers an image may have (overlay file systems stop at 128; docker at 127).
MOST_LAYERS = 1000
MANIFEST = Fields(
    {
        "schemaVersion": Number(),
        "mediaType": MEDIA_TYPE,
        "config": DESCRIPTOR,
        "layers": Items(DESCRIPTOR, MOST_LAYERS),
        "annotations": ANNOTATIONS,
    },
    required=("config", "layers"),
)
STRINGS = Items(Text())
#: What the image runs and how: the config's ``config`` object.
RUN = Fields(
    {
        "User": Text("USER[:GROUP]", r"([^:\s]+(:[^:\s]+)?)?", most=256),
        "Env": Items(Text("NAME=VALUE", r"[^=]+=.*")),
        "Entrypoint": STRINGS,
        "Cmd": STRINGS,
        "WorkingDir": Text("an absolute path", r"(/.*)?", most=4096),
        "Labels": Table(value=Text()),
        "ExposedPorts": Table(Text("PORT[/PROTOCOL]", r"[0-9]{1,5}(-[0-9]{1,5})?(/(tcp|udp|sctp))?", most=16), None),
        "Volumes": Table(Text("an absolute path", r"/.*", most=4096), None),
        "StopSignal": Text("a signal", r"[A-Za-z0-9+-]{0,16}", most=16),
    }
)
CONFIG = Fields(
    {
        "os": PLATFORM_WORD,
        "architecture": PLATFORM_WORD,
        "variant": PLATFORM_WORD,
        "config": RUN,
        "rootfs": Fields({"diff_ids": Items(DIGEST, MOST_LAYERS)}, required=("diff_ids",)),
    },
    required=("rootfs",),
)
#: A name inside a docker archive: relative, never through ``..``.
ARCHIVE_NAME = Text("a name inside the archive", r"(?!/)(?!(.*/)?\.\.(/|$))[^\n]+", most=4096)
DOCKER_MANIFEST = Items(
    Fields(
        {"Config": ARCHIVE_NAME, "RepoTags": STRINGS, "Layers": Items(ARCHIVE_NAME, MOST_LAYERS)},
        required=("Config", "Layers"),
    ),
    1000,
)


# -- files of the image's root ---------------------------------------------------------

ID = Text("a decimal id below 2^32", r"[0-9]{1,10}", most=10)
ACCOUNT = Text("an account name", r"[^:\s]+", most=256)
#: ``/etc/passwd``: name, password, uid, gid, gecos, home, shell.
PASSWD = ("name", "password", "uid", "gid", "gecos", "home", "shell")
PASSWD_SHAPES: Mapping[str, Shape] = {"name": ACCOUNT, "uid": ID, "gid": ID, "home": Text("a path", r"(/.*)?")}
#: ``/etc/group``: name, password, gid, members.
GROUP = ("name", "password", "gid", "members")
GROUP_SHAPES: Mapping[str, Shape] = {"name": ACCOUNT, "gid": ID}


def colon_records(document: str, data: bytes, names: tuple[str, ...], shapes: Mapping[str, Shape]) -> list[list[str]]:
    """The lines of a colon-separated account file, each with ``len(names)`` fields of
    their shapes. Blank lines, comments and NIS ``+``/``-`` entries are not accounts;
    any other line that does not fit ends the run, naming the line and the field."""
    out = []
    text = data.decode("utf-8", "surrogateescape")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line[0] in "#+-":
            continue
        fields = line.split(":")
        if len(fields) != len(names):
            raise ImageSourceError(f"{document}: line {number} has {len(fields)} fields, not {len(names)}")
        for name, value in zip(names, fields, strict=True):
            shape = shapes.get(name)
            wrong = shape.problem(value) if shape is not None else None
            if wrong is not None:
                raise ImageSourceError(f"{document}: line {number}: {name} {wrong}")
        out.append(fields)
    return out


#: A Debian package name (Policy 5.6.1).
PACKAGE_NAME = r"[a-z0-9][a-z0-9+.-]*"
#: The fields of a dpkg status stanza minify uses.
DPKG_STANZA = Fields(
    {
        "Package": Text("a Debian package name", PACKAGE_NAME, most=256),
        "Version": Text("a Debian version", r"[A-Za-z0-9.+~:_-]+", most=256),
        "Architecture": Text("an architecture name", r"[a-z0-9-]+", most=64),
        "Installed-Size": Text("a size in KiB", r"[0-9]{1,12}", most=12),
        "Source": Text("a source package", PACKAGE_NAME + r"( \([A-Za-z0-9.+~:_-]+\))?", most=512),
    },
    required=("Package",),
)
#: An apk database's ``P:`` line.
APK_NAME = Text("an apk package name", r"[A-Za-z0-9][A-Za-z0-9+._-]*", most=256)
#: The fields of an ``os-release`` line (``KEY=value``).
OS_RELEASE_KEY = Text("an os-release key (A-Z, 0-9, _)", r"[A-Z][A-Z0-9_]*", most=64)
OS_RELEASE_VALUE = Text("an os-release value", r"[^\x00-\x08\x0a-\x1f\x7f]*", most=1024)
