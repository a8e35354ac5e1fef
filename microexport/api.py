"""The Python API; the CLI mirrors it.

    result = microexport.compile("kws.onnx", output="build/kws.tar", name="kws")
    outputs = microexport.run(result.archive, {"input": x})
    report = microexport.test("kws.onnx", board="host")
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from microexport.archive.tir_json.spec import STAGES
from microexport.deploy.compare import QUANTIZED_MAX_DIFF, TestReport, compare, sample_inputs
from microexport.errors import Error
from microexport.model import DEFAULT_KERNEL_STACK_LIMIT, CompiledModel, MemoryReport, PoolSpec

if TYPE_CHECKING:
    import tvm

    from microexport.compiler.frontend import ImportedModel

# TIR extraction points, in pipeline order (see docs/tir-json.md).
TIR_STAGES = STAGES

__all__ = ["TIR_STAGES", "CompileResult", "Compilation", "TestReport", "compile",
           "compile_model", "import_model", "run", "test"]


class _RecordViews:
    """`metadata` and `memory` of a result holding the compiled-model record as `model`."""

    model: CompiledModel

    @property
    def metadata(self) -> dict[str, Any]:
        """The contents of the archive's metadata.json."""
        from microexport.archive.mlf import metadata

        return metadata(self.model)

    @property
    def memory(self) -> MemoryReport:
        """Static memory figures of the compiled model."""
        return self.model.memory


@dataclass(frozen=True)
class CompileResult(_RecordViews):
    """What `compile` produced: the archive and the record of the compiled model."""

    archive: Path
    model: CompiledModel


@dataclass(frozen=True)
class Compilation(_RecordViews):
    """Every file of the archive, in memory, with the record and the TIR of each stage.

    `stages` maps each of `TIR_STAGES` to kernels + AOT main as one IRModule: `scheduled` (after
    Relax legalization and fusion, before TIR lowering), `lowered` (flattened, unpacked API) and
    `codegen` (exactly what the C code generator received).
    """

    files: dict[str, bytes]
    model: CompiledModel
    stages: dict[str, tvm.IRModule]


def import_model(
    model: str | Path | tvm.IRModule,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    constants: dict[str, Any] | None = None,
) -> ImportedModel:
    """Import a model file or wrap a Relax IRModule.

    `constants` (input name → array) freezes those inputs to the values at compile time: they
    are no longer inputs of the compiled model, and what depends only on them folds (ONNX
    shape/axes/starts/ends/sizes inputs, an `If` on them).
    """
    from microexport.compiler.frontend import bind_constants, from_relax, load_model

    if isinstance(model, str | Path):
        return load_model(Path(model), input_shapes, constants)
    return bind_constants(from_relax(model), constants)


def compile_model(
    imported: ImportedModel,
    *,
    name: str = "model",
    target: str = "c",
    workspace: str = "static",
    alignment: int = 16,
    templates: Path | None = None,
    pools: tuple[PoolSpec, ...] = (),
    io_in_workspace: bool = False,
    tir_stages: tuple[str, ...] = ("codegen",),
    kernel_stack_limit: int = DEFAULT_KERNEL_STACK_LIMIT,
) -> Compilation:
    """Run the pipeline lower → plan → aot → codegen → glue on an imported model.

    `pools` splits the workspace into named pools with size limits (default: one unlimited pool
    `workspace`); `io_in_workspace` plans the inputs and outputs inside the workspace too.
    `kernel_stack_limit` keeps kernel buffers of at most that many bytes as C locals instead of
    workspace scratch (0: none; default `DEFAULT_KERNEL_STACK_LIMIT`). `tir_stages` (of
    `TIR_STAGES`) selects the stages written as `src/tir-<stage>.json` (docs/tir-json.md);
    `src/graph.json` is always written.
    """
    from microexport.archive.glue import render_glue
    from microexport.archive.mlf import archive_files
    from microexport.compiler.pipeline import CompilerOptions, compile_to_c

    check_tir_stages(tir_stages)
    options = CompilerOptions(
        name=name, target=target, workspace=workspace, alignment=alignment, pools=pools,
        io_in_workspace=io_in_workspace, kernel_stack_limit=kernel_stack_limit,
        templates=templates,
    )
    compiled = compile_to_c(imported, options)
    glue = render_glue(compiled.model, compiled.constant_pool, templates)
    files = archive_files(
        compiled.model,
        lib=(compiled.lib.filename, compiled.lib.source),
        glue=glue,
        parameters=compiled.parameters,
        relax_text=imported.mod.script(),
        tir_text=compiled.stages["codegen"].script(),
    )
    files.update(tir_json_files(compiled.stages, tir_stages))
    return Compilation(files=files, model=compiled.model, stages=compiled.stages)


