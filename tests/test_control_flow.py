"""Run-time control flow (issue 11, point 5): an ONNX `If` whose condition is only known at run
time becomes `if (cond[0]) { ... } else { ... }` in the AOT main, calling the kernels of one
branch or the other over one static memory plan that is valid for both paths.

Each model is built with onnx.helper (fixed seeds), compiled once through the public Python API,
run on the host (one also in QEMU on mps2_an386) for every value of its condition and compared
with onnxruntime on the same inputs. The plan is checked path by path (`plan.check_plan`), the
main's C, graph.json and the TIR JSON describe both branches, and `--constant` still folds the
`If` away.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from support import require_module, require_program

import microexport
from microexport.api import import_model
from microexport.archive.graph import graph_from_tir, load_graph, render_graph_walker
from microexport.compiler.lower import lower
from microexport.compiler.plan import InvalidPlan, MemoryPlan, check_plan, plan_memory
from microexport.errors import Error, TirJsonError

OPSET = 17
IR_VERSION = 8
RATES = (16000, 8000)  # the two sample rates of the VAD-like models (then, else)
FRAME = 64  # samples of an audio frame at 16 kHz
HIDDEN = 8  # LSTM hidden size


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: tuple = ()) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _value(name: str, elem_type: int, shape: list | None) -> object:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, shape)


def _array(name: str, value: np.ndarray) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(value, name)


def input_condition_model(directory: Path) -> Path:
    """`If` on a bool input `flag`: Relu(x) or Neg(x), then + x."""
    from onnx import TensorProto, helper

    then_branch = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                                    [_value("t", TensorProto.FLOAT, [2, 8])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                                    [_value("e", TensorProto.FLOAT, [2, 8])])
    nodes = [helper.make_node("If", ["flag"], ["chosen"], then_branch=then_branch,
                              else_branch=else_branch),
             helper.make_node("Add", ["chosen", "x"], ["y"])]
    return _save(directory / "input_condition.onnx", nodes,
                 [_value("x", TensorProto.FLOAT, [2, 8]), _value("flag", TensorProto.BOOL, [])],
                 [_value("y", TensorProto.FLOAT, [2, 8])])


def two_paths_model(directory: Path) -> Path:
    """`If` on `ReduceSum(x) > 0` (computed from the input): the then branch two MatMuls with
    Tanh and Add (an intermediate between them) and an Abs, the else branch a Conv, Sigmoid,
    ReduceMean, Mul and Reshape back, and the input itself (Identity: a copy) as the If's second
    output. Both outputs are model outputs, the first through an Add after the If."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(5)
    w = rng.uniform(-1, 1, (16, 16)).astype(np.float32)
    k = rng.uniform(-1, 1, (4, 1, 3, 3)).astype(np.float32)
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t_mm"]),
         helper.make_node("Tanh", ["t_mm"], ["t_tanh"]),
         helper.make_node("MatMul", ["t_tanh", "w"], ["t_mm2"]),
         helper.make_node("Add", ["t_mm2", "x"], ["t_add"]),
         helper.make_node("Tanh", ["t_add"], ["t_out"]),
         helper.make_node("Abs", ["x"], ["t_side"])],
        "then", [], [_value("t_out", TensorProto.FLOAT, [1, 16]),
                     _value("t_side", TensorProto.FLOAT, [1, 16])])
    else_branch = helper.make_graph(
        [helper.make_node("Reshape", ["x", "img_shape"], ["e_img"]),
         helper.make_node("Conv", ["e_img", "k"], ["e_conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["e_conv"], ["e_sig"]),
         helper.make_node("ReduceMean", ["e_sig"], ["e_mean"], axes=[1], keepdims=0),
         helper.make_node("Mul", ["e_mean", "e_mean"], ["e_sq"]),
         helper.make_node("Reshape", ["e_sq", "flat_shape"], ["e_out"]),
         helper.make_node("Identity", ["x"], ["e_side"])],
        "else", [], [_value("e_out", TensorProto.FLOAT, [1, 16]),
                     _value("e_side", TensorProto.FLOAT, [1, 16])],
        initializer=[_array("img_shape", np.array([1, 1, 4, 4], np.int64)),
                     _array("flat_shape", np.array([1, 16], np.int64))])
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["main", "side"], then_branch=then_branch,
                              else_branch=else_branch),
             helper.make_node("Add", ["main", "side"], ["y"])]
    return _save(directory / "two_paths.onnx", nodes,
                 [_value("x", TensorProto.FLOAT, [1, 16])],
                 [_value("y", TensorProto.FLOAT, [1, 16]),
                  _value("side", TensorProto.FLOAT, [1, 16])],
                 (_array("w", w), _array("k", k), _array("zero", np.array(0.0, np.float32))))


