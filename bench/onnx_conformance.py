"""The ONNX backend node tests as a conformance benchmark for microexport.

    python bench/onnx_conformance.py [--jobs 2] [--timeout 120] [--cache DIR] [-k SUBSTRING]

Generates the node tests that ship (as generators) with the installed `onnx` package into a
cache directory (once), then runs every test through `microexport.compile` + host `run`, in
`--jobs` worker processes with a timeout per test, and compares with the test's expected outputs
at the suite's tolerances (rtol 1e-3, atol 1e-7; rtol 2**-6 for bfloat16 outputs, as the
suite's runner). Each test ends in one category:

- `pass`;
- `wrong result` (an output differs in shape, dtype class or values);
- `error: <class>`: a one-line `microexport.errors` error (the expected way to refuse);
- `C compile error`: the generated C does not build with the host gcc;
- `run error`: the built program fails;
- `traceback`: any other exception (a bug);
- `timeout`.

After a full run, the tests that did not pass and have parameter inputs (integer inputs:
shapes, axes, indices, sizes, counts; and Resize scales, Pad values) run again with those inputs
frozen to the test's own values (`constants=`, the Python form of `--constant`), as a
deployment fixing them would: the section reports that count separately.

The summary goes to the "ONNX conformance" section of bench/RESULTS.md (`--no-write` prints it
only); every result is kept as JSON in the cache directory (`results.json`,
`results_frozen.json`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "microexport-onnx-node-tests"
RTOL, ATOL = 1e-3, 1e-7
BFLOAT16_RTOL = 2.0 ** -6  # onnx.backend.test.runner's tolerance for bfloat16 outputs
SECTION_BEGIN = "<!-- onnx-conformance:begin -->"
SECTION_END = "<!-- onnx-conformance:end -->"

PASS = "pass"
WRONG = "wrong result"
COMPILE_ERROR = "C compile error"
RUN_ERROR = "run error"
TRACEBACK = "traceback"
TIMEOUT = "timeout"
ERROR_PREFIX = "error: "


def generate(cache: Path) -> Path:
    """Write the onnx package's node tests to `cache/node` (once) and return that directory."""
    node_dir = cache / "node"
    stamp = cache / "generated.stamp"
    if stamp.is_file() and node_dir.is_dir():
        return node_dir
    import onnx.backend.test.case.model as model_test
    import onnx.backend.test.case.node as node_test
    from onnx.backend.test import cmd_tools

    cache.mkdir(parents=True, exist_ok=True)
    original = model_test.collect_testcases
    model_test.collect_testcases = node_test.collect_testcases  # the writer takes any cases
    try:
        cmd_tools.generate_data(argparse.Namespace(output=str(cache)))
    finally:
        model_test.collect_testcases = original
    import onnx

    stamp.write_text(f"onnx {onnx.__version__}\n", encoding="utf-8")
    return node_dir


def test_dirs(node_dir: Path, pattern: str | None = None) -> list[Path]:
    """The test directories (those with a model.onnx), sorted, optionally filtered by a
    substring of the name."""
    dirs = sorted(p.parent for p in node_dir.glob("*/model.onnx"))
    return [d for d in dirs if pattern is None or pattern in d.name]


# --------------------------------------------------------------------------------------------
# one test
# --------------------------------------------------------------------------------------------


def read_tensor(path: Path) -> Any:
    """A TensorProto .pb file as a numpy array."""
    import onnx
    from onnx import numpy_helper

    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def test_data(test_dir: Path) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The inputs (graph input name → array) and expected outputs (name, array) of data set 0."""
    import onnx

    model = onnx.load(str(test_dir / "model.onnx"), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    data = test_dir / "test_data_set_0"
    inputs = {
        value.name: read_tensor(data / f"input_{i}.pb")
        for i, value in enumerate(model.graph.input)
        if value.name not in weights and (data / f"input_{i}.pb").is_file()
    }
    outputs = [(value.name, read_tensor(data / f"output_{i}.pb"))
               for i, value in enumerate(model.graph.output)]
    return inputs, outputs


def compare(got: Any, want: Any) -> str | None:
    """Why `got` does not match `want` at the suite's tolerances, or None."""
    import numpy as np

    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"shape {got.shape} != expected {want.shape}"
    if want.dtype.kind in "OUS" or want.dtype == bool or got.dtype == bool:
        return None if np.array_equal(got, want) else "values differ"
    # bfloat16 outputs: two bfloat16 ULPs relative, as onnx's own backend test runner allows
    rtol = max(RTOL, BFLOAT16_RTOL) if want.dtype.name == "bfloat16" else RTOL
    try:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                   rtol=rtol, atol=ATOL, equal_nan=True)
    except AssertionError:
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        return f"max abs error {np.nanmax(diff) if diff.size else 0:.3g}"
    return None