def check_tir_stages(tir_stages: tuple[str, ...]) -> None:
    """Error unless every stage is one of `TIR_STAGES`."""
    for stage in tir_stages:
        if stage not in TIR_STAGES:
            raise Error(f"unknown TIR stage '{stage}': use {', '.join(TIR_STAGES)}")


def tir_json_files(
    stages: dict[str, tvm.IRModule], tir_stages: tuple[str, ...]
) -> dict[str, bytes]:
    """`src/tir-<stage>.json` for each requested stage and `src/graph.json` (from `codegen`)."""
    from microexport.archive import tir_json
    from microexport.archive.graph import graph_from_tir, graph_json
    from microexport.archive.mlf import ArchiveLayout

    docs = {stage: tir_json.to_dict(stages[stage], stage) for stage in dict.fromkeys(tir_stages)}
    codegen = docs.get("codegen") or tir_json.to_dict(stages["codegen"], "codegen")
    files = {
        ArchiveLayout.tir_json(stage): tir_json.encode(doc).encode()
        for stage, doc in docs.items()
    }
    files[ArchiveLayout.GRAPH_JSON] = graph_json(graph_from_tir(codegen, validate=False)).encode()
    return files


def board_pools(board: str | None) -> tuple[PoolSpec, ...]:
    """The workspace pools a board file asks for (none for no board)."""
    if board is None:
        return ()
    from microexport.deploy.boards import load_board

    return load_board(board).workspace_pools


def compile(  # noqa: A001 - mirrors the CLI command name
    model: str | Path | tvm.IRModule,
    output: str | Path | None = None,
    *,
    name: str = "model",
    target: str = "c",
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    workspace: str = "static",
    alignment: int = 16,
    templates: str | Path | None = None,
    pools: tuple[PoolSpec, ...] = (),
    io_in_workspace: bool = False,
    tir_stages: tuple[str, ...] = ("codegen",),
    board: str | None = None,
    kernel_stack_limit: int = DEFAULT_KERNEL_STACK_LIMIT,
    constants: dict[str, Any] | None = None,
) -> CompileResult:
    """Compile a model file (or Relax IRModule) to a Model Library Format archive.

    `output` defaults to `<name>.tar` in the current directory. `tir_stages` selects the TIR
    stages written as `src/tir-<stage>.json` (default: codegen). `board` takes the workspace
    pools from that board's file when `pools` is empty. `constants` (input name → array)
    freezes inputs to values at compile time (see `import_model`).
    """
    from microexport.archive.mlf import refuse_overwriting, write_archive

    archive = Path(output) if output is not None else Path(f"{name}.tar")
    if isinstance(model, str | Path):
        refuse_overwriting(archive, Path(model))
    imported = import_model(model, input_shapes, constants)
    compilation = compile_model(
        imported,
        name=name,
        target=target,
        workspace=workspace,
        alignment=alignment,
        templates=Path(templates) if templates is not None else None,
        pools=pools or board_pools(board),
        io_in_workspace=io_in_workspace,
        tir_stages=tir_stages,
        kernel_stack_limit=kernel_stack_limit,
    )
    write_archive(archive, compilation.files)
    return CompileResult(archive=archive, model=compilation.model)


