"""The Dockerfile writer: a FROM scratch build context for an ``ImagePlan``."""

from __future__ import annotations

import json

from minify.image import ImagePlan


def render(plan: ImagePlan) -> str:
    """A Dockerfile that copies ``rootfs/`` into an empty image; deterministic text."""
    config = plan.config
    lines = [
        "# Written by minify: the exact loader closure of its programs, nothing else.",
        "# minify.lock.json lists every file and why it is here.",
        "FROM scratch",
        "COPY rootfs/ /",
    ]
    lines.extend(f"ENV {key}={json.dumps(value)}" for key, value in config.env)
    lines.extend(f"LABEL {key}={json.dumps(value)}" for key, value in config.labels)
    if config.user:
        lines.append(f"USER {config.user}")
    if config.entrypoint:
        lines.append(f"ENTRYPOINT {json.dumps(list(config.entrypoint))}")
    if config.cmd:
        lines.append(f"CMD {json.dumps(list(config.cmd))}")
    return "\n".join(lines) + "\n"
