"""Static analysis of the kernels of a `microexport-tir` document, from the JSON alone (no TVM).

Per kernel: the loop nests with their trip counts, multiply-accumulates (a store
`acc[...] = acc[...] + a * b` counts one MAC per executed element), bytes read and written (every
executed BufferLoad / BufferStore, element size times lanes), scratch bytes (the byte buffer on a
`scratch` pointer parameter) and local bytes (buffers the kernel allocates itself). Counts multiply
the trip counts of the enclosing loops; an `if loop_var == c` body counts once per outer
iteration, an `if loop_var < c` (`<=`, `>`, `>=`, either side) body for the iterations that take
it (loop unswitching leaves such tests, e.g. in a concatenation). Anything not statically known
(a loop extent that is not a constant, a While loop, any other condition) is counted as if it ran
once per enclosing iteration and the kernel is marked `approximate`. With an AOT main in the
document, the totals count each kernel once per call. A call of an int8 dot-product micro-kernel
(`me_dot_s8s16_RxC(w, col, depth, acc)`, `me_dot_s8s8_Rx1`) counts its R x C x depth MACs
and its operand bytes, padding of the depth to a multiple of four included; a depthwise one
(`me_dw_s8_4ch_RxC`, `me_dw_s8_4ch_window`) four MACs per tap of its window (a window
clipped at run time counts one tap, approximate).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from microexport.archive.tir_json.reader import (
    callee,
    declarations,
    dtype_bytes,
    element_count,
    expr_dtype,
    int_value,
    is_call,
    parse,
    shape_of,
    statements,
    walk,
)

ANALYSIS_FORMAT = "microexport-analysis"
ANALYSIS_VERSION = 1
MAIN_SUFFIX = "___tvm_main__"


@dataclass
class Loop:
    """One loop of a nest: its variable, trip count (None if unknown), kind and inner loops."""

    var: str
    trips: int | None
    kind: str
    children: list[Loop] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The loop as JSON: var, trips, kind, children."""
        return {"var": self.var, "trips": self.trips, "kind": self.kind,
                "children": [child.to_dict() for child in self.children]}

    def describe(self) -> str:
        """`i:32 > k:16`, with sibling inner loops in parentheses: `i:4 > (j:3, k:5)`."""
        own = f"{self.var}:{self.trips if self.trips is not None else '?'}"
        if not self.children:
            return own
        if len(self.children) == 1:
            return f"{own} > {self.children[0].describe()}"
        return f"{own} > ({', '.join(c.describe() for c in self.children)})"


