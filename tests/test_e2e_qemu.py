"""End to end on Cortex-M in QEMU: every zoo model, compiled once per module, runs bare metal on
mps2_an385 (Cortex-M3, soft float) and mps2_an386 (Cortex-M4F, hard float) and agrees with its
reference runtime as on the host; `microexport test --board` works the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support import require_program
from zoo import ZOO, Builder, Inputs, mlp_onnx

import microexport
from microexport.cli import main
from microexport.deploy.boards import load_board
from microexport.deploy.compare import compare
from microexport.deploy.platforms import DoesNotFit, get_platform
from microexport.deploy.reference import run_reference

ZOO_IDS = [name for name, _, _ in ZOO]
# The zoo runs on every emulated core: Cortex-M3, M4F, M7 and M55.
ZOO_BOARDS = ["mps2_an385", "mps2_an386", "mps2_an500", "mps3_an547"]
BOARDS = ["mps2_an385", "mps2_an386"]
BuildModel = Callable[[Builder], tuple[Path, Inputs]]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory, build_model: BuildModel) -> Callable:
    """`compiled(name)` → (archive, inputs, reference name, expected outputs), once per module."""
    cache: dict[str, tuple] = {}
    out = tmp_path_factory.mktemp("qemu-archives")

    def get(name: str) -> tuple:
        if name not in cache:
            _, builder, shapes = next(entry for entry in ZOO if entry[0] == name)
            path, inputs = build_model(builder)
            result = microexport.compile(path, out / f"{name}.tar", name=name,
                                         input_shapes=shapes)
            reference, expected = run_reference(path, inputs)
            cache[name] = (result.archive, inputs, reference, expected)
        return cache[name]

    return get


@pytest.fixture
def qemu() -> None:
    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")


@pytest.mark.parametrize("board", ZOO_BOARDS)
@pytest.mark.parametrize("name", ZOO_IDS)
def test_zoo_on_cortex_m(name: str, board: str, compiled: Callable, qemu: None,
                         tmp_path: Path) -> None:
    archive, inputs, reference, expected = compiled(name)
    platform = get_platform(load_board(board))
    try:
        result = platform.execute_archive(archive, inputs, tmp_path)
    except DoesNotFit as err:  # not a failure of microexport: say which memory and by how much
        pytest.skip(f"{name} on {board}: {err}")
    for (out_name, got), want in zip(result.outputs.items(), expected, strict=True):
        comparison = compare(out_name, got, want)
        assert comparison.passed, (f"{name}/{out_name} on {board} vs {reference}: "
                                   f"max abs err {comparison.max_abs_error}")
    assert result.stats.instructions is not None and result.stats.instructions > 0
    assert (tmp_path / "size.json").is_file()


@pytest.mark.parametrize("board", BOARDS)
def test_cli_test_command_on_qemu(board: str, build_model: BuildModel, qemu: None,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = build_model(mlp_onnx)
    status = main(["test", str(model), "--board", board, "--name", "mlp"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.strip().endswith(f"PASS: {model} on {board} vs onnxruntime")


@pytest.mark.parametrize("io_in_workspace", [False, True])
def test_external_pools_with_sections_on_cortex_m(io_in_workspace: bool,
                                                  build_model: BuildModel) -> None:
    """--workspace external with two pools (one in a linker section) runs bare metal."""
    from microexport.model import PoolSpec

    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")
    path, _ = build_model(mlp_onnx)
    report = microexport.test(
        path, board="mps2_an385", name="mlp", workspace="external",
        io_in_workspace=io_in_workspace,
        pools=(PoolSpec("fast", 256, ".bss.fast"), PoolSpec("slow", None)),
    )
    assert report.passed, report.summary()
