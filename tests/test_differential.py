"""`test --reference tvm`: our C against TVM's own LLVM build of the same imported Relax module.

It agrees on zoo models of every format, and it fails when the outputs our C produces are wrong:
the harness template is overridden (`--templates`, a real user path) so that the built program
writes a perturbed first output, and the comparison has to catch exactly that output.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import pytest
from support import require_program
from zoo import ZOO, Builder, Inputs

import microexport
from microexport import errors
from microexport.cli import main

BuildModel = Callable[[Builder], tuple[Path, Inputs]]
PERTURBATION = 0.5


def _zoo(name: str, build_model: BuildModel) -> tuple[Path, dict | None]:
    _, builder, shapes = next(entry for entry in ZOO if entry[0] == name)
    path, _ = build_model(builder)
    return path, shapes


@pytest.mark.parametrize("name", ["cnn_onnx", "sine_float", "torch_cnn_pt2"])
def test_reference_tvm_agrees_on_zoo_models(name: str, build_model: BuildModel) -> None:
    require_program("gcc", "gcc")
    path, shapes = _zoo(name, build_model)
    report = microexport.test(path, reference="tvm", input_shapes=shapes)
    assert report.reference == "tvm"
    assert report.passed, report.summary()


def _perturbing_harness(directory: Path) -> Path:
    """A host harness template that adds PERTURBATION to the first element of the first
    output after the model ran (as a wrong kernel would)."""
    text = (files("microexport.templates") / "harness" / "host_main.c.j2").read_text()
    anchor = "  if (status != 0) {\n"
    index = text.rindex(anchor)
    perturb = (f"  outputs.{{{{ outputs[0].c_name }}}}[0] += {PERTURBATION}f;"
               "  /* injected by the test */\n")
    directory.mkdir()
    (directory / "host_main.c.j2").write_text(text[:index] + perturb + text[index:])
    return directory


def test_reference_tvm_catches_a_wrong_output(build_model: BuildModel, tmp_path: Path) -> None:
    require_program("gcc", "gcc")
    path, _ = _zoo("cnn_onnx", build_model)
    templates = _perturbing_harness(tmp_path / "tpl")
    report = microexport.test(path, reference="tvm", templates=templates)
    probs, pooled = report.outputs
    assert not report.passed
    assert not probs.passed and probs.max_abs_error == pytest.approx(PERTURBATION, rel=1e-6)
    assert pooled.passed and pooled.max_abs_error == 0
    assert "FAIL: " in report.summary() and "vs tvm" in report.summary()
    assert "the difference is in microexport's pipeline" in report.summary()


def test_cli_reference_tvm_exit_status(build_model: BuildModel, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    require_program("gcc", "gcc")
    path, _ = _zoo("cnn_onnx", build_model)
    assert main(["test", str(path), "--reference", "tvm"]) == 0
    assert "PASS: " in capsys.readouterr().out
    templates = _perturbing_harness(tmp_path / "tpl")
    assert main(["test", str(path), "--reference", "tvm", "--templates", str(templates)]) == 1
    assert "probs: max abs error 0.5 FAIL" in capsys.readouterr().out


def test_unknown_or_impossible_reference_is_one_line(build_model: BuildModel,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _zoo("mlp_onnx", build_model)
    with pytest.raises(errors.Error, match="unknown reference 'llvm': use one of tvm"):
        microexport.test(path, reference="llvm")
    status = main(["test", str(path), "--reference", "litert"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert "runtime 'litert' cannot run" in err[0] and "onnxruntime" in err[0]
