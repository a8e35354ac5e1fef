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

from microexport.errors import Error, InputError
from microexport.model import (
    ConstantSpec,
    MemoryReport,
    PoolReport,
    PoolSpec,
    TensorSpec,
    c_identifier,
)

if TYPE_CHECKING:
    import tvm

    from microexport.compiler.frontend import ImportedModel

FLOAT_RTOL = 1e-4
FLOAT_ATOL = 1e-5
QUANTIZED_MAX_DIFF = 1


@dataclass(frozen=True)
class CompileResult:
    """What `compile` produced: the archive and its metadata (the contents of metadata.json)."""

    archive: Path
    metadata: dict[str, Any]

    @property
    def memory(self) -> MemoryReport:
        mem = self.metadata["memory"]
        return MemoryReport(
            workspace_bytes=mem["workspace_bytes"],
            constants_bytes=mem["constants_bytes"],
            io_bytes=mem["io_bytes"],
            kernel_workspace_bytes={k: v["workspace_bytes"] for k, v in mem["functions"].items()},
        )


# TIR extraction points, in pipeline order (see docs/tir-json.md).
TIR_STAGES = ("scheduled", "lowered", "codegen")


@dataclass(frozen=True)
class Compilation:
    """Every file of the archive, in memory, with the metadata and the TIR of each stage.

    `stages` maps each of `TIR_STAGES` to kernels + AOT main as one IRModule: `scheduled` (after
    Relax legalization and fusion, before TIR lowering), `lowered` (flattened, unpacked API) and
    `codegen` (exactly what the C code generator received).
    """

    files: dict[str, bytes]
    metadata: dict[str, Any]
    stages: dict[str, tvm.IRModule]


