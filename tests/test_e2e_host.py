"""End to end on the host: every zoo model compiles, its C is TVM-free and builds with -Werror for
the host and for Cortex-M3, and `test` agrees with the model's reference runtime."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from support import require_program
from zoo import ZOO, Builder, Inputs

import microexport
from microexport.deploy.compare import compare
from microexport.deploy.reference import run_reference

ZOO_IDS = [name for name, _, _ in ZOO]
BuildModel = Callable[[Builder], tuple[Path, Inputs]]

WARNING_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-c"]
TARGETS = {
    "gcc": ("gcc", "gcc", []),
    "cortex-m3": ("arm-none-eabi-gcc", "gcc-arm-none-eabi", ["-mcpu=cortex-m3", "-mthumb"]),
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory, build_model: BuildModel) -> Callable:
    """`compiled(name)` → (archive, model path, sample inputs), compiled once per module."""
    cache: dict[str, tuple[Path, Path, Inputs]] = {}
    out = tmp_path_factory.mktemp("archives")

    def get(name: str) -> tuple[Path, Path, Inputs]:
        if name not in cache:
            _, builder, shapes = next(entry for entry in ZOO if entry[0] == name)
            path, inputs = build_model(builder)
            result = microexport.compile(path, out / f"{name}.tar", name=name,
                                         input_shapes=shapes)
            cache[name] = (result.archive, path, inputs)
        return cache[name]

    return get


def extract(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


@pytest.mark.parametrize("name", ZOO_IDS)
def test_outputs_match_reference_runtime(name: str, compiled: Callable) -> None:
    archive, model, inputs = compiled(name)
    runtime, expected = run_reference(model, inputs)
    got = microexport.run(archive, inputs)
    metadata_outputs = list(got)
    assert len(metadata_outputs) == len(expected)
    for out_name, want in zip(metadata_outputs, expected, strict=True):
        result = compare(out_name, got[out_name], want)
        assert result.passed, f"{name}/{out_name} vs {runtime}: max abs err {result.max_abs_error}"


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name", ZOO_IDS)
def test_c_is_tvm_free_and_warning_free(
    name: str, target: str, compiled: Callable, tmp_path: Path
) -> None:
    program, package, flags = TARGETS[target]
    compiler = require_program(program, package)
    root = extract(compiled(name)[0], tmp_path)
    sources = sorted((root / "codegen/host/src").glob("*.c"))
    headers = sorted((root / "codegen/host/include").glob("*.h"))
    assert sources and headers
    for path in sources + headers:
        text = path.read_text()
        for forbidden in ("TVMFFI", "TVMBackend", "TVM_DLL", '#include "tvm/', "malloc", "free("):
            assert forbidden not in text, f"{path.name} contains {forbidden}"
    for source in sources:
        subprocess.run(
            [compiler, *flags, *WARNING_FLAGS, "-I", str(root / "codegen/host/include"),
             str(source), "-o", str(tmp_path / (source.stem + ".o"))],
            check=True, capture_output=True, text=True,
        )


@pytest.mark.parametrize("name", ZOO_IDS)
def test_kernels_are_unpacked_functions_called_by_main(name: str, compiled: Callable,
                                                        tmp_path: Path) -> None:
    root = extract(compiled(name)[0], tmp_path)
    lib = (root / f"codegen/host/src/tvmgen_{name}_lib.c").read_text()
    main = re.search(rf"int32_t tvmgen_{name}___tvm_main__\((.*?)\) \{{(.*?)\n\}}", lib, re.S)
    assert main, "no AOT main"
    meta = json.loads((root / "metadata.json").read_text())["memory"]
    pools = [f"uint8_t* {pool}" for pool in ("constants", "workspace") if meta[f"{pool}_bytes"]]
    assert [p.strip() for p in main.group(1).split(",")][-len(pools):] == pools
    called = re.findall(rf"(tvmgen_{name}_\w+)\(", main.group(2))
    assert called, "the main calls no kernel"
    for kernel in set(called):
        assert re.search(rf"^int32_t {kernel}\([^)]*\) \{{", lib, re.M), kernel
    assert "workspace" in (root / "metadata.json").read_text()


def test_archive_is_deterministic(build_model: BuildModel, tmp_path: Path) -> None:
    _, builder, shapes = next(entry for entry in ZOO if entry[0] == "cnn_onnx")
    path, _ = build_model(builder)
    first = microexport.compile(path, tmp_path / "a.tar", name="cnn", input_shapes=shapes)
    second = microexport.compile(path, tmp_path / "b.tar", name="cnn", input_shapes=shapes)
    assert first.archive.read_bytes() == second.archive.read_bytes()


def test_archive_layout_and_metadata(compiled: Callable) -> None:
    archive, _, _ = compiled("cnn_onnx")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        metadata = tar.extractfile("./metadata.json").read().decode()
        tir = tar.extractfile("./src/tir.txt").read().decode()
        params = np.load(tar.extractfile("./parameters/cnn_onnx.npz"))
        assert params.files
    for member in ("metadata.json", "codegen/host/src/tvmgen_cnn_onnx_lib.c",
                   "codegen/host/src/tvmgen_cnn_onnx.c", "codegen/host/include/tvmgen_cnn_onnx.h",
                   "src/relax.txt", "src/tir.txt", "parameters/cnn_onnx.npz"):
        assert f"./{member}" in names  # member names as TVM's MLF export wrote them
    meta = json.loads(metadata)
    assert meta["executor"] == "aot" and meta["unpacked_api"] is True
    memory = meta["memory"]
    assert memory["workspace_bytes"] > 0 and memory["constants_bytes"] > 0
    assert memory["functions"]
    assert all(k.startswith("tvmgen_cnn_onnx_") for k in memory["functions"])
    assert "tvmgen_cnn_onnx___tvm_main__" in tir


def test_external_workspace_runs_the_same(build_model: BuildModel, tmp_path: Path) -> None:
    _, builder, _ = next(entry for entry in ZOO if entry[0] == "mlp_onnx")
    path, inputs = build_model(builder)
    static = microexport.compile(path, tmp_path / "s.tar", name="mlp")
    external = microexport.compile(path, tmp_path / "e.tar", name="mlp", workspace="external")
    with tarfile.open(external.archive) as tar:
        header = tar.extractfile("./codegen/host/include/tvmgen_mlp.h").read()
    assert b"struct tvmgen_mlp_workspace_pools" in header
    a = microexport.run(static.archive, inputs)
    b = microexport.run(external.archive, inputs)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("workspace", ["static", "external"])
def test_pools_and_io_in_workspace_run_the_same(workspace: str, build_model: BuildModel,
                                                 tmp_path: Path) -> None:
    from microexport.model import PoolSpec

    _, builder, _ = next(entry for entry in ZOO if entry[0] == "cnn_onnx")
    path, inputs = build_model(builder)
    plain = microexport.compile(path, tmp_path / "plain.tar", name="cnn")
    split = microexport.compile(
        path, tmp_path / "split.tar", name="cnn", workspace=workspace, io_in_workspace=True,
        pools=(PoolSpec("fast", 2048, ".bss.fast"), PoolSpec("slow", None)),
    )
    memory = split.metadata["memory"]
    assert memory["io_in_workspace"] is True
    assert [p["name"] for p in memory["pools"]] == ["fast", "slow"]
    assert 0 < memory["pools"][0]["bytes"] <= 2048
    assert memory["workspace_bytes"] == sum(p["bytes"] for p in memory["pools"])
    assert memory["lower_bound_bytes"] <= memory["workspace_bytes"]
    assert all("workspace_offset" in t for t in split.metadata["inputs"])
    with tarfile.open(split.archive) as tar:
        header = tar.extractfile("./codegen/host/include/tvmgen_cnn.h").read().decode()
        wrapper = tar.extractfile("./codegen/host/src/tvmgen_cnn.c").read().decode()
    assert "void tvmgen_cnn_map_inputs(" in header and "TVMGEN_CNN_FAST_POOL_SIZE" in header
    if workspace == "static":
        assert 'section(".bss.fast")' in wrapper
    expected = microexport.run(plain.archive, inputs)
    got = microexport.run(split.archive, inputs)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_pool_limits_too_small_are_refused(build_model: BuildModel, tmp_path: Path) -> None:
    from microexport.errors import Error
    from microexport.model import PoolSpec

    _, builder, _ = next(entry for entry in ZOO if entry[0] == "cnn_onnx")
    path, _ = build_model(builder)
    with pytest.raises(Error, match="fits in none of the pools"):
        microexport.compile(path, tmp_path / "x.tar", name="cnn",
                            pools=(PoolSpec("tiny", 64),))
    assert not (tmp_path / "x.tar").exists()


@pytest.mark.parametrize("name", ZOO_IDS)
def test_every_zoo_model_passes_the_test_command(name: str, build_model: BuildModel) -> None:
    """`microexport test MODEL --board host`: seeded inputs, reference runtime, PASS."""
    _, builder, shapes = next(entry for entry in ZOO if entry[0] == name)
    path, _ = build_model(builder)
    report = microexport.test(path, board="host", name=name, input_shapes=shapes)
    assert report.passed, report.summary()
    assert "PASS" in report.summary().splitlines()[-1]


def test_board_file_pools_are_planned(build_model: BuildModel, tmp_path: Path) -> None:
    """A board declaring fast and slow memories gets a workspace split into those pools."""
    from microexport.deploy.boards import load_board

    board = load_board("nucleo_f746zg")
    assert [p.name for p in board.workspace_pools] == ["dtcm", "sram"]
    _, builder, _ = next(entry for entry in ZOO if entry[0] == "cnn_onnx")
    path, _ = build_model(builder)
    result = microexport.compile(path, tmp_path / "m.tar", name="cnn", board="nucleo_f746zg")
    pools = result.metadata["memory"]["pools"]
    assert [(p["name"], p["size_limit"], p["section"]) for p in pools] == [
        ("dtcm", 64 * 1024, ".dtcm_bss"), ("sram", None, None)]
    assert pools[0]["bytes"] == result.metadata["memory"]["workspace_bytes"]  # it all fits


def test_kernel_stack_limit_keeps_accumulators_local(build_model: BuildModel,
                                                     tmp_path: Path) -> None:
    """By default small kernel buffers (accumulators) are C locals, reported as stack bytes;
    --kernel-stack-limit 0 puts every kernel buffer in the workspace, with the same outputs."""
    _, builder, _ = next(entry for entry in ZOO if entry[0] == "cnn_onnx")
    path, inputs = build_model(builder)
    scratch = microexport.compile(path, tmp_path / "a.tar", name="cnn", kernel_stack_limit=0)
    local = microexport.compile(path, tmp_path / "b.tar", name="cnn")
    functions = scratch.metadata["memory"]["functions"]
    assert all(f["stack_bytes"] == 0 for f in functions.values())
    assert any(f["stack_bytes"] > 0 for f in local.metadata["memory"]["functions"].values())
    assert (local.metadata["memory"]["workspace_bytes"]
            <= scratch.metadata["memory"]["workspace_bytes"])
    expected = microexport.run(scratch.archive, inputs)
    got = microexport.run(local.archive, inputs)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_templates_override_the_kernel_library_too(build_model: BuildModel,
                                                   tmp_path: Path) -> None:
    _, builder, _ = next(entry for entry in ZOO if entry[0] == "mlp_onnx")
    path, inputs = build_model(builder)
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "lib.c.j2").write_text(
        '/* ACME build of {{ model_name }} */\n{% include "builtin/codegen/lib.c.j2" %}')
    result = microexport.compile(path, tmp_path / "m.tar", name="mlp", templates=templates)
    with tarfile.open(result.archive) as tar:
        lib = tar.extractfile("./codegen/host/src/tvmgen_mlp_lib.c").read().decode()
    assert lib.startswith("/* ACME build of mlp */\n")
    assert microexport.run(result.archive, inputs)


def _no_input_onnx(path: Path) -> Path:
    """A model without inputs (a constant through Relu), as the ONNX node tests have a few."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    value = numpy_helper.from_array(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "c")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=value),
         helper.make_node("Relu", ["k"], ["y"])],
        "no_inputs", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("workspace", "io_in_workspace"),
                         [("static", False), ("external", False), ("external", True)])
def test_model_without_inputs_builds_warning_free_and_runs(
    workspace: str, io_in_workspace: bool, tmp_path: Path
) -> None:
    """The harness and run wrapper of a model with no inputs compile under -Werror (no unused
    read_input, no unused pools parameter) and the output matches onnxruntime."""
    require_program("gcc", "gcc")
    model = _no_input_onnx(tmp_path / "no_inputs.onnx")
    report = microexport.test(model, workspace=workspace, io_in_workspace=io_in_workspace)
    assert report.passed, report.summary()
