"""minify: ship dynamic Linux binaries in the smallest images that still run.

The public API is imported lazily so that ``minify --help`` does not pay for the
analysis modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "Dependency",
    "How",
    "LoadedObject",
    "LoaderKind",
    "MinifyError",
    "ProgramClosure",
    "ProgramKind",
    "Request",
    "Role",
    "Skipped",
    "Step",
    "Target",
    "__version__",
    "analyze",
    "write_image",
]

if TYPE_CHECKING:
    from minify.closure import Analysis, Dependency, LoadedObject, ProgramClosure, Skipped, analyze
    from minify.errors import MinifyError
    from minify.loader.model import How, LoaderKind, ProgramKind, Request, Role, Step
    from minify.oci import write_image
    from minify.target import Target

_WHERE = {
    "Analysis": "minify.closure",
    "Dependency": "minify.closure",
    "LoadedObject": "minify.closure",
    "ProgramClosure": "minify.closure",
    "Skipped": "minify.closure",
    "analyze": "minify.closure",
    "MinifyError": "minify.errors",
    "How": "minify.loader.model",
    "LoaderKind": "minify.loader.model",
    "ProgramKind": "minify.loader.model",
    "Request": "minify.loader.model",
    "Role": "minify.loader.model",
    "Step": "minify.loader.model",
    "Target": "minify.target",
    "write_image": "minify.oci",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'minify' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