# Float operator inputs that are parameters, not data (operator → input positions).
FLOAT_PARAMETERS = {"Resize": (1, 2), "Upsample": (1,), "Pad": (2,)}


def parameter_inputs(test_dir: Path) -> dict[str, Any]:
    """The test's inputs a deployment would fix: those of integer (or bool) type (shapes,
    axes, indices, sizes, counts) and the float parameters of `FLOAT_PARAMETERS` (scales,
    pad values), with the test's values; empty when its data cannot be read."""
    import onnx

    try:
        inputs = test_data(test_dir)[0]
    except Exception:  # noqa: BLE001 - sequence/optional inputs the reader cannot parse
        return {}
    model = onnx.load(str(test_dir / "model.onnx"), load_external_data=False)
    parameters = {node.input[i] for node in model.graph.node
                  for i in FLOAT_PARAMETERS.get(node.op_type, ()) if i < len(node.input)}
    return {name: value for name, value in inputs.items()
            if getattr(value, "dtype", None) is not None
            and (value.dtype.kind in "iub" or name in parameters)}


def run_one(test_dir: Path, frozen: bool = False) -> dict[str, Any]:
    """Compile + host run one node test (`frozen`: its integer inputs frozen to the test's
    values); its result record (name, status, detail)."""
    import microexport
    from microexport.errors import Error

    name = test_dir.name
    started = time.monotonic()

    def result(status: str, detail: str = "") -> dict[str, Any]:
        return {"name": name, "status": status, "detail": detail[:400],
                "seconds": round(time.monotonic() - started, 2)}

    with tempfile.TemporaryDirectory(prefix="onnx-conf-") as tmp:
        try:
            constants = parameter_inputs(test_dir) if frozen else None
            compiled = microexport.compile(test_dir / "model.onnx", Path(tmp) / "model.tar",
                                           name="model", constants=constants)
            inputs, expected = test_data(test_dir)
            specs = {spec.name for spec in compiled.model.inputs}
            got = microexport.run(compiled.archive, {k: v for k, v in inputs.items()
                                                     if k in specs},
                                  build_dir=Path(tmp) / "build")
        except Error as err:
            message = err.one_line()
            if message.startswith("compiling ") and " for host failed" in message:
                return result(COMPILE_ERROR, message)
            if message.startswith("running ") and " on host failed" in message:
                return result(RUN_ERROR, message)
            return result(ERROR_PREFIX + type(err).__name__, message)
        except Exception as err:  # noqa: BLE001 - a traceback is what this benchmark counts
            frames = traceback.extract_tb(err.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            text = " ".join(str(err).split())
            return result(TRACEBACK, f"{type(err).__name__} at {where}: {text}")
    for out_name, want in expected:
        if out_name not in got:
            return result(WRONG, f"output '{out_name}' missing")
        why = compare(got[out_name], want)
        if why is not None:
            return result(WRONG, f"output '{out_name}': {why}")
    return result(PASS)


# --------------------------------------------------------------------------------------------
# the worker pool (a timeout kills and replaces the worker)
# --------------------------------------------------------------------------------------------


def _worker(conn: Connection) -> None:
    import logging
    import os

    logging.disable(logging.CRITICAL)
    devnull = os.open(os.devnull, os.O_WRONLY)  # TVM and gcc chatter on fd 2
    os.dup2(devnull, 2)
    while True:
        task = conn.recv()
        if task is None:
            return
        path, frozen = task
        try:
            conn.send(run_one(Path(path), frozen))
        except BaseException as err:  # noqa: BLE001 - report, never die silently
            conn.send({"name": Path(path).name, "status": TRACEBACK,
                       "detail": f"{type(err).__name__} in the harness: {err}"[:400],
                       "seconds": 0})


def _interrupt(signum: int, frame: object) -> None:
    del frame
    raise KeyboardInterrupt(f"signal {signum}")


class _Slot:
    """One worker process with its pipe and current task."""

    def __init__(self, ctx: Any, frozen: bool = False) -> None:
        self.frozen = frozen
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.task: Path | None = None
        self.started = 0.0

    def give(self, task: Path) -> None:
        self.task, self.started = task, time.monotonic()
        self.conn.send((str(task), self.frozen))

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


def run_all(tests: list[Path], jobs: int, timeout: float, progress: bool = True,
            frozen: bool = False) -> list[dict[str, Any]]:
    """Run `tests` in `jobs` workers (`frozen`: integer inputs frozen); a test running longer
    than `timeout` s is a timeout."""
    ctx = multiprocessing.get_context("spawn")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` ends the workers too
    pending = list(reversed(tests))
    slots = [_Slot(ctx, frozen) for _ in range(max(1, min(jobs, len(tests))))]
    results: list[dict[str, Any]] = []

    def record(res: dict[str, Any]) -> None:
        results.append(res)
        if progress:
            print(f"[{len(results)}/{len(tests)}] {res['name']}: {res['status']} "
                  f"{res['detail'][:120]}", flush=True)

    try:
        _drive(slots, pending, timeout, record, lambda: _Slot(ctx, frozen))
    finally:  # interrupted or done: no worker outlives the run
        for slot in slots:
            if slot.task is None:
                slot.conn.send(None)
                slot.process.join(timeout=10)
            if slot.process.is_alive():
                slot.kill()
    return sorted(results, key=lambda r: r["name"])


def _drive(slots: list[_Slot], pending: list[Path], timeout: float,
           record: Any, new_slot: Any) -> None:
    """Hand out `pending` tests to the worker `slots` until all are done."""
    for slot in slots:
        if pending:
            slot.give(pending.pop())
    while any(slot.task is not None for slot in slots):
        busy = [slot for slot in slots if slot.task is not None]
        ready = wait([slot.conn for slot in busy], timeout=1.0)
        for i, slot in enumerate(slots):
            if slot.task is None:
                continue
            if slot.conn in ready:
                try:
                    res = slot.conn.recv()
                except EOFError:  # the worker died (a crash inside TVM)
                    res = {"name": slot.task.name, "status": TRACEBACK,
                           "detail": f"worker died (exit code {slot.process.exitcode})",
                           "seconds": round(time.monotonic() - slot.started, 2)}
                    slot.kill()
                    slots[i] = slot = new_slot()
                record(res)
            elif time.monotonic() - slot.started > timeout:
                record({"name": slot.task.name, "status": TIMEOUT,
                        "detail": f"more than {timeout:g} s", "seconds": timeout})
                slot.kill()
                slots[i] = slot = new_slot()
            else:
                continue
            slot.task = None
            if pending:
                slot.give(pending.pop())


# --------------------------------------------------------------------------------------------
# the summary
# --------------------------------------------------------------------------------------------

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\b\d+(\.\d+)?\b")
_PATH = re.compile(r"/\S+")


def message_class(detail: str) -> str:
    """`detail` with names, paths and numbers blanked, to group similar failures."""
    text = _PATH.sub("<path>", detail)
    text = _QUOTED.sub("'…'", text)
    text = _NUMBER.sub("N", text)
    return text[:110]


def headline(results: list[dict[str, Any]]) -> str:
    """Pass count and the failures that must be zero, in one line."""
    total = len(results)
    by_status = Counter(r["status"] for r in results)
    passed = by_status.get(PASS, 0)
    return (f"**{passed} / {total} pass ({100 * passed / max(total, 1):.1f}%)**; "
            f"tracebacks: {by_status.get(TRACEBACK, 0)}, C compile errors: "
            f"{by_status.get(COMPILE_ERROR, 0)}, wrong results: {by_status.get(WRONG, 0)}, "
            f"timeouts: {by_status.get(TIMEOUT, 0)}.")


def _commit() -> str | None:
    """The checked-out commit (short hash, `+` if the work tree differs), or None."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "microexport"],
                               cwd=ROOT, check=False).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


# The MCU operator set of the correctness issue (issue 11, point 3): every node test of these
# operators should pass, except for types C has no type for and non-tensor values.
MCU_OPERATORS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "MaxPool", "GlobalAveragePool",
    "GlobalMaxPool", "LpPool", "GlobalLpPool", "BatchNormalization", "LayerNormalization",
    "InstanceNormalization", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Gelu", "Softplus", "Softsign", "Mish",
    "ThresholdedRelu", "Swish", "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean",
    "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare", "Pad", "Slice", "Split", "Concat", "Transpose",
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Resize", "Clip", "Cast",
    "CastLike", "CumSum", "Where", "Gather", "Expand", "Tile", "LSTM", "GRU", "RNN",
    "QuantizeLinear", "DequantizeLinear", "If",
})


# Refusals of what an MCU deployment does not have: C types, non-tensor values, training.
BY_DESIGN = re.compile(r"which C has no type for|is not a tensor|as a sequence|as an optional|"
                       r"training_mode|zero_point param datatype|Unsupported (input|output) "
                       r"datatype")


def tested_operator(test_dir: Path) -> str | None:
    """The operator a node test tests: its model's only node, or for an `_expanded` test
    (the operator written out as a function body) that of its unexpanded twin."""
    import onnx

    twin = re.sub(r"_expanded(_ver\d+)?$", "", test_dir.name)
    model = test_dir.parent / twin / "model.onnx"
    if not model.is_file():
        return None
    nodes = onnx.load(str(model), load_external_data=False).graph.node
    return nodes[0].op_type if len(nodes) == 1 else None


def mcu_lines(results: list[dict[str, Any]], frozen: list[dict[str, Any]] | None,
              node_dir: Path) -> list[str]:
    """The section's paragraph on the MCU operator set: how many of its tests pass, and why
    the others do not."""
    rescued = {r["name"] for r in frozen or [] if r["status"] == PASS}
    mcu = [r for r in results if tested_operator(node_dir / r["name"]) in MCU_OPERATORS]
    if not mcu:
        return []
    passed = sum(r["status"] == PASS for r in mcu)
    with_frozen = sum(r["status"] == PASS or r["name"] in rescued for r in mcu)
    failing = [r for r in mcu if r["status"] != PASS and r["name"] not in rescued]
    by_design = [r for r in failing if BY_DESIGN.search(r["detail"])]
    others = Counter(f"{r['status'].removeprefix(ERROR_PREFIX)}: {message_class(r['detail'])}"
                     for r in failing if r not in by_design)
    lines = [f"MCU operator set (`MCU_OPERATORS` in the script: convolutions, pools, "
             f"normalizations, activations, Softmax, Reduce*, shape operators, Resize, Clip, "
             f"Cast, CumSum, Where, Gather, Expand, Tile, LSTM, GRU, RNN, Q/DQ, If; "
             f"`_expanded` tests counted with their operator): **{passed} / {len(mcu)} pass "
             f"as they come, {with_frozen} with parameter inputs frozen**" + (
                 f". Of the {len(failing)} others, {len(by_design)} are one-line refusals by "
                 f"design: a type C has no type for (float8, float4, int2/int4 and their "
                 f"quantization), a value that is not a tensor (sequence, optional), "
                 f"BatchNormalization in training mode" + ("; the rest:" if others else ".")
                 if failing else "."), ""]
    if others:
        lines += ["| tests | error |", "|---|---|"]
        lines += [f"| {count} | {text.replace('|', '/')} |" for text, count in
                  others.most_common()] + [""]
    return lines


def summary(results: list[dict[str, Any]], seconds: float, jobs: int,
            baseline: tuple[str, list[dict[str, Any]]] | None = None,
            commit: str | None = None, frozen: list[dict[str, Any]] | None = None,
            node_dir: Path | None = None) -> str:
    """The markdown section for bench/RESULTS.md (`baseline`: a label and earlier results to
    show the headline of; `commit`: what was measured; `frozen`: the reruns with integer
    inputs frozen; `node_dir`: the generated tests, to break out the MCU operator set)."""
    import onnx

    total = len(results)
    by_status = Counter(r["status"] for r in results)
    lines = [
        "## ONNX conformance: the backend node tests through compile + host run",
        "",
        f"`python bench/onnx_conformance.py --jobs {jobs}` (onnx {onnx.__version__}: "
        f"{total} node tests as they come, no input frozen; rtol {RTOL:g} (2**-6 for bfloat16 "
        f"outputs), atol {ATOL:g}"
        + (f"; {seconds / 60:.0f} min on 2 shared cores" if seconds else "")
        + (f"; commit {commit})" if commit else ")"),
        "",
        headline(results),
        "",
    ]
    if frozen:
        rescued = {r["name"] for r in frozen if r["status"] == PASS}
        passed = sum(r["status"] == PASS or r["name"] in rescued for r in results)
        lines += [f"With parameter inputs (integer shapes, axes, indices, sizes; Resize scales, "
                  f"Pad values) frozen to the test's own values by `--constant`, as a "
                  f"deployment would fix them: **{passed} / {total} pass "
                  f"({100 * passed / max(total, 1):.1f}%)** ({len(rescued)} more of the "
                  f"{len(frozen)} failing tests with such inputs).", ""]
    if node_dir is not None:
        lines += mcu_lines(results, frozen, node_dir)
    if baseline is not None:
        lines += [f"{baseline[0]}: {headline(baseline[1])}", ""]
    lines += [
        "| result | tests |",
        "|---|---|",
    ]
    lines += [f"| {status} | {count} |" for status, count in by_status.most_common()]
    errors = Counter(
        f"{r['status'].removeprefix(ERROR_PREFIX)}: {message_class(r['detail'])}"
        for r in results if r["status"].startswith(ERROR_PREFIX)
    )
    lines += ["", "One-line errors, most frequent first (names and numbers blanked):", "",
              "| tests | error |", "|---|---|"]
    lines += [f"| {count} | {text.replace('|', '/')} |" for text, count in errors.most_common(25)]
    if len(errors) > 25:
        rest = sum(count for _, count in errors.most_common()[25:])
        lines.append(f"| {rest} | ({len(errors) - 25} other messages) |")
    for status in (TRACEBACK, COMPILE_ERROR, RUN_ERROR, WRONG, TIMEOUT):
        failed = [r for r in results if r["status"] == status]
        if not failed:
            continue
        lines += ["", f"{status} ({len(failed)}):", ""]
        lines += [f"- `{r['name']}`: {r['detail'][:160].replace('|', '/')}" for r in failed]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = RESULTS_MD) -> None:
    """Replace (or append) the ONNX-conformance section of bench/RESULTS.md."""
    current = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    block = f"{SECTION_BEGIN}\n{text}{SECTION_END}\n"
    heading = text.split("\n", 1)[0]
    if SECTION_BEGIN not in current and SECTION_END in current and heading in current:
        current = current.replace(heading, SECTION_BEGIN + "\n" + heading, 1)  # marker lost
    if SECTION_BEGIN in current and SECTION_END in current:
        head, rest = current.split(SECTION_BEGIN, 1)
        tail = rest.split(SECTION_END, 1)[1].lstrip("\n")
        current = head + block + ("\n" + tail if tail else "")
    else:
        current = current.rstrip("\n") + "\n\n" + block
    path.write_text(current, encoding="utf-8")


def run_frozen(tests: list[Path], results: dict[str, dict[str, Any]], args: Any,
               path: Path) -> list[dict[str, Any]]:
    """Rerun the tests of `results` that did not pass and have integer inputs, with those
    inputs frozen; the records, also written to `path`."""
    failing = [t for t in tests if t.name in results and results[t.name]["status"] != PASS
               and parameter_inputs(t)]
    frozen = run_all(failing, args.jobs, args.timeout, progress=not args.quiet, frozen=True)
    path.write_text(json.dumps(frozen, indent=1), encoding="utf-8")
    return frozen


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per test")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"where the generated tests live (default {DEFAULT_CACHE})")
    parser.add_argument("-k", dest="pattern", help="only tests whose name contains this")
    parser.add_argument("--rerun", metavar="STATUS", action="append", default=[],
                        help="only the tests of the last results.json with this status "
                             "(repeatable; 'error' matches every one-line error)")
    parser.add_argument("--no-write", action="store_true",
                        help="print the summary instead of writing bench/RESULTS.md")
    parser.add_argument("--quiet", action="store_true", help="no line per test")
    parser.add_argument("--summary-only", action="store_true",
                        help="run nothing: write the section from the last results.json")
    parser.add_argument("--frozen-only", action="store_true",
                        help="run only the reruns with integer inputs frozen, of the failures "
                             "of the last results.json, and write the section")
    parser.add_argument("--baseline", type=Path, metavar="JSON",
                        help="an earlier results.json whose headline the section shows too")
    parser.add_argument("--baseline-label", default="Before",
                        help="how the section names the baseline")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    node_dir = generate(args.cache)
    tests = test_dirs(node_dir, args.pattern)
    results_json = args.cache / "results.json"
    frozen_json = args.cache / "results_frozen.json"
    run_json = args.cache / "run.json"  # duration and workers of the last full run
    previous: dict[str, dict[str, Any]] = {}
    if results_json.is_file():
        previous = {r["name"]: r for r in json.loads(results_json.read_text(encoding="utf-8"))}
    baseline = None
    if args.baseline is not None:
        baseline = (args.baseline_label,
                    json.loads(args.baseline.read_text(encoding="utf-8")))
    frozen = json.loads(frozen_json.read_text(encoding="utf-8")) if frozen_json.is_file() \
        else None
    if args.frozen_only:  # only the frozen reruns of the last full run's failures
        run = json.loads(run_json.read_text(encoding="utf-8")) if run_json.is_file() else {}
        frozen = run_frozen(tests, previous, args, frozen_json)
        write_section(summary(sorted(previous.values(), key=lambda r: r["name"]),
                              run.get("seconds", 0.0), run.get("jobs", args.jobs), baseline,
                              run.get("commit"), frozen, node_dir))
        return 0
    if args.summary_only:
        run = json.loads(run_json.read_text(encoding="utf-8")) if run_json.is_file() else {}
        text = summary(sorted(previous.values(), key=lambda r: r["name"]),
                       run.get("seconds", 0.0), run.get("jobs", args.jobs), baseline,
                       run.get("commit"), frozen, node_dir)
        write_section(text)
        print(text.split("\n\n")[2])
        return 0
    if args.rerun:
        def wanted(status: str) -> bool:
            return any(status == s or (s == "error" and status.startswith(ERROR_PREFIX))
                       for s in args.rerun)
        tests = [t for t in tests if t.name in previous and wanted(previous[t.name]["status"])]
    commit = _commit()
    started = time.monotonic()
    results = run_all(tests, args.jobs, args.timeout, progress=not args.quiet)
    seconds = time.monotonic() - started
    merged = {**previous, **{r["name"]: r for r in results}}
    results_json.write_text(json.dumps(sorted(merged.values(), key=lambda r: r["name"]),
                                       indent=1), encoding="utf-8")
    partial = bool(args.pattern or args.rerun)
    if not partial:
        run_json.write_text(json.dumps({"seconds": round(seconds), "jobs": args.jobs,
                                        "commit": commit}), encoding="utf-8")
        frozen = run_frozen(tests, merged, args, frozen_json)
    text = summary(results if partial else list(merged.values()), seconds, args.jobs, baseline,
                   commit, None if partial else frozen, node_dir)
    if args.no_write or partial:
        print(text)
    else:
        write_section(text)
        print(text.split("\n\n")[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
