"""Platforms that build and run compiled models (see `base.Platform`).

`PLATFORMS` maps each platform name to its class, sorted by name. It lives here rather than in
`base.py` so that `base` does not import the platforms that subclass it.
"""

from __future__ import annotations

from pathlib import Path

from microexport.deploy.boards import Board
from microexport.deploy.platforms.baremetal import BaremetalPlatform
from microexport.deploy.platforms.base import (
    Build,
    Capabilities,
    DoesNotFit,
    Invocation,
    Platform,
    Project,
    RunOptions,
    RunResult,
    RunStats,
    Unsupported,
)
from microexport.deploy.platforms.host import HostPlatform
from microexport.deploy.platforms.zephyr import ZephyrPlatform
from microexport.errors import Error

PLATFORMS: dict[str, type[Platform]] = dict(
    sorted({cls.name: cls for cls in (BaremetalPlatform, HostPlatform, ZephyrPlatform)}.items())
)

__all__ = [
    "PLATFORMS",
    "Build",
    "Capabilities",
    "DoesNotFit",
    "Invocation",
    "Platform",
    "Project",
    "RunOptions",
    "RunResult",
    "RunStats",
    "Unsupported",
    "get_platform",
]


def get_platform(
    board: Board, name: str | None = None, *, templates: Path | None = None
) -> Platform:
    """The platform `name` (default: the board's first) for `board`; Error if unavailable."""
    chosen = name or board.default_platform
    if chosen not in board.platforms:
        raise Error(f"board '{board.name}' does not support platform '{chosen}': "
                    f"it supports {', '.join(board.platforms)}")
    if chosen not in PLATFORMS:
        raise Error(f"platform '{chosen}' of board '{board.name}' is not implemented: "
                    f"available are {', '.join(PLATFORMS)}")
    return PLATFORMS[chosen](board, templates=templates)