@dataclass
class KernelStats:
    """What one execution of a kernel does."""

    name: str
    loops: list[Loop] = field(default_factory=list)
    macs: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    scratch_bytes: int = 0
    local_bytes: int = 0
    approximate: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The statistics as JSON (one entry of the report's "kernels")."""
        return {
            "name": self.name, "loops": [loop.to_dict() for loop in self.loops],
            "loop_nests": [loop.describe() for loop in self.loops], "macs": self.macs,
            "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
            "scratch_bytes": self.scratch_bytes, "local_bytes": self.local_bytes,
            "approximate": self.approximate,
        }


@dataclass
class _Scope:
    """Counting context: how often the current statement runs (exactly: a fraction for a branch
    taken once per loop), and the enclosing loops."""

    times: Fraction
    loops: dict[str, int | None]
    nest: list[Loop]


class _KernelAnalyzer:
    def __init__(self, func: Mapping[str, Any], path: str) -> None:
        self.stats = KernelStats(func["name"])
        self.counts = {"macs": Fraction(0), "read": Fraction(0), "written": Fraction(0)}
        self.decls = declarations(func)
        self.stats.scratch_bytes = _scratch_bytes(func, self.decls, path)
        self.statement(func["body"], _Scope(Fraction(1), {}, self.stats.loops), f"{path}.body")
        self.stats.macs = round(self.counts["macs"])
        self.stats.bytes_read = round(self.counts["read"])
        self.stats.bytes_written = round(self.counts["written"])

    # -- statements ------------------------------------------------------------------------

    def statement(self, stmt: Mapping[str, Any] | None, scope: _Scope, path: str) -> None:
        for item_path, item in statements(stmt, path):
            getattr(self, f"stmt_{item['node']}")(item, scope, item_path)

    def stmt_For(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        extent = int_value(stmt["extent"])
        step = int_value(stmt["step"]) if stmt["step"] is not None else 1
        trips = None if extent is None or step is None or step <= 0 else max(-(-extent // step), 0)
        if trips is None:
            self.stats.approximate = True
        var = stmt["loop_var"]
        loop = Loop(var.get("hint", var["name"]), trips, stmt["kind"])
        scope.nest.append(loop)
        self.expressions([stmt["min"], stmt["extent"]], scope.times, path)
        inner = _Scope(scope.times * (trips if trips is not None else 1),
                       {**scope.loops, var["name"]: trips}, loop.children)
        self.statement(stmt["body"], inner, f"{path}.body")

    def stmt_While(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        self.stats.approximate = True
        self.expressions([stmt["condition"]], scope.times, path)
        self.statement(stmt["body"], scope, f"{path}.body")

    def stmt_IfThenElse(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        self.expressions([stmt["condition"]], scope.times, path)
        fraction = _once_per_loop(stmt["condition"], scope.loops)
        if fraction is None:
            self.stats.approximate = True
            fraction = Fraction(1)
        self.statement(stmt["then_case"], _Scope(scope.times * fraction, scope.loops, scope.nest),
                       f"{path}.then_case")
        if stmt["else_case"] is not None:
            rest = 1 - fraction if fraction < 1 else Fraction(1)
            self.statement(stmt["else_case"], _Scope(scope.times * rest, scope.loops, scope.nest),
                           f"{path}.else_case")

    def stmt_BufferStore(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        value = stmt["value"]
        buffer = stmt["buffer"]["name"]
        dtype = expr_dtype(value, self.decls) or self.decls[buffer]["type"]["dtype"]
        self.counts["written"] += dtype_bytes(dtype, path) * scope.times
        self.counts["macs"] += _macs(value, buffer) * _lanes(dtype) * scope.times
        self.expressions([value, *stmt["indices"]], scope.times, path)

    def stmt_SBlockRealize(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        self.expressions([*stmt["iter_values"], stmt["predicate"]], scope.times, path)
        self.stmt_SBlock(stmt["block"], scope, f"{path}.block")

    def stmt_SBlock(self, block: Mapping[str, Any], scope: _Scope, path: str) -> None:
        for index, var in enumerate(block["alloc_buffers"]):
            self.stats.local_bytes += _declared_bytes(self.decls[var["name"]]["type"],
                                                      f"{path}.alloc_buffers[{index}]")
        reduction = 1
        for iter_var in block["iter_vars"]:
            extent = int_value(iter_var["dom"]["extent"]) if iter_var["dom"] else None
            if iter_var["iter_type"] == "comm_reduce" and extent is not None and extent > 0:
                reduction *= extent
        if block["init"] is not None:
            self.statement(block["init"], _Scope(scope.times / reduction, scope.loops,
                                                 scope.nest), f"{path}.init")
        self.statement(block["body"], scope, f"{path}.body")

    def stmt_AllocBuffer(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        self.stats.local_bytes += _declared_bytes(self.decls[stmt["buffer"]["name"]]["type"],
                                                  f"{path}.buffer")

    def stmt_DeclBuffer(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        self.expressions([stmt["data"]], scope.times, path)

    def stmt_Bind(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        self.expressions([stmt["value"]], scope.times, path)

    def stmt_Evaluate(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        self.expressions([stmt["value"]], scope.times, path)
        self.microkernel(stmt["value"], scope.times)

    def microkernel(self, call: Any, times: Fraction) -> None:
        """The MACs and operand bytes of a call of an int8 micro-kernel
        (templates/codegen/int8_dot.h.j2), which the loops around it do not show."""
        if not is_call(call, "tirx.call_extern") or not call.get("args"):
            return
        name = call["args"][0].get("value", "")
        dot = _DOT_KERNEL.fullmatch(name)
        if dot is not None:  # (w, col, depth, acc): rows x cols dot products of `depth`
            rows, cols = int(dot.group(2)), int(dot.group(3))
            column_bytes = 2 if dot.group(1) == "16" else 1
            depth = int_value(call["args"][3])
            if depth is None:
                self.stats.approximate = True
                return
            self.counts["macs"] += rows * cols * depth * times
            self.counts["read"] += (rows + column_bytes * cols) * depth * times
        elif name.startswith("me_dw_s8_4ch_"):  # four channels over rows x cols taps
            whole = _DEPTHWISE_WINDOW.fullmatch(name)
            if whole is not None:  # me_dw_s8_4ch_RxC: a whole window
                rows, cols = int(whole.group(1)), int(whole.group(2))
            else:  # me_dw_s8_4ch_window: its rows and cols are arguments
                rows, cols = int_value(call["args"][7]), int_value(call["args"][8])
            if rows is None or cols is None:  # clipped at run time: counted as one tap
                self.stats.approximate = True
                rows = cols = 1
            self.counts["macs"] += 4 * rows * cols * times
            self.counts["read"] += 8 * rows * cols * times

    stmt_Return = stmt_Evaluate

    def stmt_AssertStmt(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        self.expressions([stmt["condition"]], scope.times, path)

    def stmt_AttrStmt(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        self.statement(stmt["body"], scope, f"{path}.body")

    def stmt_Break(self, stmt: Mapping[str, Any], scope: _Scope, path: str) -> None:
        self.stats.approximate = True

    stmt_Continue = stmt_Break

    # -- expressions -----------------------------------------------------------------------

    def expressions(self, exprs: list[Any], times: Fraction, path: str) -> None:
        """Count the bytes of every BufferLoad in `exprs` (of the statement at `path`)."""
        for expr in exprs:
            self.loads(expr, times, path)

    def loads(self, expr: Any, times: Fraction, path: str) -> None:
        if isinstance(expr, list):
            for item in expr:
                self.loads(item, times, path)
            return
        if not isinstance(expr, dict) or is_call(expr, "tirx.address_of"):
            return  # taking an address reads nothing
        if expr.get("node") == "BufferLoad":
            self.counts["read"] += dtype_bytes(expr["dtype"], path) * times
        for key, value in expr.items():
            if key != "type" and isinstance(value, dict | list):
                self.loads(value, times, path)


# The int8 dot-product micro-kernels: me_dot_s8s16_<rows>x<cols>.
_DOT_KERNEL = re.compile(r"me_dot_s8s(16|8)_(\d+)x(\d+)")
_DEPTHWISE_WINDOW = re.compile(r"me_dw_s8_4ch_(\d+)x(\d+)")

# `loop_var <op> constant` with the loop variable on either side: the test on an iteration index i.
_COMPARISONS: dict[str, tuple[Any, Any]] = {
    "LT": (lambda i, c: i < c, lambda i, c: c < i),
    "LE": (lambda i, c: i <= c, lambda i, c: c <= i),
    "GT": (lambda i, c: i > c, lambda i, c: c > i),
    "GE": (lambda i, c: i >= c, lambda i, c: c >= i),
}


def _once_per_loop(condition: Mapping[str, Any], loops: Mapping[str, int | None]
                   ) -> Fraction | None:
    """For `loop_var == constant`, or an ordering comparison of a loop variable with a constant:
    the fraction of the loop's iterations (0 to trips - 1) that take the branch."""
    node = condition["node"]
    if node != "EQ" and node not in _COMPARISONS:
        return None
    for side, (var, const) in enumerate(((condition["a"], condition["b"]),
                                         (condition["b"], condition["a"]))):
        value = int_value(const)
        if var["node"] == "Var" and var["name"] in loops and value is not None:
            trips = loops[var["name"]]
            if not trips:
                return None
            if node == "EQ":
                return Fraction(1, trips)
            test = _COMPARISONS[node][side]
            return Fraction(sum(1 for i in range(trips) if test(i, value)), trips)
    return None


def _lanes(dtype: str) -> int:
    _, _, lanes = dtype.partition("x")
    return int(lanes) if lanes.isdigit() else 1


def _strip_casts(expr: Mapping[str, Any]) -> Mapping[str, Any]:
    while expr["node"] == "Cast":
        expr = expr["value"]
    return expr


def _macs(value: Mapping[str, Any], target: str) -> int:
    """1 if a store of `value` into `target` is a multiply-accumulate `target[...] + a * b`."""
    if value["node"] != "Add":
        return 0
    a, b = _strip_casts(value["a"]), _strip_casts(value["b"])
    for acc, product in ((a, b), (b, a)):
        if (acc["node"] == "BufferLoad" and acc["buffer"]["name"] == target
                and product["node"] == "Mul"):
            return 1
    return 0


def _declared_bytes(var_type: Mapping[str, Any], path: str) -> int:
    if var_type.get("node") != "BufferType":
        return 0
    count = element_count(shape_of(var_type))
    return 0 if count is None else max(count, 0) * dtype_bytes(var_type["dtype"], path)


def _scratch_bytes(func: Mapping[str, Any], decls: Mapping[str, Mapping[str, Any]], path: str
                   ) -> int:
    """Bytes of the byte buffers declared on pointer parameters used only as address bases."""
    params = {p["name"] for p in func["params"] if p["type"]["node"] == "PointerType"}
    total = 0
    for stmt_path, stmt in statements(func["body"], f"{path}.body"):
        if stmt["node"] != "DeclBuffer" or stmt["data"]["node"] != "Var":
            continue
        buffer = stmt["buffer"]["name"]
        if stmt["data"]["name"] in params and _only_addressed(func, buffer):
            total += _declared_bytes(decls[buffer]["type"], f"{stmt_path}.buffer")
    return total


def _only_addressed(func: Mapping[str, Any], buffer: str) -> bool:
    """Is `buffer` used only as `address_of(buffer[...])` (the unpacked scratch pattern)?"""
    addressed = loaded = 0
    for _, node in walk(func["body"]):
        if (is_call(node, "tirx.address_of") and node["args"]
                and node["args"][0].get("buffer", {}).get("name") == buffer):
            addressed += 1
        elif node["node"] in ("BufferLoad", "BufferStore") and node["buffer"]["name"] == buffer:
            loaded += 1
    return addressed > 0 and loaded == addressed


def analyze_kernel(func: Mapping[str, Any], path: str = "$") -> KernelStats:
    """The statistics of one kernel function (a PrimFunc node of the document, at `path`)."""
    return _KernelAnalyzer(func, path).stats


def analyze(doc: str | bytes | Mapping[str, Any], *, validate: bool = True) -> dict[str, Any]:
    """Analyze every kernel of a document: per-kernel statistics and totals (see module doc).

    `validate=False` skips `reader.parse`, for a document already parsed (or just exported)."""
    data = parse(doc) if validate else dict(doc)  # type: ignore[arg-type]
    kernels: list[dict[str, Any]] = []
    totals = {"macs": 0, "bytes_read": 0, "bytes_written": 0, "scratch_bytes": 0,
              "local_bytes": 0}
    for module_index, module in enumerate(data["modules"]):
        functions = module["functions"]
        mains = [f for f in functions if f["name"].endswith(MAIN_SUFFIX)]
        calls = _call_counts(mains[0]) if len(mains) == 1 else {}
        for index, func in enumerate(functions):
            if any(func is main for main in mains):
                continue
            path = f"$.modules[{module_index}].functions[{index}]"
            stats = analyze_kernel(func, path).to_dict()
            stats["calls"] = calls.get(func["name"], 0) if mains else 1
            kernels.append(stats)
            for key in totals:
                per_call = key in ("macs", "bytes_read", "bytes_written")
                totals[key] += stats[key] * (stats["calls"] if per_call else min(stats["calls"], 1))
    return {"format": ANALYSIS_FORMAT, "version": ANALYSIS_VERSION, "stage": data.get("stage"),
            "kernels": kernels, "totals": totals}


def _call_counts(main: Mapping[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, node in walk(main["body"]):
        name = callee(node)
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return counts


def format_report(report: Mapping[str, Any]) -> str:
    """The analysis as a plain-text table, one kernel per line, then the totals."""
    header = ("kernel", "calls", "MACs", "read B", "written B", "scratch B", "local B")
    rows = [header]
    for k in report["kernels"]:
        name = k["name"] + (" ~" if k["approximate"] else "")
        rows.append((name, str(k["calls"]), str(k["macs"]), str(k["bytes_read"]),
                     str(k["bytes_written"]), str(k["scratch_bytes"]), str(k["local_bytes"])))
    t = report["totals"]
    rows.append(("total", "", str(t["macs"]), str(t["bytes_read"]), str(t["bytes_written"]),
                 str(t["scratch_bytes"]), str(t["local_bytes"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(len(lines) - 1, "")
    for k in report["kernels"]:
        lines.append(f"{k['name']}: loops {'; '.join(k['loop_nests']) or 'none'}")
    if any(k["approximate"] for k in report["kernels"]):
        lines.append("~ approximate: a loop extent or a branch is not known statically")
    return "\n".join(lines)