def vad_model(directory: Path) -> Path:
    """The voice-activity-detector pattern: an audio frame `x` [1, 64], a sample rate `sr`
    (int64 scalar) and LSTM state `h`, `c` [1, 1, 8] in; `If sr == 16000` chooses between two
    preprocessing paths of equal output shape [4, 1, 16] (16 kHz: a strided Conv filterbank and
    ReLU; else: the first half of the frame through a Gemm and Tanh), then an LSTM over the
    4 steps with the state; out: a speech probability (Sigmoid of a Gemm of the last hidden state)
    and the new `hn`, `cn`."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(18)
    fb = rng.uniform(-0.5, 0.5, (16, 1, 16)).astype(np.float32)  # 16 filters, width 16, stride 16
    g = rng.uniform(-0.5, 0.5, (32, 64)).astype(np.float32)
    w = rng.uniform(-0.4, 0.4, (1, 4 * HIDDEN, 16)).astype(np.float32)
    r = rng.uniform(-0.4, 0.4, (1, 4 * HIDDEN, HIDDEN)).astype(np.float32)
    b = rng.uniform(-0.2, 0.2, (1, 8 * HIDDEN)).astype(np.float32)
    head = rng.uniform(-1, 1, (HIDDEN, 1)).astype(np.float32)
    feature = [_value("feat", TensorProto.FLOAT, [4, 1, 16])]
    then_branch = helper.make_graph(
        [helper.make_node("Reshape", ["x", "sig_shape"], ["t_sig"]),
         helper.make_node("Conv", ["t_sig", "fb"], ["t_bank"], strides=[16]),  # [1, 16, 4]
         helper.make_node("Relu", ["t_bank"], ["t_relu"]),
         helper.make_node("Transpose", ["t_relu"], ["feat"], perm=[2, 0, 1])],
        "rate16k", [], feature, initializer=[_array("sig_shape", np.array([1, 1, 64], np.int64))])
    else_branch = helper.make_graph(
        [helper.make_node("Slice", ["x", "zero1", "half", "one1"], ["e_half"]),
         helper.make_node("Reshape", ["e_half", "rows"], ["e_rows"]),  # [4, 8]
         helper.make_node("Gemm", ["e_rows", "g"], ["e_gemm"], transB=1),  # [4, 32]? see below
         helper.make_node("Slice", ["e_gemm", "zero1", "sixteen", "one1"], ["e_cut"]),
         helper.make_node("Tanh", ["e_cut"], ["e_tanh"]),
         helper.make_node("Reshape", ["e_tanh", "feat_shape"], ["feat"])],
        "rate8k", [], feature,
        initializer=[_array("zero1", np.array([0], np.int64)),
                     _array("half", np.array([32], np.int64)),
                     _array("one1", np.array([1], np.int64)),
                     _array("sixteen", np.array([16], np.int64)),
                     _array("rows", np.array([4, 8], np.int64)),
                     _array("g", g[:, :8].copy()),
                     _array("feat_shape", np.array([4, 1, 16], np.int64))])
    nodes = [helper.make_node("Equal", ["sr", "rate"], ["is_16k"]),
             helper.make_node("If", ["is_16k"], ["feat"], then_branch=then_branch,
                              else_branch=else_branch),
             helper.make_node("LSTM", ["feat", "W", "R", "B", "", "h", "c"],
                              ["", "h_last", "cn_raw"], hidden_size=HIDDEN),
             helper.make_node("Identity", ["h_last"], ["hn"]),
             helper.make_node("Identity", ["cn_raw"], ["cn"]),
             helper.make_node("Reshape", ["h_last", "hid_shape"], ["h_flat"]),
             helper.make_node("MatMul", ["h_flat", "head"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob"])]
    inits = (_array("rate", np.array(16000, np.int64)), _array("fb", fb), _array("W", w),
             _array("R", r), _array("B", b), _array("head", head),
             _array("hid_shape", np.array([1, HIDDEN], np.int64)))
    state = [1, 1, HIDDEN]
    return _save(directory / "vad.onnx", nodes,
                 [_value("x", TensorProto.FLOAT, [1, FRAME]), _value("sr", TensorProto.INT64, []),
                  _value("h", TensorProto.FLOAT, state), _value("c", TensorProto.FLOAT, state)],
                 [_value("prob", TensorProto.FLOAT, [1, 1]), _value("hn", TensorProto.FLOAT, state),
                  _value("cn", TensorProto.FLOAT, state)], inits)


def _inputs(name: str, condition: object) -> dict[str, np.ndarray]:
    """The inputs of model `name` taking the then (`condition` true) or else path."""
    rng = np.random.default_rng(7)
    if name == "input_condition":
        return {"x": rng.uniform(-1, 1, (2, 8)).astype(np.float32),
                "flag": np.array(bool(condition))}
    if name == "two_paths":
        x = rng.uniform(0.1, 1, (1, 16)).astype(np.float32)
        return {"x": x if condition else -x}
    return {"x": rng.uniform(-1, 1, (1, FRAME)).astype(np.float32),
            "sr": np.array(RATES[0] if condition else RATES[1], np.int64),
            "h": rng.uniform(-0.5, 0.5, (1, 1, HIDDEN)).astype(np.float32),
            "c": rng.uniform(-0.5, 0.5, (1, 1, HIDDEN)).astype(np.float32)}


BUILDERS = {"input_condition": input_condition_model, "two_paths": two_paths_model,
            "vad": vad_model}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """name → (model path, archive), each model compiled once."""
    require_program("gcc", "gcc")
    out = tmp_path_factory.mktemp("control-flow")
    cache: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in cache:
            path = BUILDERS[name](out)
            result = microexport.compile(path, out / f"{name}.tar", name=name)
            cache[name] = (path, result.archive)
        return cache[name]

    return get  # type: ignore[return-value]


def _onnxruntime(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def _check_outputs(got: dict[str, np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for (name, value), expected in zip(got.items(), want, strict=True):
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("condition", [True, False], ids=["then", "else"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_host_matches_onnxruntime_on_both_paths(name: str, condition: bool,
                                                compiled: object) -> None:
    require_module("onnxruntime", "onnx")
    path, archive = compiled(name)  # type: ignore[operator]
    inputs = _inputs(name, condition)
    _check_outputs(microexport.run(archive, inputs), _onnxruntime(path, inputs))


def test_two_paths_take_different_branches(compiled: object) -> None:
    """The two inputs of `two_paths` really take different branches (onnxruntime's outputs
    differ in kind: Tanh values in (-1, 1) against squares of sigmoid means)."""
    require_module("onnxruntime", "onnx")
    path, _ = compiled("two_paths")  # type: ignore[operator]
    then = _onnxruntime(path, _inputs("two_paths", True))[1]
    other = _onnxruntime(path, _inputs("two_paths", False))[1]
    np.testing.assert_array_equal(then, np.abs(_inputs("two_paths", True)["x"]))
    np.testing.assert_array_equal(other, _inputs("two_paths", False)["x"])


@pytest.mark.parametrize("condition", [True, False], ids=["then", "else"])
def test_vad_in_qemu_on_both_paths(condition: bool, compiled: object) -> None:
    require_module("onnxruntime", "onnx")
    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")
    path, archive = compiled("vad")  # type: ignore[operator]
    inputs = _inputs("vad", condition)
    got = microexport.run(archive, inputs, board="mps2_an386")
    _check_outputs(got, _onnxruntime(path, inputs))


def nested_model(directory: Path) -> Path:
    """An `If` on `sr >= 16000` whose else branch computes a second condition (`sr >= 8000`)
    and holds an `If` on it; both levels use outer values (`x`, a weight of the main graph), the
    inner branches have intermediates of their own."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(23)
    w = rng.uniform(-1, 1, (16, 16)).astype(np.float32)

    def branch(name: str, nodes: list, out: str) -> object:
        return helper.make_graph(nodes, name, [], [_value(out, TensorProto.FLOAT, [1, 16])])

    inner = helper.make_node(
        "If", ["at_least_8k"], ["inner"],
        then_branch=branch("mid", [helper.make_node("MatMul", ["x", "w"], ["m1"]),
                                   helper.make_node("Tanh", ["m1"], ["m2"]),
                                   helper.make_node("MatMul", ["m2", "w"], ["v"])], "v"),
        else_branch=branch("low", [helper.make_node("Sigmoid", ["x"], ["l1"]),
                                   helper.make_node("MatMul", ["l1", "w"], ["l2"]),
                                   helper.make_node("Neg", ["l2"], ["v2"])], "v2"))
    outer = helper.make_node(
        "If", ["at_least_16k"], ["chosen"],
        then_branch=branch("high", [helper.make_node("Tanh", ["x"], ["t"])], "t"),
        else_branch=branch("lower", [
            helper.make_node("GreaterOrEqual", ["sr", "r8k"], ["at_least_8k"]), inner,
            helper.make_node("Abs", ["inner"], ["e"])], "e"))
    nodes = [helper.make_node("GreaterOrEqual", ["sr", "r16k"], ["at_least_16k"]), outer,
             helper.make_node("Sub", ["chosen", "x"], ["y"])]
    inits = (_array("r16k", np.array(16000, np.int64)), _array("r8k", np.array(8000, np.int64)),
             _array("w", w))
    return _save(directory / "nested.onnx", nodes,
                 [_value("x", TensorProto.FLOAT, [1, 16]), _value("sr", TensorProto.INT64, [])],
                 [_value("y", TensorProto.FLOAT, [1, 16])], inits)


