"""One error tree for everything minify reports to a user.

    MinifyError                  exit 2 unless said otherwise
    ├── BadInput                 a file that cannot be read as the loader would
    │   ├── NotRegularFile       directory, FIFO, device, socket
    │   ├── FileTooLarge         larger than any real ELF we accept
    │   ├── NotElf               no ELF magic (text, random bytes, ld scripts)
    │   └── CorruptElf           ELF magic, but headers or dynamic section broken
    ├── PathError                symlink loop, escape attempt, missing path
    │   └── RootChanged          the root changed under minify during the run
    ├── PlanError                the inputs cannot be laid out as one image
    │   └── IncompleteClosure    a library or version is missing (exit 1)
    ├── PresetUnavailable        the root lacks what a preset needs (exit 1)
    ├── DockerfileError          a value a Dockerfile cannot express exactly
    ├── TraceFailed              the traced command failed, timed out, no strace
    ├── OutputError              OUT exists and is not ours, cannot write
    ├── ImageSourceError         `--from`: an image that cannot be read, or is refused
    │   └── HostileLayer         a layer that would write outside its root, or a tar bomb
    ├── VerificationFailed       the finished rootfs does not resolve (exit 1)
    ├── ProofFailed              `--test`: the job does not run in the image as at the source (exit 1)
    └── OutOfDate                `--check`: OUT differs from what would be made (exit 1)

Every error a user can see is one of these; the modules that raise them import them
from here.

The CLI turns each into one line on stderr and the exit code it carries.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # analysis worked, but something is missing or out of date
EXIT_BAD_INPUT = 2  # the input itself cannot be analysed
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a command ended by SIGINT


class Interrupted(BaseException):
    """Ctrl-C. Raised by minify's own SIGINT handler instead of KeyboardInterrupt so
    that click does not turn it into "Aborted!": every ``with`` and ``finally`` on the
    way out runs (temporary and private folders removed, a traced run killed) and the
    command ends with one line and exit 130."""


class MinifyError(Exception):
    """Base of all errors minify reports as one line."""

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # rebuilt from the finished message, whatever the subclass's own arguments
        # (an exception that cannot be unpickled hangs a process pool)
        return (_rebuild, (type(self), self.message, self.__dict__))


class BadInput(MinifyError):
    """A file that the loader (and so minify) cannot use."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class NotRegularFile(BadInput):
    pass


class FileTooLarge(BadInput):
    pass


class NotElf(BadInput):
    pass


class CorruptElf(BadInput):
    pass


class PathError(MinifyError):
    """A path that cannot be resolved inside the root."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class RootChanged(PathError):
    """A path of the root is not what it was a moment ago: a symlink appeared on the
    way, or another file took its place. Nothing outside the root was read."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, f"changed during the run ({problem}); nothing outside the root was read")


class PlanError(MinifyError):
    """The inputs cannot be laid out as one image (conflicts, bad inputs)."""


class IncompleteClosure(PlanError):
    """A library is missing or a version is not met: the image would not run."""

    exit_code = EXIT_INCOMPLETE


class PresetUnavailable(MinifyError):
    """The root does not have what a preset needs."""

    exit_code = EXIT_INCOMPLETE


class DockerfileError(MinifyError):
    """A value that a Dockerfile cannot express exactly."""


class TraceFailed(MinifyError):
    """The traced command failed, timed out, or strace is missing."""


class OutputError(MinifyError):
    """The output folder cannot be written as asked."""


class ImageSourceError(MinifyError):
    """``--from``: the image cannot be read (a missing blob, a digest that does not
    match, no entrypoint), or is refused."""


class HostileLayer(ImageSourceError):
    """A layer that names a path outside its root (absolute, ``..``, a link leaving
    it, a hard link to a name not seen) or unpacks past ``--max-unpacked-size``."""


class VerificationFailed(MinifyError):
    """The finished root filesystem does not load its programs."""

    exit_code = EXIT_INCOMPLETE

    #: Problems named in the one line; the rest are counted (a JDK's GUI libraries
    #: added whole can miss hundreds of symbols).
    SHOWN = 12

    def __init__(self, problems: tuple[str, ...]) -> None:
        shown = "; ".join(problems[: self.SHOWN])
        more = f"; and {len(problems) - self.SHOWN} more" if len(problems) > self.SHOWN else ""
        super().__init__(f"verification failed: {shown}{more}")
        self.problems = problems


class ProofFailed(MinifyError):
    """``--test``: the command did not do in the image what it does at the source;
    ``report`` says what the run in the image looked for and did not find."""

    exit_code = EXIT_INCOMPLETE

    def __init__(self, message: str, report: tuple[str, ...]) -> None:
        super().__init__(message)
        self.report = report


class OutOfDate(MinifyError):
    """`--check`: the output folder differs from what would be produced."""

    exit_code = EXIT_INCOMPLETE

    def __init__(self, differences: tuple[str, ...]) -> None:
        super().__init__(f"out of date: {len(differences)} difference(s)")
        self.differences = differences


def _rebuild(cls: type[MinifyError], message: str, state: dict[str, object]) -> MinifyError:
    error = MinifyError.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error
