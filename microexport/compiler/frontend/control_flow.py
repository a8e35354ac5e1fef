"""Run-time `If`: the Relax shape our pipeline compiles into an `if` in the AOT main.

Why a rewrite of TVM's `relax.If` rather than a representation of our own: TVM 0.27's ONNX
frontend already imports an ONNX `If` as a `relax.If` binding (in a function without dataflow
blocks), the Relax passes we run (LegalizeOps, FuseOps, FuseTIR, ...) carry a `relax.If` through,
and its branches are `SeqExpr`s that may hold dataflow blocks of their own, which FuseOps fuses
like any other. What is wrong with the frontend's output for a microcontroller is *where* the
work is: its branch converter emits most branch operators (and nested `If`s) into the enclosing
scope, so both branches would be computed on every run and only the final values chosen; and with
an `If` anywhere the frontend builds `main` without a dataflow block, so nothing is fused.

`structure_branches` fixes both on the Relax module: every binding whose value is used only
inside one branch of an `If` moves into that branch (recursively, so an inner `If` the frontend
emitted at the top moves into the branch that uses it, with the computation of its condition),
then each branch is outlined into a Relax function of its own (FuseOps fuses only the dataflow
blocks at the top of a function) and runs of ordinary bindings become dataflow blocks again
(`ConvertToDataflow`). After the Relax passes, `lower.extract_schedule` reads the `If` as two
ranges of kernel calls selected by the condition, walking each outlined branch in place of its
call. `check_onnx_branches` refuses, in one line, ONNX `If`s a static plan cannot hold (branch
values of different shapes or types, sequences, optionals).
"""

from __future__ import annotations

from typing import Any

import tvm
import tvm_ffi
from tvm import ir, relax

# Where a value is used: HERE (the sequence itself, or its result), or (binding index, side) for
# the then (True) or else (False) branch of the `If` bound at that index.
HERE = "here"


def has_if(func: relax.Function) -> bool:
    """True if the Relax function contains a `relax.If`."""
    found = []
    tvm_ffi.structural_map(func.body, (relax.If, lambda node: found.append(node) or node),
                           order="pre")
    return bool(found)


def _free_vars(expr: ir.Expr) -> list[relax.Var]:
    return list(relax.analysis.free_vars(expr))


def _bindings(seq: relax.SeqExpr) -> list[relax.Binding] | None:
    """The bindings of `seq` in order, or None if it holds a dataflow block (left as it is:
    its dataflow variables may not move out of it)."""
    result: list[relax.Binding] = []
    for block in seq.blocks:
        if isinstance(block, relax.DataflowBlock):
            return None
        result.extend(block.bindings)
    return result


def _sink(seq: relax.SeqExpr) -> relax.SeqExpr:
    """`seq` with every binding used only inside one branch of one of its `If`s moved to the
    start of that branch (keeping order), the branches then treated the same way."""
    bindings = _bindings(seq)
    if bindings is None:
        return seq
    uses: dict[Any, set[Any]] = {}

    def use(expr: ir.Expr, where: Any) -> None:
        for var in _free_vars(expr):
            uses.setdefault(var, set()).add(where)

    # Backwards: a binding goes where all its uses are, if that is one branch of one `If`.
    use(seq.body, HERE)
    home: dict[int, Any] = {}  # binding index → HERE or (index of an `If`, side)
    for index in range(len(bindings) - 1, -1, -1):
        binding = bindings[index]
        places = uses.get(binding.var, set())
        movable = isinstance(binding, relax.VarBinding) and len(places) == 1
        where = next(iter(places)) if movable else HERE
        home[index] = where
        value = binding.value
        if isinstance(binding, relax.VarBinding) and isinstance(value, relax.If):
            # Its condition is read where the `If` is; outer values used inside a branch
            # are used in that branch.
            use(value.cond, where)
            use(value.true_branch, (index, True))
            use(value.false_branch, (index, False))
        else:
            use(value, where)

    def build(index: int) -> relax.Binding:
        binding = bindings[index]
        value = binding.value
        if not (isinstance(binding, relax.VarBinding) and isinstance(value, relax.If)):
            return binding
        sides = [[build(j) for j in range(index) if home[j] == (index, side)]
                 for side in (True, False)]
        return relax.VarBinding(binding.var, relax.If(
            value.cond, _sink(_prepend(value.true_branch, sides[0])),
            _sink(_prepend(value.false_branch, sides[1]))))

    kept = [build(index) for index in range(len(bindings)) if home[index] == HERE]
    return relax.SeqExpr([relax.BindingBlock(kept)], seq.body)


def _prepend(seq: relax.SeqExpr, bindings: list[relax.Binding]) -> relax.SeqExpr:
    """`seq` with `bindings` before its own (one binding block)."""
    if not bindings:
        return seq
    own = _bindings(seq)
    if own is None:  # a dataflow block: keep it, after a block of the moved bindings
        return relax.SeqExpr([relax.BindingBlock(bindings), *seq.blocks], seq.body)
    return relax.SeqExpr([relax.BindingBlock(bindings + own)], seq.body)


