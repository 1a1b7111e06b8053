"""The commands a shell script runs, read statically (issue 20).

A ``#!/bin/sh`` entrypoint that calls curl, jq and date needs them in the image, and
nothing in its bytes is ELF for the closure to follow. This reads the script the way a
POSIX shell splits it into simple commands, closely enough to find the words in command
position: after a separator (newline, ``;``, ``&``, ``|``, ``&&``, ``||``, ``(``, a
command substitution) or a reserved word (``then``, ``do``, ``!``, ...), past variable
assignments and redirections, through ``exec``/``command``/``env``/``nohup``. Builtins,
the script's own functions and ``case`` patterns are not commands; a word built from a
variable cannot be resolved statically and is reported instead. Files it sources with
``.`` or ``source`` are read too. It reads, never runs, and every loop is bounded.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

#: Bytes of one script read; words kept per script.
MAX_SCRIPT = 256 << 10
MAX_WORDS = 200_000
#: Command substitutions inside command substitutions, followed this deep.
MAX_DEPTH = 4

#: Builtins of dash and bash (and the POSIX special builtins): never looked up on PATH.
BUILTINS = frozenset(
    """. : [ alias bg bind break builtin caller cd command compgen complete continue declare dirs
    disown echo enable eval exec exit export false fc fg getopts hash help history jobs kill let
    local logout mapfile popd printf pushd pwd read readarray readonly return set shift shopt
    source suspend test times trap true type typeset ulimit umask unalias unset wait""".split()
)
RESERVED = frozenset(
    "if then else elif fi do done while until for in case esac { } ! function select time [[ ]] ((".split()
)
#: After these a command follows (a word in command position).
LEADS = frozenset("if then else elif do while until ! { time".split())
#: Prefixes that run the next word as the command (their options skipped).
WRAPPERS = frozenset("exec command nohup env builtin nice setsid stdbuf timeout xargs".split())
_SEPARATORS = frozenset({"\n", ";", "&", "|", "&&", "||", "(", ")", ";;", "`", "$(", "|&"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
_REDIRECT = re.compile(r"[0-9]*&?(>>|>&|<&|<>|>\||>|<<-|<<<|<<|<)(.*)")
_REDIRECT_OP = re.compile(r"&?(>>|>&|<&|<>|>\||<<-|<<<|<<|>|<)[0-9-]*")
_OPERATORS = ("&&", "||", ";;", "|&", "$(", ";", "&", "|", "(", ")", "`", "\n")


@dataclass
class Commands:
    """What a script runs: command names (as written), files it sources, and words in
    command position that are built at run time (``$CMD``)."""

    names: list[str] = field(default_factory=list)
    sourced: list[str] = field(default_factory=list)
    dynamic: list[str] = field(default_factory=list)
    functions: set[str] = field(default_factory=set)
    paths: list[str] = field(default_factory=list)  # absolute paths its words name (``/app/data.json``)


def commands(text: str, depth: int = 0) -> Commands:
    """The commands of a shell script's text, in order of first appearance, with
    those of its command substitutions (``$(date)``, also inside quotes)."""
    out = Commands()
    words = _tokens(text[:MAX_SCRIPT])
    _functions(words, out)
    _walk(words, out)
    out.paths = _paths(words)
    if depth < MAX_DEPTH:
        for inner in _substitutions(words):
            found = commands(inner, depth + 1)
            out.names += found.names
            out.sourced += found.sourced
            out.dynamic += found.dynamic
            out.functions |= found.functions
            out.paths += found.paths
    out.names = [n for n in dict.fromkeys(out.names) if n not in out.functions]
    out.sourced = list(dict.fromkeys(out.sourced))
    out.dynamic = list(dict.fromkeys(out.dynamic))
    out.paths = [p for p in dict.fromkeys(out.paths) if p not in out.names]
    return out


def _paths(words: list[str]) -> list[str]:
    """The absolute paths the words spell out as the shell sees them: an argument
    (``jq . /app/data.json``), an option's value (``--config=/etc/app.conf``), a
    redirection's file (``< /app/in.txt``)."""
    out = []
    for word in words:
        redirect = _REDIRECT.fullmatch(word)
        text = _unquote(redirect.group(2) if redirect is not None else word)
        if text is None:
            continue
        text = text.rpartition("=")[2] if not text.startswith("/") else text
        if text.startswith("/") and "\0" not in text and len(text) <= 4096:
            out.append(posixpath.normpath(text))
    return out


def _substitutions(words: list[str]) -> list[str]:
    """The text of each ``$(...)`` and backquoted command inside a word (a quoted
    argument or an assignment); unquoted ones were split into words already."""
    out: list[str] = []
    for word in words:
        start = word.find("$(")
        while start >= 0 and len(out) < MAX_WORDS:
            if word.startswith("$((", start):  # arithmetic
                start = word.find("$(", start + 3)
                continue
            depth, end = 0, start + 1
            for end in range(start + 1, len(word)):
                depth += {"(": 1, ")": -1}.get(word[end], 0)
                if depth == 0:
                    break
            out.append(word[start + 2 : end])
            start = word.find("$(", end)
        parts = word.split("`")
        out.extend(parts[1:-1:2])
    return out


def _functions(words: list[str], out: Commands) -> None:
    """``name() {`` and ``function name``: calls of these are not commands on PATH."""
    for i, word in enumerate(words):
        if word == "(" and i > 0 and i + 1 < len(words) and words[i + 1] == ")":
            out.functions.add(words[i - 1])
        elif word == "function" and i + 1 < len(words):
            out.functions.add(words[i + 1].removesuffix("()"))
        elif word.endswith("()") and len(word) > 2:
            out.functions.add(word[:-2])


@dataclass
class _Case:
    """Where the walk is in ``case`` statements: their depth, whether the ``in`` of the
    last ``case`` is still to come, and whether the words now are patterns (after that
    ``in`` or a ``;;``, up to ``)``), which are not commands."""

    depth: int = 0
    awaiting_in: bool = False
    patterns: bool = False

    def consumes(self, word: str) -> bool | None:
        """None when ``word`` is not the case statement's; else True when a command
        follows it (the ``)`` that ends a pattern), False when none does."""
        if word == "case":
            self.depth, self.awaiting_in = self.depth + 1, True
            return False
        if word == "esac":
            self.depth, self.patterns = max(0, self.depth - 1), False
            return False
        if self.awaiting_in:
            self.awaiting_in = word != "in"
            self.patterns = word == "in"
            return False
        if self.depth and (self.patterns or word == ";;"):
            ends = self.patterns and word == ")"
            self.patterns = not ends
            return ends
        return None


def _walk(words: list[str], out: Commands) -> None:
    at_command = True
    case = _Case()
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        taken = case.consumes(word)
        if taken is not None:
            at_command = taken
            continue
        if word in _SEPARATORS:
            at_command = True
            continue
        if not at_command:
            continue
        start = i - 1
        end = _command_at(words, start, out)
        if end > start:  # a command, or a word that leads to one (then, do, !)
            i, at_command = end, words[end - 1] in LEADS
        else:  # a reserved word that does not (for, [[, fi): what follows is not a command
            at_command = False


def _command_at(words: list[str], i: int, out: Commands) -> int:
    """Read the simple command that starts at ``words[i]``; the index after its name."""
    while i < len(words):
        word = words[i]
        if word in LEADS:
            return i + 1
        if word in RESERVED or word in _SEPARATORS:
            return i  # for, in, fi, done, ...: no command here
        redirect = _REDIRECT.fullmatch(word)
        if redirect is not None:
            i += 1 if redirect.group(2) else 2  # ``>file`` is one word, ``> file`` two
            continue
        if _ASSIGNMENT.match(word):
            i += 1
            continue
        return _name(words, i, out)
    return i


def _name(words: list[str], i: int, out: Commands) -> int:
    """Record the command named at ``words[i]`` (through wrappers such as ``exec`` and
    ``env``, whose options and assignments are skipped); the index after it."""
    while i < len(words) and words[i] not in _SEPARATORS:
        word = _unquote(words[i])
        if word is None:
            out.dynamic.append(words[i])
            return i + 1
        if word in (".", "source") and i + 1 < len(words):
            target = _unquote(words[i + 1])
            (out.dynamic if target is None else out.sourced).append(target or words[i + 1])
            return i + 2
        if word not in WRAPPERS:
            if word not in BUILTINS and word not in RESERVED:
                out.names.append(word)
            return i + 1
        if word not in BUILTINS:
            out.names.append(word)
        i += 1
        while i < len(words) and (words[i].startswith("-") or "=" in words[i] or words[i].isdigit()):
            i += 1
    return i


def _unquote(word: str) -> str | None:
    """The word as the shell would see it, or None when it depends on the run
    (a parameter expansion, a command substitution, a glob)."""
    if word in BUILTINS or word in RESERVED:
        return word
    if "$" in word or "`" in word or any(c in word for c in "*?["):
        return None
    return word.replace('"', "").replace("'", "").replace("\\", "")


def _tokens(text: str) -> list[str]:
    """Words and operators; comments and here-document bodies dropped, line
    continuations joined, quotes kept inside their words."""
    words: list[str] = []
    heredocs: list[str] = []
    lines = text.replace("\\\n", "").split("\n")
    index = 0
    while index < len(lines) and len(words) < MAX_WORDS:
        line = lines[index]
        index += 1
        words.extend(_line_tokens(line, heredocs))
        words.append("\n")
        while heredocs and index < len(lines):  # skip each here-document's body
            end = heredocs[0]
            if lines[index].strip("\t") == end:
                heredocs.pop(0)
            index += 1
    return words


def _line_tokens(line: str, heredocs: list[str]) -> list[str]:
    out: list[str] = []
    word = ""
    i = 0
    while i < len(line):
        c = line[i]
        if c == "#" and not word:
            break
        if c in " \t":
            out, word = _flush(out, word, heredocs), ""
            i += 1
            continue
        piece = _piece(line, i)
        if piece is not None:
            word += piece
            i += len(piece)
            continue
        op = next((o for o in _OPERATORS if line.startswith(o, i)), None)
        if op is not None:
            out, word = _flush(out, word, heredocs), ""
            out.append(op)
            i += len(op)
            continue
        word += c
        i += 1
    return _flush(out, word, heredocs)


def _piece(line: str, i: int) -> str | None:
    """The text at ``line[i]`` that belongs to the current word whatever it holds: a
    quoted span, an escaped character, a redirection (``2>&1``, ``&>f``), an
    arithmetic expansion; None for anything else."""
    c = line[i]
    if c in "'\"":
        end = i + 1
        while end < len(line) and line[end] != c:
            end += 2 if c == '"' and line[end] == "\\" else 1
        return line[i : end + 1]
    if c == "\\":
        return line[i : i + 2]
    if c in "<>" or line.startswith("&>", i):
        match = _REDIRECT_OP.match(line, i)
        return match.group() if match else c
    if line.startswith("$((", i):
        end = line.find("))", i)
        return line[i:] if end < 0 else line[i : end + 2]
    return None


def _flush(out: list[str], word: str, heredocs: list[str]) -> list[str]:
    """Add ``word``; a ``<<END`` redirection registers END for the next lines."""
    if not word:
        return out
    if (out and out[-1] in ("<<", "<<-")) or (word.startswith("<<") and not word.startswith("<<<")):
        tag = word.lstrip("<-") if word.startswith("<<") else word
        if tag:
            heredocs.append(tag.replace("'", "").replace('"', "").replace("\\", ""))
    out.append(word)
    return out