@pytest.mark.parametrize("io_in_workspace", [False, True], ids=["io-outside", "io-inside"])
def test_nested_ifs_on_every_path(io_in_workspace: bool, tmp_path: Path) -> None:
    """Nested Ifs: an if inside the else of the outer one in the main; all three paths match
    onnxruntime, also with inputs and outputs planned in the workspace and two pools (the first
    small)."""
    require_module("onnxruntime", "onnx")
    require_program("gcc", "gcc")
    from microexport.model import PoolSpec

    path = nested_model(tmp_path)
    pools = (PoolSpec("fast", 128), PoolSpec("slow")) if io_in_workspace else ()
    result = microexport.compile(path, tmp_path / "nested.tar", name="nested",
                                 io_in_workspace=io_in_workspace, pools=pools)
    graph = load_graph(_archive_text(result.archive, "graph.json"))
    outer, inner = graph["branches"]
    assert outer["parent"] is None and inner["parent"] == {"branch": 0, "side": "else"}
    lib = _archive_text(result.archive, "tvmgen_nested_lib.c")
    main = lib[lib.index("int32_t tvmgen_nested___tvm_main__("):]
    main = main[:main.index("\n}\n")]
    assert main.count("} else {") == 2
    x = np.random.default_rng(4).uniform(-1, 1, (1, 16)).astype(np.float32)
    for rate in (16000, 8000, 4000):
        inputs = {"x": x, "sr": np.array(rate, np.int64)}
        _check_outputs(microexport.run(result.archive, inputs), _onnxruntime(path, inputs))


