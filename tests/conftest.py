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


@pytest.fixture(scope="session")
def zoo_compilation(
    build_model: Callable[[Builder], tuple[Path, Inputs]], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[object, Path, Inputs]]:
    """`zoo_compilation(name)` → (api.Compilation with every TIR stage as JSON, written archive,
    sample inputs) of a zoo model, compiled once per session (tests of TIR as JSON)."""
    from zoo import ZOO

    from microexport.api import TIR_STAGES, compile_model, import_model
    from microexport.archive.mlf import write_archive

    directory = tmp_path_factory.mktemp("tir-archives")
    cache: dict[str, tuple[object, Path, Inputs]] = {}

    def get(name: str) -> tuple[object, Path, Inputs]:
        if name not in cache:
            _, builder, shapes = next(entry for entry in ZOO if entry[0] == name)
            path, inputs = build_model(builder)
            compilation = compile_model(import_model(path, shapes), name=name,
                                        tir_stages=TIR_STAGES)
            archive = directory / f"{name}.tar"
            write_archive(archive, compilation.files)
            cache[name] = (compilation, archive, inputs)
        compilation, archive, inputs = cache[name]
        return compilation, archive, {k: v.copy() for k, v in inputs.items()}

    return get
