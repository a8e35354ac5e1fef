"""Helpers shared by tests: tool requirements that skip locally but fail under CI."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    """True when running under CI (`CI=true`), where nothing may be skipped for a missing tool."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_program(program: str, package: str) -> str:
    """Path of `program`; skip the test locally if missing, fail it under CI."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} not installed (apt-get install {package})"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_module(module: str, extra: str) -> object:
    """Import `module`; skip locally if missing, fail under CI."""
    try:
        return __import__(module)
    except ImportError:
        message = f"python module {module} not installed (pip install microexport[{extra}])"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


def require_board(board: str) -> None:
    """What running on `board` needs: nothing more for the host, the Arm toolchain and QEMU
    for an emulated board (skip locally if missing, fail under CI)."""
    if board != "host":
        require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
        require_program("qemu-system-arm", "qemu-system-arm")