def _archive_text(archive: Path, suffix: str) -> str:
    with tarfile.open(archive) as tar:
        (member,) = [m for m in tar.getnames() if m.endswith(suffix)]
        data = tar.extractfile(member)
        assert data is not None
        return data.read().decode()


def test_main_has_an_if_over_each_branch_s_kernels(compiled: object) -> None:
    """The AOT main tests the condition tensor and calls the kernels of one branch or the
    other; graph.json lists the branch nodes; the graph-walker runtime refuses in one line."""
    _, archive = compiled("vad")  # type: ignore[operator]
    lib = _archive_text(archive, "tvmgen_vad_lib.c")
    main = lib[lib.index("int32_t tvmgen_vad___tvm_main__(float* x"):]
    main = main[:main.index("\n}\n")]
    assert main.count("if (") - main.count("if (status_") == 1
    assert "} else {" in main
    graph = load_graph(_archive_text(archive, "graph.json"))
    (branch,) = graph["branches"]
    assert branch["parent"] is None and branch["then"] and branch["else"]
    kernels = [{graph["nodes"][i]["kernel"] for i in branch[side]} for side in ("then", "else")]
    assert not kernels[0] & kernels[1]  # different kernels on the two paths
    assert any("conv" in k for k in kernels[0]) and not any("conv" in k for k in kernels[1])
    condition = next(t for t in graph["tensors"] if t["name"] == branch["condition"])
    assert condition["dtype"] == "bool" and condition["size"] == 1
    with pytest.raises(TirJsonError, match=r"^\$\.branches: .*run-time Ifs"):
        render_graph_walker(graph)