def structure_branches(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with the `main` of a model with run-time `If`s in the shape the pipeline compiles:
    each branch computing what only it uses, ordinary bindings in dataflow blocks (see the
    module docstring). A module without `If` is returned unchanged."""
    main = mod["main"]
    if not isinstance(main, relax.Function) or not has_if(main):
        return mod
    builder = relax.BlockBuilder(mod)
    body = _outline(_sink(main.body), builder)
    builder.update_func(builder.get().get_global_var("main"), relax.Function(
        main.params, body, main.ret_ty, main.is_pure, main.attrs, main.span))
    out = relax.transform.Normalize()(builder.get())
    return relax.transform.ConvertToDataflow(min_size=1)(out)


BRANCH_PREFIX = "microexport_branch_"  # Relax functions holding one branch of an `If`


def _outline(seq: relax.SeqExpr, builder: relax.BlockBuilder) -> relax.SeqExpr:
    """`seq` with each branch of its `If`s (outer ones in place, nested ones recursively) moved
    into a Relax function of its own (`microexport_branch_<n>`, parameters: the outer values it
    uses) and called there. FuseOps fuses only the dataflow blocks at the top of a function, so
    this is what lets the kernels of a branch fuse like those of `main`; `lower` walks the call
    as if the function's body stood in its place."""
    bindings = _bindings(seq)
    if bindings is None:
        return seq
    out: list[relax.Binding] = []
    for binding in bindings:
        value = binding.value
        if isinstance(binding, relax.VarBinding) and isinstance(value, relax.If):
            ty = binding.var.ty
            value = relax.If(value.cond, _outline_branch(value.true_branch, ty, builder),
                             _outline_branch(value.false_branch, ty, builder))
            binding = relax.VarBinding(binding.var, value)
        out.append(binding)
    return relax.SeqExpr([relax.BindingBlock(out)], seq.body)


def _outline_branch(branch: relax.SeqExpr, ty: ir.Type,
                    builder: relax.BlockBuilder) -> relax.SeqExpr:
    """A branch (of value type `ty`) as a call of a new function holding its bindings."""
    from tvm.relax.utils import copy_with_new_vars

    body = _outline(branch, builder)
    params = _free_vars(body)
    func = copy_with_new_vars(relax.Function(params, body, ty))
    count = sum(gv.name_hint.startswith(BRANCH_PREFIX) for gv in builder.get().functions)
    gv = builder.add_func(func, f"{BRANCH_PREFIX}{count}")
    result = relax.Var(f"{gv.name_hint}_result", ty)
    call = relax.Call(gv, params)
    return relax.SeqExpr([relax.BindingBlock([relax.VarBinding(result, call)])], result)


def check_onnx_branches(graph: Any, where: str) -> None:
    """ModelError for an ONNX `If` left in `graph` (its condition not a constant) whose branches
    declare outputs of different static shapes or element types: a compiled `If` writes one
    buffer from either branch. Nested graphs are checked too; undeclared shapes pass (TVM's
    import finds them)."""
    from microexport.errors import ModelError

    def declared(value: Any) -> tuple[int, tuple[int | None, ...] | None]:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            return tensor.elem_type, None
        return tensor.elem_type, tuple(d.dim_value if d.HasField("dim_value") else None
                                       for d in tensor.shape.dim)

    for node in graph.node:
        branches = {a.name: a.g for a in node.attribute if a.HasField("g")}
        for sub in branches.values():
            check_onnx_branches(sub, where)
        if node.op_type != "If" or set(branches) != {"then_branch", "else_branch"}:
            continue
        pairs = zip(branches["then_branch"].output, branches["else_branch"].output,
                    strict=False)
        name = node.name or node.output[0]
        for index, (then, other) in enumerate(pairs):
            kinds = {then.type.WhichOneof("value"), other.type.WhichOneof("value")}
            if kinds - {"tensor_type", None}:
                kind = sorted(kinds - {"tensor_type", None})[0].removesuffix("_type")
                raise ModelError(
                    f"the If '{name}' of {where} gives output {index} as "
                    f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}: a compiled "
                    "If gives tensors only; freeze its condition with --constant to compile "
                    "one branch")
            (then_type, then_shape), (else_type, else_shape) = declared(then), declared(other)
            known = (then_shape is not None and else_shape is not None
                     and None not in then_shape + else_shape)
            if then_type != else_type or (known and then_shape != else_shape):
                raise ModelError(
                    f"the If '{name}' of {where} gives output {index} "
                    f"as {list(then_shape or [])} (type {then_type}) in its then branch and "
                    f"{list(else_shape or [])} (type {else_type}) in its else branch: a "
                    "compiled If needs both branches to give the same static shape and type; "
                    "freeze its condition with --constant to compile one branch")
