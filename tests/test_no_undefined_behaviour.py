"""No undefined behaviour in the generated C (docs/archive.md, "Strict aliasing").

The pools are unions of arrays of every element type, so every tensor is accessed as an object of
its own type. For every zoo model (and the workspace variants: external workspace, several pools,
inputs and outputs inside the workspace):

* cppcheck finds nothing of severity error, warning or portability (in particular no
  `invalidPointerCast`) in the archive's C, the host harness, the serial-protocol device code,
  the bare-metal main and startup code, and the graph-walker runtime;
* all of it builds with `-O3 -fstrict-aliasing -Wstrict-aliasing=1 -Werror` for the host and for
  Cortex-M3/M4F/M7/M55;
* the host harness and the graph walker, built with AddressSanitizer and UndefinedBehaviorSanitizer
  (`-fno-sanitize-recover=all`: the first finding aborts), still match the reference outputs;
* `tvmgen_<name>_run` refuses NULL tensor pointers inside the I/O structs (a C test program).

Under CI (`CI=true`) a missing cppcheck, compiler or sanitizer runtime fails instead of skipping.
"""

from __future__ import annotations

import dataclasses
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fixture_model import FIXTURE_LIB, FIXTURES, constant_pool, fixture_model
from support import in_ci, require_program
from zoo import ZOO, Builder, Inputs

import microexport
from microexport.archive.glue import render_glue, render_harness
from microexport.archive.graph import load_graph, render_graph_walker
from microexport.archive.mlf import read_model
from microexport.deploy.boards import load_board
from microexport.deploy.compare import compare
from microexport.deploy.platforms import get_platform
from microexport.deploy.protocol.device import render_device_sources, render_host_board
from microexport.deploy.reference import run_reference
from microexport.model import PoolSpec

BuildModel = Callable[[Builder], tuple[Path, Inputs]]

# Workspace variants of cnn_onnx: (compile options) by id.
VARIANTS: dict[str, dict[str, object]] = {
    "cnn_onnx-external-pools-io": {
        "workspace": "external", "io_in_workspace": True,
        "pools": (PoolSpec("fast", 4096), PoolSpec("slow")),
    },
    "cnn_onnx-static-pools-io": {
        "io_in_workspace": True, "pools": (PoolSpec("fast", 4096), PoolSpec("slow")),
    },
}
MODEL_IDS = [name for name, _, _ in ZOO] + sorted(VARIANTS)

CPPCHECK = ["--std=c99", "--enable=warning,style,portability,performance", "--inconclusive",
            "--quiet", "--template={severity}:{id}:{file}:{line}: {message}"]
# Findings that point at undefined or non-portable behaviour; `style` ones (an unused union
# member, a parameter that could be const) do not.
REFUSED_SEVERITIES = ("error", "warning", "portability")

C99 = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
STRICT_ALIASING = [*C99, "-O3", "-fstrict-aliasing", "-Wstrict-aliasing=1"]
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
              "-fno-omit-frame-pointer", "-g"]
# Cortex-M targets: the QEMU boards of each CPU (their -mcpu/-mfpu/-mfloat-abi flags).
ARM_BOARDS = {"cortex-m3": "mps2_an385", "cortex-m4f": "mps2_an386", "cortex-m7": "mps2_an500",
              "cortex-m55": "mps3_an547"}
ZEPHYR_BOARD = "mps2_an521"  # a Zephyr application is rendered (not built: no Zephyr needed)


@dataclasses.dataclass(frozen=True)
class Model:
    """A compiled model: its archive, the model file, sample inputs and where its C was put."""

    name: str
    archive: Path
    path: Path
    inputs: Inputs
    root: Path  # the extracted archive plus extra/ (harness, protocol, bare metal), walker/,
    # zephyr/ (a Zephyr application project)

    @property
    def include(self) -> Path:
        return self.root / "codegen/host/include"

    @property
    def library(self) -> list[Path]:
        """The archive's C sources."""
        return sorted((self.root / "codegen/host/src").glob("*.c"))

    @property
    def extra(self) -> Path:
        return self.root / "extra"

    @property
    def walker(self) -> Path:
        return self.root / "walker"

    @property
    def zephyr(self) -> Path:
        return self.root / "zephyr/src"


