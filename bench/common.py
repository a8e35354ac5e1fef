"""Shared helpers of the benchmarks: the test zoo's models, built into a temporary directory."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import zoo  # noqa: E402

TFLITE_MODELS = ("int8_tflite", "sine_float", "float16_tflite")


def build(name: str, directory: Path) -> tuple[Path, dict[str, tuple[int, ...]] | None]:
    """Build zoo model `name` into `directory`; returns its path and input shapes to fix."""
    _, builder, shapes = next(entry for entry in zoo.ZOO if entry[0] == name)
    path, _ = builder(directory)
    return path, shapes


def zoo_names() -> list[str]:
    """Names of every zoo model."""
    return [name for name, _, _ in zoo.ZOO]


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
