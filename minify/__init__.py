"""minify: ship dynamic Linux binaries in the smallest images that still run.

The public API is imported lazily so that ``minify --help`` does not pay for the
analysis modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from minify.version import __version__

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
    "RootfsOptions",
    "Skipped",
    "Step",
    "Target",
    "Transport",
    "__version__",
    "analyze",
    "parse_dest",
    "write_image",
]

if TYPE_CHECKING:
    from minify.analysis.closure import Analysis, Dependency, LoadedObject, ProgramClosure, Skipped, analyze
    from minify.analysis.target import Target
    from minify.build.image import write_image
    from minify.build.options import RootfsOptions
    from minify.errors import MinifyError
    from minify.loader.model import How, LoaderKind, ProgramKind, Request, Role, Step
    from minify.write.oci import Transport, parse_dest

_WHERE = {
    "Analysis": "minify.analysis.closure",
    "Dependency": "minify.analysis.closure",
    "LoadedObject": "minify.analysis.closure",
    "ProgramClosure": "minify.analysis.closure",
    "Skipped": "minify.analysis.closure",
    "analyze": "minify.analysis.closure",
    "MinifyError": "minify.errors",
    "How": "minify.loader.model",
    "LoaderKind": "minify.loader.model",
    "ProgramKind": "minify.loader.model",
    "Request": "minify.loader.model",
    "Role": "minify.loader.model",
    "Step": "minify.loader.model",
    "Target": "minify.analysis.target",
    "write_image": "minify.build.image",
    "RootfsOptions": "minify.build.options",
    "Transport": "minify.write.oci",
    "parse_dest": "minify.write.oci",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'minify' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