def write_sources(archive: Path, root: Path) -> None:
    """Extract `archive` into `root` and render beside it every other C file microexport writes
    for it: host harness, protocol device code and POSIX board, bare-metal main and startup
    (extra/), graph-walker runtime (walker/), Zephyr application (zephyr/)."""
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    model = read_model(archive)
    extra = root / "extra"
    extra.mkdir()
    (extra / "host_main.c").write_text(render_harness(model))
    (extra / "host_board_main.c").write_text(render_host_board(model))
    for filename, text in render_device_sources(model).items():
        (extra / filename).write_text(text)
    baremetal = get_platform(load_board(ARM_BOARDS["cortex-m4f"]))
    for filename, text in baremetal.render_sources(model).items():  # type: ignore[attr-defined]
        (extra / filename).write_text(text)
    walker = root / "walker"
    walker.mkdir()
    graph = load_graph((root / "src/graph.json").read_text())
    for filename, text in render_graph_walker(graph).items():
        (walker / filename).write_text(text)
    get_platform(load_board(ZEPHYR_BOARD), "zephyr").create(archive, root / "zephyr")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory, build_model: BuildModel
             ) -> Callable[[str], Model]:
    """`compiled(id)` → the Model of a zoo model or a variant, compiled once per module."""
    cache: dict[str, Model] = {}
    out = tmp_path_factory.mktemp("ub-archives")

    def get(model_id: str) -> Model:
        if model_id not in cache:
            zoo_name = model_id.split("-")[0]
            _, builder, shapes = next(entry for entry in ZOO if entry[0] == zoo_name)
            path, inputs = build_model(builder)
            name = model_id.replace("-", "_")
            result = microexport.compile(path, out / f"{name}.tar", name=name,
                                         input_shapes=shapes, **VARIANTS.get(model_id, {}))
            root = out / name
            write_sources(result.archive, root)
            cache[model_id] = Model(name, result.archive, path, inputs, root)
        model = cache[model_id]
        return dataclasses.replace(model, inputs={k: v.copy() for k, v in model.inputs.items()})

    return get


# --- cppcheck -------------------------------------------------------------------------------


def cppcheck(sources: list[Path], includes: list[Path]) -> list[str]:
    """cppcheck's findings on `sources`, one `severity:id:file:line: message` line each."""
    program = require_program("cppcheck", "cppcheck")
    result = subprocess.run(
        [program, *CPPCHECK, *(f"-I{d}" for d in includes), *map(str, sources)],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if line.count(":") >= 3]


def test_cppcheck_reports_a_byte_pool_read_as_float(tmp_path: Path) -> None:
    """The check is live: the idiom this replaced (a uint8_t pool cast to float*) is reported."""
    source = tmp_path / "old_idiom.c"
    source.write_text("#include <stdint.h>\nstatic uint8_t pool[64];\n"
                      "float first(void) { return *(float*)(&pool[16]); }\n")
    findings = cppcheck([source], [])
    assert any(":invalidPointerCast:" in line for line in findings), findings


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_cppcheck_finds_no_undefined_behaviour(model_id: str, compiled: Callable) -> None:
    model = compiled(model_id)
    sources = [*model.library, *sorted(model.extra.glob("*.c")), *sorted(model.walker.glob("*.c"))]
    findings = cppcheck(sources, [model.include, model.extra, model.walker])
    findings += cppcheck(sorted(model.zephyr.glob("*.c")), [model.include, model.zephyr])
    refused = [line for line in findings if line.split(":")[0] in REFUSED_SEVERITIES]
    assert not refused, "\n".join(refused)
    assert not [line for line in findings if ":invalidPointerCast:" in line]


# --- strict aliasing ------------------------------------------------------------------------


def compile_objects(compiler: str, flags: list[str], sources: list[Path], model: Model,
                    out: Path) -> None:
    for source in sources:
        result = subprocess.run(
            [compiler, *flags, f"-I{model.include}", f"-I{model.extra}", f"-I{model.walker}",
             "-c", str(source), "-o", str(out / f"{source.parent.name}-{source.stem}.o")],
            capture_output=True, text=True, check=False, timeout=600,
        )
        assert result.returncode == 0, f"{source.name}: {result.stderr}"


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_host_build_with_strict_aliasing(model_id: str, compiled: Callable,
                                         tmp_path: Path) -> None:
    gcc = require_program("gcc", "gcc")
    model = compiled(model_id)
    extra = [model.extra / name for name in ("host_main.c", "microexport_protocol.c",
                                             "host_board_main.c")]
    sources = [*model.library, *extra, *sorted(model.walker.glob("*.c"))]
    compile_objects(gcc, STRICT_ALIASING, sources, model, tmp_path)


@pytest.mark.parametrize("cpu", sorted(ARM_BOARDS))
@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_cortex_m_build_with_strict_aliasing(model_id: str, cpu: str, compiled: Callable,
                                             tmp_path: Path) -> None:
    gcc = require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    model = compiled(model_id)
    flags = [*load_board(ARM_BOARDS[cpu]).cpu_flags, *STRICT_ALIASING]
    sources = [*model.library, model.extra / "main.c", model.extra / "startup.c",
               model.extra / "microexport_protocol.c"]
    compile_objects(gcc, flags, sources, model, tmp_path)