def test_tir_json_holds_both_branches(compiled: object) -> None:
    """The TIR JSON of the main (stage lowered) has the IfThenElse with both sides' calls, and
    graph.json derives from it alone."""
    _, archive = compiled("two_paths")  # type: ignore[operator]
    with tarfile.open(archive) as tar:
        names = [m for m in tar.getnames() if m.endswith(".json") and "tir" in m]
        texts = {m: tar.extractfile(m).read().decode() for m in names}  # type: ignore[union-attr]
    assert texts, "no TIR JSON in the archive"
    found = False
    for text in texts.values():
        doc = json.loads(text)
        if doc.get("format") != "microexport-tir":
            continue
        graph = graph_from_tir(doc)
        if graph.get("branches"):
            (branch,) = graph["branches"]
            assert len(branch["then"]) >= 2 and len(branch["else"]) >= 2
            found = True
    assert found


def _plan(path: Path, **options: object) -> tuple[object, MemoryPlan, object]:
    lowered = lower(import_model(path))
    plan = plan_memory(lowered.schedule, lowered.scratch, **options)  # type: ignore[arg-type]
    return lowered.schedule, plan, lowered.scratch


@pytest.mark.parametrize("io_in_workspace", [False, True])
def test_plan_shares_memory_between_branches_and_is_checked_per_path(
        io_in_workspace: bool, tmp_path: Path) -> None:
    schedule, plan, scratch = _plan(two_paths_model(tmp_path), io_in_workspace=io_in_workspace)
    (branch,) = schedule.branches  # type: ignore[attr-defined]
    roots = [{schedule.root(n) for s in range(*side)  # type: ignore[attr-defined]
              for n in schedule.calls[s].outputs}  # type: ignore[attr-defined]
             for side in (branch.then, branch.orelse)]
    local = [{r for r in side if r in plan.lives and plan.lives[r][1] < branch.span[1]}
             for side in roots]

    def span(name: str) -> tuple[int, int]:
        offset = plan.placements[name][1]
        return offset, offset + schedule.tensors[name].nbytes  # type: ignore[attr-defined]

    shared = [(a, b) for a in local[0] for b in local[1]
              if span(a)[0] < span(b)[1] and span(b)[0] < span(a)[1]]
    assert shared, "no buffer of one branch shares memory with one of the other"
    check_plan(plan, schedule, scratch)  # type: ignore[arg-type]
    # The liveness lower bound is the larger path's, at most the one over the call order.
    from microexport.compiler.plan import io_intervals, live_intervals, lower_bound

    in_order = lower_bound(live_intervals(schedule, scratch)[0]  # type: ignore[arg-type]
                           + io_intervals(schedule),  # type: ignore[arg-type]
                           len(schedule.calls))  # type: ignore[attr-defined]
    assert 0 < plan.lower_bound_bytes <= in_order
    if io_in_workspace:
        assert plan.lower_bound_bytes <= plan.workspace_bytes


def test_per_path_check_finds_overlaps_on_a_path(tmp_path: Path) -> None:
    """The path-by-path check (run by check_plan besides the schedule-order one) on a plan
    whose else branch has a kernel's output on top of its input: refused, naming the path."""
    from dataclasses import replace

    from microexport.compiler.plan import _check_paths, _required_lives

    schedule, plan, scratch = _plan(two_paths_model(tmp_path))
    (branch,) = schedule.branches  # type: ignore[attr-defined]
    step = next(s for s in range(*branch.orelse)
                if all(schedule.root(n) in plan.placements  # type: ignore[attr-defined]
                       for n in schedule.calls[s].inputs[:1] + schedule.calls[s].outputs))
    call = schedule.calls[step]  # type: ignore[attr-defined]
    source, target = (schedule.root(call.inputs[0]),  # type: ignore[attr-defined]
                      schedule.root(call.outputs[0]))  # type: ignore[attr-defined]
    broken = replace(plan, placements={**plan.placements, target: plan.placements[source]})
    spans = {}
    for name, (size, _, _) in _required_lives(broken, schedule, scratch).items():
        pool, offset = broken.placements[name]
        spans[name] = (pool, offset, offset + size)

    def fail(problem: str) -> None:
        raise InvalidPlan(problem)

    with pytest.raises(InvalidPlan, match=r"overlap .* of the path \[.*If on"):
        _check_paths(broken, schedule, scratch, spans, fail)  # type: ignore[arg-type]
    with pytest.raises(InvalidPlan, match="overlap"):
        check_plan(broken, schedule, scratch)  # type: ignore[arg-type]


