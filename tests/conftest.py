"""Shared fixtures: zoo models are built once per test session into a temporary directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from zoo import Builder, Inputs


@pytest.fixture(scope="session")
def build_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[Builder], tuple[Path, Inputs]]:
    """`build_model(zoo.mlp_onnx)` → (path, sample inputs), built once per session."""
    directory = tmp_path_factory.mktemp("zoo")
    cache: dict[str, tuple[Path, Inputs]] = {}

    def build(builder: Builder) -> tuple[Path, Inputs]:
        if builder.__name__ not in cache:
            cache[builder.__name__] = builder(directory)
        path, inputs = cache[builder.__name__]
        return path, {name: array.copy() for name, array in inputs.items()}

    return build