# --- sanitizers -----------------------------------------------------------------------------


def sanitized_host_platform() -> object:
    board = load_board("host")
    board = dataclasses.replace(board, cflags=(*board.cflags, *SANITIZERS),
                                ldflags=(*SANITIZERS, *board.ldflags))
    return get_platform(board)


def require_sanitizers(tmp_path: Path) -> str:
    """gcc, if it can link a sanitized program (skip locally, fail under CI, if not)."""
    gcc = require_program("gcc", "gcc")
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    result = subprocess.run([gcc, *SANITIZERS, str(probe), "-o", str(tmp_path / "probe")],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = f"gcc cannot build with {' '.join(SANITIZERS)}: {result.stderr.strip()}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return gcc


def test_sanitizers_stop_on_undefined_behaviour(tmp_path: Path) -> None:
    """The flags are live: a misaligned float read aborts the program."""
    gcc = require_sanitizers(tmp_path)
    source = tmp_path / "misaligned.c"
    source.write_text("#include <string.h>\nstatic float data[4];\n"
                      "int main(int argc, char** argv) {\n"
                      "  float* p = (float*)(void*)((char*)data + argc);\n  (void)argv;\n"
                      "  memset(data, 0, sizeof data);\n  return (int)*p;\n}\n")
    program = tmp_path / "misaligned"
    subprocess.run([gcc, *SANITIZERS, str(source), "-o", str(program)], check=True,
                   capture_output=True)
    result = subprocess.run([str(program)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "runtime error" in result.stderr, result.stderr


def assert_match_reference(model: Model, got: dict[str, np.ndarray]) -> None:
    runtime, expected = run_reference(model.path, model.inputs)
    assert len(got) == len(expected)
    for (name, array), want in zip(got.items(), expected, strict=True):
        result = compare(name, array, want)
        assert result.passed, f"{model.name}/{name} vs {runtime}: max abs err " \
                              f"{result.max_abs_error}"


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_sanitized_host_run_matches_reference(model_id: str, compiled: Callable,
                                              tmp_path: Path) -> None:
    require_sanitizers(tmp_path)
    model = compiled(model_id)
    platform = sanitized_host_platform()
    run = platform.execute_archive(model.archive, model.inputs, tmp_path / "work")
    assert_match_reference(model, run.outputs)


@pytest.mark.parametrize("model_id", [name for name, _, _ in ZOO])
def test_sanitized_graph_walker_matches_reference(model_id: str, compiled: Callable,
                                                  tmp_path: Path) -> None:
    gcc = require_sanitizers(tmp_path)
    model = compiled(model_id)
    program = tmp_path / "walker"
    sources = [*sorted(model.walker.glob("*.c")), model.root / f"codegen/host/src/tvmgen_"
               f"{model.name}_lib.c"]
    subprocess.run([gcc, *C99, "-O1", *SANITIZERS, f"-I{model.walker}", f"-I{model.include}",
                    *map(str, sources), "-lm", "-o", str(program)],
                   check=True, capture_output=True, text=True)
    metadata = read_model(model.archive)
    args = []
    for index, spec in enumerate(metadata.inputs):
        path = tmp_path / f"in{index}.bin"
        array = model.inputs[spec.name].astype(np.dtype(spec.dtype).newbyteorder("<"))
        path.write_bytes(np.ascontiguousarray(array).tobytes())
        args.append(str(path))
    outs = [tmp_path / f"out{index}.bin" for index in range(len(metadata.outputs))]
    result = subprocess.run([str(program), *args, *map(str, outs)], capture_output=True,
                            text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    got = {
        spec.name: np.frombuffer(path.read_bytes(), np.dtype(spec.dtype).newbyteorder("<"))
        .reshape(spec.shape)
        for spec, path in zip(metadata.outputs, outs, strict=True)
    }
    assert_match_reference(model, got)


# --- NULL tensor pointers -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["static", "external"])
def test_run_refuses_null_tensor_pointers(mode: str, tmp_path: Path) -> None:
    gcc = require_sanitizers(tmp_path)
    for filename, text in render_glue(fixture_model(mode), constant_pool()).items():
        (tmp_path / filename).write_text(text)
    program = tmp_path / "null_tensors"
    define = ["-DEXTERNAL_WORKSPACE"] if mode == "external" else []
    sources = [tmp_path / "tvmgen_fixture.c", FIXTURE_LIB, FIXTURES / "null_tensors_main.c"]
    subprocess.run(
        [gcc, *C99, "-O2", *SANITIZERS, *define, f"-I{tmp_path}", *map(str, sources), "-lm",
         "-o", str(program)],
        check=True, capture_output=True, text=True,
    )
    result = subprocess.run([str(program)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