def run(
    archive: str | Path,
    inputs: dict[str, np.ndarray],
    *,
    board: str = "host",
    build_dir: str | Path | None = None,
    templates: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Build the archive for `board`, run it on `inputs` (name → array), return the outputs.

    `templates` overrides the packaged test-harness templates by file name.
    """
    from microexport.deploy.boards import load_board
    from microexport.deploy.platforms import get_platform

    board_info = load_board(board)
    platform = get_platform(board_info, templates=Path(templates) if templates else None)
    with tempfile.TemporaryDirectory(prefix="microexport-") as tmp:
        work = Path(build_dir) if build_dir is not None else Path(tmp)
        return platform.run_archive(Path(archive), inputs, work)


def _onnx_output_steps(path: Path) -> dict[str, float]:
    if path.suffix.lower() != ".onnx":
        return {}
    from microexport.compiler.frontend.onnx_integer import output_steps

    return output_steps(path)


def test(
    model: str | Path,
    *,
    board: str = "host",
    build_dir: str | Path | None = None,
    seed: int = 0,
    reference: str | None = None,
    **compile_options: Any,
) -> TestReport:
    """Compile `model`, run it on `board` with seeded inputs, compare with a reference runtime.

    `reference` picks what the outputs are compared with: None (default) the format's runtime
    (onnxruntime, TFLite Micro with LiteRT as fallback, torch), one of those by name, or
    `"tvm"`: TVM's own LLVM build of the same imported Relax module our pipeline starts from
    (int8 TFLite layers as TE kernels instead of micro-kernel calls),
    on the host (a failure against `tvm` is in our pipeline, a failure against the format's
    runtime only is in the import). `compile_options` are those of `compile_model`
    (`tir_stages`, `pools`, ...) plus `input_shapes` and `constants` (inputs frozen to values;
    the reference runtime is given the same values).
    """
    from microexport.archive.mlf import write_archive
    from microexport.deploy.reference import REFERENCES, TVM, run_reference, run_tvm

    if reference is not None and reference not in REFERENCES:
        raise Error(f"unknown reference '{reference}': use one of {', '.join(REFERENCES)}")
    model_path = Path(model)
    constants = compile_options.pop("constants", None) or {}
    input_shapes = compile_options.pop("input_shapes", None)
    imported = import_model(model_path, input_shapes, constants)
    inputs = sample_inputs(imported.inputs, seed)
    if reference == TVM:
        from microexport.compiler.frontend.tflite_integer import te_kernels_only

        # The same import without micro-kernel calls (C functions TVM's LLVM build cannot call);
        # which kernels compute an int8 layer is our pipeline's choice, so it is under test.
        with te_kernels_only():
            plain = import_model(model_path, input_shapes, constants)
        reference_name, expected = TVM, run_tvm(plain, inputs)
    else:
        frozen = {name: np.asarray(value) for name, value in constants.items()}
        reference_name, expected = run_reference(model_path, {**inputs, **frozen}, reference)
    if not compile_options.get("pools"):
        compile_options["pools"] = board_pools(board)
    compilation = compile_model(imported, **compile_options)
    with tempfile.TemporaryDirectory(prefix="microexport-test-") as tmp:
        archive = Path(tmp) / "model.tar"
        write_archive(archive, compilation.files)
        got = run(archive, inputs, board=board, build_dir=build_dir,
                  templates=compile_options.get("templates"))
    # Integer kernels are bit-exact with TFLite Micro's; other runtimes round differently.
    integer_tolerance = 0 if reference_name == "tflite-micro" else QUANTIZED_MAX_DIFF
    # A quantized ONNX model's float outputs, dequantized from integers: one step apart from
    # onnxruntime's where its kernels round the other way.
    steps = _onnx_output_steps(model_path) if reference_name == "onnxruntime" else {}
    comparisons = tuple(
        compare(spec.name, got[spec.name], want, integer_tolerance, steps.get(spec.name))
        for spec, want in zip(imported.outputs, expected, strict=True)
    )
    return TestReport(str(model_path), board, reference_name, comparisons)
