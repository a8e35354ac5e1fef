"""The command line: happy path, and every kind of bad input gives one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from zoo import ZOO, Builder, Inputs, cnn_onnx, dynamic_onnx, mlp_onnx, unsupported_onnx

from microexport.cli import main

BuildModel = Callable[[Builder], tuple[Path, Inputs]]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_user_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("microexport: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_compile_run_and_test(build_model: BuildModel, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    model, inputs = build_model(mlp_onnx)
    archive = tmp_path / "build" / "mlp.tar"
    status, out, _ = run_cli(["compile", model, "-o", archive, "--name", "mlp"], capsys)
    assert status == 0 and archive.is_file() and "workspace" in out
    (name, array), = inputs.items()
    np.save(tmp_path / "x.npy", array)
    status, out, _ = run_cli(["run", archive, "--board", "host", "--input", tmp_path / "x.npy",
                              "-o", tmp_path / "out"], capsys)
    assert status == 0
    written = sorted((tmp_path / "out").glob("*.npy"))
    assert written and all(np.load(p).dtype == np.float32 for p in written)
    status, out, _ = run_cli(["test", model, "--board", "host"], capsys)
    assert status == 0
    assert "max abs error" in out and out.strip().endswith("vs onnxruntime") and "PASS" in out


def test_console_script_help() -> None:
    result = subprocess.run([sys.executable, "-m", "microexport.cli", "--help"],
                            capture_output=True, text=True, check=True)
    for command in ("compile", "run", "test"):
        assert command in result.stdout


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(["compile", tmp_path / "nope.onnx", "-o", tmp_path / "m.tar"], capsys)
    assert_user_error(status, err, "nope.onnx")
    assert not list(tmp_path.iterdir())


def test_corrupt_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00garbage" * 10)
    status, _, err = run_cli(["compile", bad, "-o", tmp_path / "m.tar"], capsys)
    assert_user_error(status, err, "bad.tflite")
    assert not (tmp_path / "m.tar").exists()


def test_unknown_extension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.h5"
    model.write_bytes(b"x")
    status, _, err = run_cli(["compile", model, "-o", tmp_path / "m.tar"], capsys)
    assert_user_error(status, err, ".h5", ".onnx")


def test_dynamic_shape_then_fixed(build_model: BuildModel, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = build_model(dynamic_onnx)
    status, _, err = run_cli(["compile", model, "-o", tmp_path / "m.tar"], capsys)
    assert_user_error(status, err, "--input-shape")
    assert not (tmp_path / "m.tar").exists()
    status, _, _ = run_cli(["compile", model, "-o", tmp_path / "m.tar",
                            "--input-shape", "x:1x8"], capsys)
    assert status == 0


def test_unsupported_operator(build_model: BuildModel, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = build_model(unsupported_onnx)
    status, _, err = run_cli(["compile", model, "-o", tmp_path / "m.tar"], capsys)
    assert_user_error(status, err, "LpNormalization")
    assert not (tmp_path / "m.tar").exists()


def test_non_c_target(build_model: BuildModel, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = build_model(mlp_onnx)
    status, _, err = run_cli(["compile", model, "-o", tmp_path / "m.tar", "--target", "llvm"],
                             capsys)
    assert_user_error(status, err, "'llvm'", "--target c")


def test_unwritable_output(build_model: BuildModel, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = build_model(mlp_onnx)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    status, _, err = run_cli(["compile", model, "-o", blocker / "m.tar"], capsys)
    assert_user_error(status, err, "m.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((1, 3, 16, 15), np.float32), "shape"),
        (np.zeros((1, 3, 16, 16), np.float64), "got shape (1, 3, 16, 16) float64"),
    ],
)
def test_wrong_input_npy(array: np.ndarray, fragment: str, build_model: BuildModel,
                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = build_model(cnn_onnx)
    archive = tmp_path / "cnn.tar"
    assert run_cli(["compile", model, "-o", archive], capsys)[0] == 0
    np.save(tmp_path / "x.npy", array)
    status, _, err = run_cli(["run", archive, "--input", tmp_path / "x.npy", "-o",
                              tmp_path / "out"], capsys)
    assert_user_error(status, err, fragment)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_unknown_board(build_model: BuildModel, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = build_model(mlp_onnx)
    status, _, err = run_cli(["test", model, "--board", "nope"], capsys)
    assert_user_error(status, err, "unknown board 'nope'", "host")


def test_bad_input_shape_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["compile", "m.onnx", "-o", str(tmp_path / "m.tar"), "--input-shape", "x:1xq"])
    assert exc.value.code == 2
    assert "bad --input-shape" in capsys.readouterr().err


def test_zoo_names_are_unique() -> None:
    names = [name for name, _, _ in ZOO]
    assert len(names) == len(set(names))