def import_model(
    model: str | Path | tvm.IRModule, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> ImportedModel:
    """Import a model file or wrap a Relax IRModule."""
    from microexport.compiler.frontend import from_relax, load_model

    if isinstance(model, str | Path):
        return load_model(Path(model), input_shapes)
    return from_relax(model)


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
    kernel_stack_limit: int = 0,
) -> Compilation:
    """Run the pipeline lower → plan → aot → codegen → glue on an imported model.

    `pools` splits the workspace into named pools with size limits (default: one unlimited pool
    `workspace`); `io_in_workspace` plans the inputs and outputs inside the workspace too.
    `kernel_stack_limit` keeps kernel buffers of at most that many bytes as C locals instead of
    workspace scratch (0: none). `tir_stages` (of `TIR_STAGES`) selects the stages written as
    `src/tir-<stage>.json` (docs/tir-json.md); `src/graph.json` is always written.
    """
    from microexport.archive.glue import GlueContext, WorkspacePool, render_glue
    from microexport.archive.mlf import ArchiveLayout, build_metadata, metadata_json, parameters_npz
    from microexport.compiler.aot import build_aot_module, symbol_prefix
    from microexport.compiler.codegen import generate_c
    from microexport.compiler.lower import lower
    from microexport.compiler.plan import plan_memory

    if c_identifier(name) != name:
        raise Error(f"model name '{name}' is not a C identifier: try '{c_identifier(name)}'")
    if workspace not in ("static", "external"):
        raise Error(f"unknown workspace mode '{workspace}': use static or external")
    if templates is not None and not Path(templates).is_dir():
        raise Error(f"templates directory '{templates}' does not exist")
    check_tir_stages(tir_stages)
    if kernel_stack_limit < 0:
        raise Error(f"--kernel-stack-limit must not be negative, got {kernel_stack_limit}")
    lowered = lower(imported, target, kernel_stack_limit)
    try:
        plan = plan_memory(lowered.schedule, lowered.scratch, alignment,
                           pools or (PoolSpec(),), io_in_workspace)
    except ValueError as err:
        raise Error(f"workspace planning: {err}") from None
    aot = build_aot_module(
        name, lowered.schedule, lowered.kernels, plan, imported.inputs, imported.outputs
    )
    final, lib = generate_c(aot.mod, name, symbol_prefix(name), templates)
    scheduled = build_aot_module(
        name, lowered.schedule, lowered.block_kernels, plan, imported.inputs, imported.outputs,
        pass_scratch=False,
    )
    stages = {"scheduled": scheduled.mod, "lowered": aot.mod, "codegen": final}

    schedule = lowered.schedule
    constants = tuple(
        ConstantSpec(cname, tuple(schedule.constants[cname].shape),
                     str(schedule.constants[cname].dtype), offset)
        for cname, offset in plan.constant_offsets.items()
    )
    pool = bytearray(plan.constants_bytes)
    for spec in constants:
        data = np.ascontiguousarray(schedule.constants[spec.name]).astype(
            np.dtype(spec.dtype).newbyteorder("<"), copy=False
        )
        pool[spec.offset : spec.offset + spec.nbytes] = data.tobytes()

    kernel_ws = {
        aot.kernel_symbols[kernel]: layout.nbytes for kernel, layout in lowered.scratch.items()
    }
    io_placements = {}
    if io_in_workspace:
        specs = zip(lowered.schedule.inputs + lowered.schedule.outputs,
                    imported.inputs + imported.outputs, strict=True)
        io_placements = {
            spec.name: plan.placements[lowered.schedule.root(tensor)] for tensor, spec in specs
        }
    pool_reports = tuple(
        PoolReport(p.name, plan.pool_bytes[p.name], p.size_limit, p.section) for p in plan.pools
    )
    memory = MemoryReport(
        workspace_bytes=plan.workspace_bytes,
        constants_bytes=plan.constants_bytes,
        io_bytes=sum(t.nbytes for t in imported.inputs + imported.outputs),
        kernel_workspace_bytes=kernel_ws,
        kernel_stack_bytes={
            aot.kernel_symbols[kernel]: layout.stack_bytes
            for kernel, layout in lowered.scratch.items()
        },
        pools=pool_reports,
        lower_bound_bytes=plan.lower_bound_bytes,
        planner=plan.strategy,
        io_placements=io_placements,
    )
    ctx = GlueContext(
        name=name,
        inputs=imported.inputs,
        outputs=imported.outputs,
        constants=constants,
        constant_pool=bytes(pool),
        workspace_bytes=plan.workspace_bytes,
        workspace_mode=workspace,
        alignment=plan.alignment,
        main_symbol=aot.main_symbol,
        pools=tuple(WorkspacePool(p.name, p.nbytes, p.section) for p in pool_reports),
        io_placements=io_placements,
    )
    glue = render_glue(ctx, templates)
    metadata = build_metadata(
        model_name=name,
        target=target,
        inputs=imported.inputs,
        outputs=imported.outputs,
        memory=memory,
        workspace_mode=workspace,
        alignment=plan.alignment,
    )
    layout = ArchiveLayout
    files: dict[str, bytes] = {
        layout.METADATA: metadata_json(metadata),
        f"{layout.SRC_DIR}/{lib.filename}": lib.source.encode(),
        f"{layout.PARAMETERS_DIR}/{name}.npz": parameters_npz(
            {spec.name: schedule.constants[spec.name] for spec in constants}
        ),
        layout.RELAX_TEXT: imported.mod.script().encode(),
        layout.TIR_TEXT: final.script().encode(),
    }
    for filename, text in glue.items():
        folder = layout.INCLUDE_DIR if filename.endswith(".h") else layout.SRC_DIR
        files[f"{folder}/{filename}"] = text.encode()
    files.update(tir_json_files(stages, tir_stages))
    return Compilation(files=files, metadata=metadata, stages=stages)


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
    kernel_stack_limit: int = 0,
) -> CompileResult:
    """Compile a model file (or Relax IRModule) to a Model Library Format archive.

    `output` defaults to `<name>.tar` in the current directory. `tir_stages` selects the TIR
    stages written as `src/tir-<stage>.json` (default: codegen). `board` takes the workspace
    pools from that board's file when `pools` is empty.
    """
    from microexport.archive.mlf import write_archive

    imported = import_model(model, input_shapes)
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
    archive = Path(output) if output is not None else Path(f"{name}.tar")
    write_archive(archive, compilation.files)
    return CompileResult(archive=archive, metadata=compilation.metadata)


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


