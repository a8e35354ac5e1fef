"""Differential fuzzing in CI: random ONNX graphs (tests/random_models.py, fixed seeds) compiled
through the public API, run on the host and compared with onnxruntime, random TFLite graphs
compared with TFLite Micro; the shrunk reproducers of bugs found so far
(tests/fuzz_reproducers/*.json) as regression tests.

`FUZZ_GRAPHS` ONNX graphs run here, `FUZZ_BATCH` per compilation, and `TFLITE_GRAPHS` TFLite
ones (about 0.35 s per graph on 2 idle cores, 1 s under load; the environment variables
MICROEXPORT_FUZZ_GRAPHS / MICROEXPORT_FUZZ_TFLITE_GRAPHS change the counts); bench/fuzz.py runs
thousands. A failing ONNX graph is shrunk and written to the test's temporary directory (the
assertion message names it); a failing TFLite graph is cut after the earliest tensor that still
fails (`random_models.shrink_tflite_seed`; `write_random_tflite([seed], path, output_at=N)`
rebuilds it: `check_tflite_seeds([seed], output_at=N)` is its regression test).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import random_models
from random_models import Graph, random_graph, shrink
from support import require_module, require_program

FUZZ_GRAPHS = int(os.environ.get("MICROEXPORT_FUZZ_GRAPHS", "300"))
FUZZ_BATCH = 25
TFLITE_GRAPHS = int(os.environ.get("MICROEXPORT_FUZZ_TFLITE_GRAPHS", "120"))
TFLITE_BATCH = 20
SHRINK_BUDGET = 20
REPRODUCERS = sorted((Path(__file__).parent / "fuzz_reproducers").glob("*.json"))

# What the generator must cover over the CI seeds (the operator list).
COVERED_OPS = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Pad", "Concat", "Split",
               "Reshape", "Flatten", "Transpose", "Slice", "Add", "Mul", "Sub", "Identity",
               "Cast", "DequantizeLinear", "Gemm", "MatMul", "Softmax", "Relu", "Clip"}


def test_random_graphs_are_deterministic_valid_and_cover_the_operators() -> None:
    require_module("onnx", "onnx")
    ops: Counter[str] = Counter()
    depthwise = multi_output = broadcast = 0
    for seed in range(FUZZ_GRAPHS):
        graph = random_graph(seed)
        assert graph.to_json() == random_graph(seed).to_json()
        assert Graph.from_json(graph.to_json()).to_json() == graph.to_json()
        graph.to_model()  # onnx.checker with full shape inference: our shapes are ONNX's
        ops.update(node.op for node in graph.nodes)
        depthwise += any(n.op == "Conv" and dict(n.attrs)["group"] > 1 for n in graph.nodes)
        multi_output += len(graph.outputs) > 1
        broadcast += any(n.op in ("Add", "Sub", "Mul")
                         and len({tuple(graph.shapes.get(i, ())) for i in n.inputs}) > 1
                         for n in graph.nodes)
    assert set(ops) >= COVERED_OPS, COVERED_OPS - set(ops)
    assert min(depthwise, multi_output, broadcast) >= FUZZ_GRAPHS // 20


TFLITE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "PAD",
              "CONCATENATION", "SPLIT", "RESHAPE", "TRANSPOSE", "MEAN", "ADD", "SUB", "MUL",
              "FULLY_CONNECTED", "SOFTMAX", "DEQUANTIZE"}


def test_random_tflite_graphs_are_deterministic_and_cover_the_operators(tmp_path: Path) -> None:
    require_module("tflite_micro", "tflite")
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    seeds = list(range(TFLITE_GRAPHS))
    first, second = tmp_path / "a.tflite", tmp_path / "b.tflite"
    random_models.write_random_tflite(seeds, first)
    random_models.write_random_tflite(seeds, second)
    assert first.read_bytes() == second.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(first.read_bytes(), 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    ops = {names[model.operatorCodes[op.opcodeIndex].builtinCode]
           for op in model.subgraphs[0].operators}
    assert ops >= TFLITE_OPS, TFLITE_OPS - ops


def test_every_layout_is_checked() -> None:
    """The CI batches rotate through every compile-option layout."""
    batches = range(0, FUZZ_GRAPHS, FUZZ_BATCH)
    assert set(random_models.LAYOUTS) == set(random_models._layouts())
    assert len(batches) >= len(random_models.LAYOUTS)


def test_shrink_keeps_the_failure_and_drops_the_rest() -> None:
    """Shrinking against a predicate of the graph alone (no compiler): "has a Pad node"."""
    require_module("onnx", "onnx")
    graph = next(g for g in map(random_graph, range(100))
                 if len(g.nodes) >= 6 and any(n.op == "Pad" for n in g.nodes))
    small = shrink(graph, lambda g: any(n.op == "Pad" for n in g.nodes), budget=200)
    assert [n.op for n in small.nodes] == ["Pad"]
    assert len(small.outputs) == 1
    small.to_model()


@pytest.mark.parametrize("first", range(0, FUZZ_GRAPHS, FUZZ_BATCH),
                         ids=lambda first: f"seeds{first}-{first + FUZZ_BATCH - 1}")
def test_random_graphs_match_onnxruntime(first: int, tmp_path: Path) -> None:
    require_module("onnxruntime", "onnx")
    require_program("gcc", "gcc")
    seeds = range(first, min(first + FUZZ_BATCH, FUZZ_GRAPHS))
    layout = random_models.LAYOUTS[first // FUZZ_BATCH % len(random_models.LAYOUTS)]
    outcomes = random_models.check_batch([random_graph(s) for s in seeds],
                                         shrink_budget=SHRINK_BUDGET, layout=layout)
    failed = [o for o in outcomes if o.status != "pass"]
    for outcome in failed:
        (tmp_path / f"{outcome.graph.name}.json").write_text(outcome.graph.to_json())
    assert not failed, "\n".join(
        f"{o.status} {o.attribution}: {o.graph.summary()}: {o.detail} (reproducer: "
        f"{tmp_path / (o.graph.name + '.json')})" for o in failed)


@pytest.mark.parametrize("first", range(0, TFLITE_GRAPHS, TFLITE_BATCH),
                         ids=lambda first: f"seeds{first}-{first + TFLITE_BATCH - 1}")
def test_random_tflite_graphs_match_tflite_micro(first: int) -> None:
    require_module("tflite_micro", "tflite")
    require_program("gcc", "gcc")
    seeds = list(range(first, min(first + TFLITE_BATCH, TFLITE_GRAPHS)))
    results = random_models.check_tflite_seeds(seeds)
    failed = {seed: result for seed, result in results.items() if result[0] != "pass"}
    assert not failed, "\n".join(
        f"TFLite seed {seed}: {status}: {detail} (reproducer: seed {seed}, output_at "
        f"{random_models.shrink_tflite_seed(seed, status)})"
        for seed, (status, detail) in failed.items())


def test_tflite_graph_cut_after_a_produced_tensor(tmp_path: Path) -> None:
    """The TFLite shrinker's cut: the graph of a seed with the `output_at`-th tensor it
    produces as its only output, still matching TFLite Micro."""
    require_module("tflite_micro", "tflite")
    require_program("gcc", "gcc")
    full = random_models.write_random_tflite([3], tmp_path / "full.tflite")
    cut = random_models.write_random_tflite([3], tmp_path / "cut.tflite", output_at=0)
    assert len(cut[3]) == 1 and cut[3][0] != full[3][0]
    assert random_models.check_tflite_seeds([3], output_at=0) == {3: ("pass", "")}


@pytest.mark.parametrize("path", REPRODUCERS, ids=[p.stem for p in REPRODUCERS])
def test_fuzz_reproducer_passes(path: Path) -> None:
    """A bug the fuzzer found, shrunk: fixed, it stays fixed."""
    require_module("onnxruntime", "onnx")
    require_program("gcc", "gcc")
    outcome = random_models.check_one(Graph.from_json(path.read_text()))
    assert outcome.status == "pass", f"{outcome.status}: {outcome.detail}"