def test_constant_sample_rate_folds_the_if_away(tmp_path: Path) -> None:
    """`constants={"sr": ...}` (the CLI's --constant) still inlines the branch taken: no If in
    the Relax module nor in the main, and the result matches onnxruntime with that rate."""
    require_module("onnxruntime", "onnx")
    require_program("gcc", "gcc")
    path = vad_model(tmp_path)
    for condition in (True, False):
        inputs = _inputs("vad", condition)
        constants = {"sr": inputs.pop("sr")}
        imported = import_model(path, constants=constants)
        assert "R.If" not in imported.mod.script() and "if " not in imported.mod.script()
        result = microexport.compile(path, tmp_path / f"vad_{condition}.tar", name="vad",
                                     constants=constants)
        assert "branches" not in load_graph(_archive_text(result.archive, "graph.json"))
        _check_outputs(microexport.run(result.archive, inputs),
                       _onnxruntime(path, {**inputs, **constants}))


def test_branches_of_different_shapes_are_one_line_errors(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    then_branch = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                                    [_value("t", TensorProto.FLOAT, [2, 8])])
    else_branch = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["e"], keepdims=1)], "else", [],
        [_value("e", TensorProto.FLOAT, [1, 1])])
    nodes = [helper.make_node("If", ["flag"], ["y"], then_branch=then_branch,
                              else_branch=else_branch)]
    path = tmp_path / "mismatch.onnx"
    _save(path, nodes, [_value("x", TensorProto.FLOAT, [2, 8]),
                        _value("flag", TensorProto.BOOL, [])],
          [_value("y", TensorProto.FLOAT, ["a", "b"])])
    with pytest.raises(Error) as info:
        microexport.compile(path, tmp_path / "mismatch.tar")
    text = str(info.value)
    assert "\n" not in text and "If" in text and "--constant" in text


IF_NODE_TESTS = {  # the ONNX backend node tests of If: name → None (passes) or the refusal
    "test_if": None,
    "test_if_seq": "gives output 0 as a sequence",
    "test_if_opt": "gives output 0 as an optional",
}


@pytest.mark.parametrize("name", list(IF_NODE_TESTS))
def test_onnx_if_node_tests(name: str, tmp_path: Path) -> None:
    """The `If` node tests of the installed onnx package, run as bench/onnx_conformance.py
    runs them (condition an input, so compiled as a run-time If): the tensor one passes, the
    sequence and optional ones are one-line refusals."""
    import sys
    import warnings

    from onnx import TensorProto, numpy_helper
    from onnx.backend.test.case import node as node_cases

    require_program("gcc", "gcc")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import onnx_conformance as conformance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (case,) = [c for c in node_cases.collect_testcases() if c.name == name]
    data = tmp_path / name / "test_data_set_0"
    data.mkdir(parents=True)
    (tmp_path / name / "model.onnx").write_bytes(case.model.SerializeToString())
    inputs, outputs = case.data_sets[0]
    for kind, arrays, values in (("input", inputs, case.model.graph.input),
                                 ("output", outputs, case.model.graph.output)):
        for i, (array, value) in enumerate(zip(arrays, values, strict=False)):
            tensor = (array if isinstance(array, TensorProto)
                      else numpy_helper.from_array(np.asarray(array), value.name))
            (data / f"{kind}_{i}.pb").write_bytes(tensor.SerializeToString())
    result = conformance.run_one(tmp_path / name)
    refusal = IF_NODE_TESTS[name]
    if refusal is None:
        assert result["status"] == "pass", result
    else:
        assert result["status"] == "error: ModelError", result
        assert refusal in result["detail"] and "\n" not in result["detail"]


@pytest.mark.parametrize("condition", [True, False], ids=["then", "else"])
def test_vad_matches_tvm_s_own_build(condition: bool, compiled: object) -> None:
    """Differential: our C against TVM's LLVM build (Relax VM) of the same imported module with
    its relax.If, on both paths (a 0-d input reaches the VM as 0-d)."""
    from microexport.api import import_model as load
    from microexport.deploy.reference import run_tvm

    path, archive = compiled("vad")  # type: ignore[operator]
    inputs = _inputs("vad", condition)
    _check_outputs(microexport.run(archive, inputs), run_tvm(load(path), inputs))