def read_inputs(specs: list[str], input_specs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Load `NAME=FILE.npy` / `FILE.npy` arguments, matched to the archive's inputs."""
    names = [spec["name"] for spec in input_specs]
    arrays: dict[str, np.ndarray] = {}
    for position, item in enumerate(specs):
        name, sep, path = item.partition("=")
        if not sep:
            if position >= len(names):
                raise InputError(f"too many --input files: the model has {len(names)} inputs")
            name, path = names[position], item
        if name not in names:
            raise InputError(f"unknown input '{name}': the model's inputs are {', '.join(names)}")
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except OSError as err:
            raise InputError(f"cannot read input '{name}' from {path}: "
                             f"{err.strerror or err}") from None
        except ValueError:
            raise InputError(f"input '{name}': {path} is not a .npy array file "
                             "(write one with numpy.save)") from None
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"missing --input for {', '.join(missing)}")
    return arrays


@dataclass(frozen=True)
class OutputComparison:
    """One output compared with the reference runtime."""

    name: str
    max_abs_error: float
    passed: bool


@dataclass(frozen=True)
class TestReport:
    """Result of `test`: per-output comparison against the reference runtime."""

    model: str
    board: str
    reference: str
    outputs: tuple[OutputComparison, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def summary(self) -> str:
        lines = [
            f"{o.name}: max abs error {o.max_abs_error:.3g} {'PASS' if o.passed else 'FAIL'}"
            for o in self.outputs
        ]
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: {self.model} on {self.board} vs {self.reference}")
        return "\n".join(lines)


def sample_inputs(specs: tuple[TensorSpec, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs: uniform in [-1, 1) for floats, full range for integers."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            arrays[spec.name] = rng.integers(info.min, info.max, spec.shape, endpoint=True,
                                             dtype=dtype)
        elif dtype == np.bool_:
            arrays[spec.name] = rng.integers(0, 1, spec.shape, endpoint=True).astype(bool)
        else:
            arrays[spec.name] = rng.uniform(-1.0, 1.0, spec.shape).astype(dtype)
    return arrays


def compare(name: str, got: np.ndarray, want: np.ndarray) -> OutputComparison:
    """Compare one output: float32 with rtol/atol, quantized (integer) off by at most one."""
    if got.shape != want.shape:
        return OutputComparison(name, float("inf"), False)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    max_err = float(diff.max()) if diff.size else 0.0
    if np.issubdtype(want.dtype, np.integer):
        return OutputComparison(name, max_err, max_err <= QUANTIZED_MAX_DIFF)
    ok = bool(np.allclose(got, want, rtol=FLOAT_RTOL, atol=FLOAT_ATOL))
    return OutputComparison(name, max_err, ok)


def test(
    model: str | Path,
    *,
    board: str = "host",
    build_dir: str | Path | None = None,
    seed: int = 0,
    **compile_options: Any,
) -> TestReport:
    """Compile `model`, run it on `board` with seeded inputs, compare with a reference runtime.

    `compile_options` are those of `compile_model` (`tir_stages`, `pools`, ...) plus
    `input_shapes`.
    """
    from microexport.archive.mlf import write_archive
    from microexport.deploy.reference import run_reference

    model_path = Path(model)
    imported = import_model(model_path, compile_options.pop("input_shapes", None))
    inputs = sample_inputs(imported.inputs, seed)
    reference_name, expected = run_reference(model_path, inputs)
    if not compile_options.get("pools"):
        compile_options["pools"] = board_pools(board)
    compilation = compile_model(imported, **compile_options)
    with tempfile.TemporaryDirectory(prefix="microexport-test-") as tmp:
        archive = Path(tmp) / "model.tar"
        write_archive(archive, compilation.files)
        got = run(archive, inputs, board=board, build_dir=build_dir,
                  templates=compile_options.get("templates"))
    comparisons = tuple(
        compare(spec.name, got[spec.name], want)
        for spec, want in zip(imported.outputs, expected, strict=True)
    )
    return TestReport(str(model_path), board, reference_name, comparisons)
