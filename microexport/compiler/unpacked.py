"""The unpacked-API TIR pass (TVM 0.27 has none).

For every kernel PrimFunc:
- each buffer parameter becomes a typed pointer parameter, and the buffer is re-declared on it
  (`float* A` + `DeclBuffer(A_buf, data=A)`), so the C codegen emits a plain C function;
- every buffer the kernel allocates internally is moved to one `scratch` pointer parameter at a
  compile-time byte offset (the planner places it in the workspace), so no allocation and no
  `TVMBackendAllocWorkspace` is left, except that buffers of at most `stack_limit` bytes (CLI
  `--kernel-stack-limit`, default `DEFAULT_STACK_LIMIT`; accumulators of one output element)
  stay C local arrays, which the C compiler keeps in registers instead of storing and reloading
  them on every multiply-accumulate;
- the function returns `int32_t` 0;
- every variable name that is not a C identifier (model tensor names such as `in put/0:x` become
  kernel parameter names) is sanitised, distinct parameters keeping distinct names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import ir, tirx

from microexport.errors import DynamicShape
from microexport.model import (
    C_KEYWORDS,
    DEFAULT_KERNEL_STACK_LIMIT,
    WORD_BYTES,
    c_identifier,
    dtype_bytes,
)

SCRATCH_ALIGNMENT = 16
SCRATCH_PARAM = "scratch"
DEFAULT_STACK_LIMIT = DEFAULT_KERNEL_STACK_LIMIT

StmtRewriter = Callable[[tirx.Stmt], tirx.Stmt | None]


@dataclass(frozen=True)
class ScratchBuffer:
    """A kernel-internal buffer placed in the kernel's scratch region."""

    name: str
    offset: int
    nbytes: int
    dtype: str = "uint8"


@dataclass(frozen=True)
class ScratchLayout:
    """A kernel's internal scratch region: its buffers and total size in bytes, and the bytes of
    the small buffers left on the C stack."""

    buffers: tuple[ScratchBuffer, ...]
    stack_bytes: int = 0

    @property
    def nbytes(self) -> int:
        if not self.buffers:
            return 0
        last = self.buffers[-1]
        return _align(last.offset + last.nbytes, SCRATCH_ALIGNMENT)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def rewrite_stmt(stmt: tirx.Stmt, rewrite: StmtRewriter) -> tirx.Stmt:
    """Rebuild `stmt` bottom-up, replacing every statement for which `rewrite` returns a value."""
    replaced = rewrite(stmt)
    if replaced is not None:
        return replaced
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([rewrite_stmt(s, rewrite) for s in stmt.seq])
    if isinstance(stmt, tirx.For):
        return tirx.For(
            stmt.loop_var,
            stmt.min,
            stmt.extent,
            stmt.kind,
            rewrite_stmt(stmt.body, rewrite),
            stmt.thread_binding,
            stmt.annotations,
            step=stmt.step,
            span=stmt.span,
        )
    if isinstance(stmt, tirx.IfThenElse):
        else_case = None if stmt.else_case is None else rewrite_stmt(stmt.else_case, rewrite)
        return tirx.IfThenElse(stmt.condition, rewrite_stmt(stmt.then_case, rewrite), else_case)
    if isinstance(stmt, tirx.AttrStmt):
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, rewrite_stmt(stmt.body, rewrite))
    if isinstance(stmt, tirx.While):
        return tirx.While(stmt.condition, rewrite_stmt(stmt.body, rewrite))
    return stmt


def pool_pointer(pool: tirx.Buffer, offset: int, dtype: str) -> tirx.PrimExpr:
    """`(dtype*)(void*)&pool[offset]`: a typed pointer at a byte offset into a uint8 pool buffer.

    The pool parameter is the `bytes` member of a union holding an array of every C element type
    over the same storage (templates/interface/tvmgen_model.h.j2, docs/archive.md), so a `dtype`
    object lives at every suitably aligned offset and accessing it through this pointer does not
    violate C's aliasing rules (C99 6.5p7), unlike reading a plain `uint8_t` array as `float`.
    The conversion goes through `void*`, C's type for an address of no particular object type
    (the step offsetof-style code takes too), rather than a direct `uint8_t*` to `float*` cast,
    which means reinterpreting byte data (cppcheck's invalidPointerCast).
    """
    address = tirx.call_intrin(
        "handle", "tirx.address_of", tirx.BufferLoad(pool, [tirx.IntImm("int32", offset)])
    )
    if dtype != str(pool.dtype):
        address = tirx.call_intrin("handle", "tirx.reinterpret", address)  # (void*)
    return tirx.call_intrin(ir.PointerType(ir.PrimType(dtype)), "tirx.reinterpret", address)


def byte_pool(name: str, nbytes: int) -> tuple[tirx.Var, tirx.Buffer]:
    """A `uint8_t*` parameter and a flat byte buffer of `nbytes` declared on it."""
    ptr = tirx.Var(name, ir.PointerType(ir.PrimType("uint8")))
    return ptr, tirx.decl_buffer((max(nbytes, 1),), "uint8", f"{name}_bytes", data=ptr)


def _static_nbytes(buffer: tirx.Buffer) -> int:
    count = 1
    for dim in buffer.shape:
        if not isinstance(dim, tirx.IntImm):
            raise DynamicShape(f"kernel buffer '{buffer.name}' has a dynamic size {buffer.shape}")
        count *= int(dim)
    return count * dtype_bytes(str(buffer.dtype))


# `microexport_unused(x);` in TVM's C output becomes `(void)x;` (see codegen.make_tvm_free): a
# parameter no statement reads (a model input the model ignores, an empty tensor) compiles
# without an unused-parameter warning under -Werror.
UNUSED_MARKER = "microexport_unused"


def mark_unused(params: list[tirx.Var], body: tirx.Stmt) -> list[tirx.Stmt]:
    """`microexport_unused(p)` statements for the pointer parameters `body` never uses."""
    used = _used_vars(body)
    return [tirx.Evaluate(tirx.call_extern("int32", UNUSED_MARKER, param))
            for param in params if param.__chandle__() not in used]


def _used_vars(body: tirx.Stmt) -> set[int]:
    """The variables (by handle) `body` uses other than to declare a buffer: a buffer declared
    on another's data (`x_1 = decl_buffer(..., data=x.data)`) uses it only if `x_1` is used."""
    decls: list[tirx.DeclBuffer] = []

    def collect(stmt: tirx.Stmt) -> tirx.Stmt | None:
        if isinstance(stmt, tirx.DeclBuffer):
            decls.append(stmt)
        return None

    rewrite_stmt(body, collect)
    counts = _var_counts(body)
    aliases: dict[int, set[int]] = {}
    for decl in decls:
        own = _var_counts(decl)
        for key, count in own.items():
            counts[key] = counts.get(key, 0) - count
        buffer = decl.buffer.__chandle__()
        aliases.setdefault(buffer, set()).update(key for key in own if key != buffer)
    used = {key for key, count in counts.items() if count > 0}
    pending = list(used)
    while pending:
        for key in aliases.get(pending.pop(), ()):
            if key not in used:
                used.add(key)
                pending.append(key)
    return used


def _layout(buffers: list[tirx.Buffer], stack_bytes: int) -> ScratchLayout:
    placed: list[ScratchBuffer] = []
    offset = 0
    for buf in buffers:
        nbytes = _static_nbytes(buf)
        placed.append(ScratchBuffer(buf.name, offset, nbytes, str(buf.dtype)))
        offset = _align(offset + nbytes, SCRATCH_ALIGNMENT)
    return ScratchLayout(tuple(placed), stack_bytes)


def drop_write_only_buffers(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` without the internal buffers it writes but never reads, their stores and the
    loops left empty.

    A fused multi-output operator whose other outputs the model does not use (a Split with one
    part consumed) still computes them into an internal buffer: in C a local array that is
    "set but not used" (-Werror), or workspace scratch for nothing.
    """
    allocated: set[int] = set()

    def collect(stmt: tirx.Stmt) -> tirx.Stmt | None:
        if isinstance(stmt, tirx.AllocBuffer):
            allocated.add(stmt.buffer.__chandle__())
        return None

    rewrite_stmt(func.body, collect)
    loaded: set[int] = set()

    def visit_load(load: ir.TensorLoad) -> ir.TensorLoad:
        loaded.add(load.source.__chandle__())
        return load

    tvm_ffi.structural_map(func.body, (ir.TensorLoad, visit_load), order="pre")
    write_only = allocated - loaded
    if not write_only:
        return func

    def drop(stmt: tirx.Stmt) -> tirx.Stmt | None:
        if (isinstance(stmt, tirx.AllocBuffer | tirx.BufferStore)
                and stmt.buffer.__chandle__() in write_only):
            return tirx.Evaluate(tirx.IntImm("int32", 0))
        return None

    body = _drop_unused_binds(rewrite_stmt(func.body, drop))
    if any(key in write_only for key in _var_counts(body)):  # used some other way: keep it
        return func
    mod = tirx.transform.RemoveNoOp()(tvm.IRModule({"kernel": func.with_body(body)}))
    return mod["kernel"]


def _drop_unused_binds(body: tirx.Stmt) -> tirx.Stmt:
    """`body` without the `Bind`s (common subexpressions) whose variable nothing uses any more,
    until none is left (one may have been the only user of another)."""
    while True:
        unused = _unused_binds(body)
        if not unused:
            return body
        body = rewrite_stmt(body, lambda stmt, dead=unused: _without_bind(stmt, dead))


def _unused_binds(body: tirx.Stmt) -> set[int]:
    """The variables (by handle) of `Bind`s in `body` that nothing else uses."""
    counts = _var_counts(body)
    unused: set[int] = set()

    def find(stmt: tirx.Stmt) -> tirx.Stmt | None:
        if isinstance(stmt, tirx.Bind) and counts.get(stmt.var.__chandle__(), 0) <= 1:
            unused.add(stmt.var.__chandle__())
        return None

    rewrite_stmt(body, find)
    return unused


def _without_bind(stmt: tirx.Stmt, dead: set[int]) -> tirx.Stmt | None:
    """A no-op in place of a `Bind` of a variable in `dead`; None (unchanged) otherwise."""
    if isinstance(stmt, tirx.Bind) and stmt.var.__chandle__() in dead:
        return tirx.Evaluate(tirx.IntImm("int32", 0))
    return None


def unpack_function(
    func: tirx.PrimFunc, stack_limit: int = DEFAULT_STACK_LIMIT
) -> tuple[tirx.PrimFunc, ScratchLayout]:
    """Apply the unpacked-API rewrite to one flattened kernel; internal buffers of at most
    `stack_limit` bytes stay C locals (not those narrower than a word whose address goes to
    a called function), internal buffers nothing reads are dropped."""
    func = drop_write_only_buffers(func)

    escaping = _passed_to_extern_calls(func.body)

    def stays_on_stack(buffer: tirx.Buffer) -> bool:
        # A zero-byte buffer goes to scratch too: C has no zero-length local arrays. A buffer
        # narrower than a word whose address goes to a C function (an int8 micro-kernel reading
        # it with LDRD) too: as a C local it is only aligned to its element size.
        if buffer.__chandle__() in escaping and dtype_bytes(str(buffer.dtype)) < WORD_BYTES:
            return False
        return 0 < _static_nbytes(buffer) <= stack_limit

    params: list[tirx.Var] = []
    decls: list[tirx.Stmt] = []
    for param in func.params:
        if isinstance(param.ty, tirx.BufferType):
            ptr = tirx.Var(param.name, ir.PointerType(param.ty.dtype))
            params.append(ptr)
            decls.append(tirx.DeclBuffer(param, data=ptr))
        else:
            params.append(param)

    allocated: list[tirx.Buffer] = []

    on_stack: list[tirx.Buffer] = []

    unused: set[int] = set()  # zero-byte buffers nothing reads or writes (empty splits)
    var_counts = _var_counts(func.body)

    def collect(stmt: tirx.Stmt) -> tirx.Stmt | None:
        if isinstance(stmt, tirx.AllocBuffer):
            data = stmt.buffer.__chandle__()
            if (_static_nbytes(stmt.buffer) == 0
                    and var_counts.get(data, 0) <= _var_counts(stmt).get(data, 0)):
                unused.add(data)
            elif stays_on_stack(stmt.buffer):
                on_stack.append(stmt.buffer)
            else:
                allocated.append(stmt.buffer)
            return stmt
        return None

    rewrite_stmt(func.body, collect)
    layout = _layout(allocated, sum(_static_nbytes(b) for b in on_stack))
    scratch_ptr, scratch = byte_pool(SCRATCH_PARAM, layout.nbytes)
    placements = iter(layout.buffers)

    def lift(stmt: tirx.Stmt) -> tirx.Stmt | None:
        if not isinstance(stmt, tirx.AllocBuffer) or stays_on_stack(stmt.buffer):
            return None
        if stmt.buffer.__chandle__() in unused:  # would be an unused C variable
            return tirx.Evaluate(tirx.IntImm("int32", 0))
        offset = next(placements).offset
        return tirx.DeclBuffer(
            stmt.buffer, data=pool_pointer(scratch, offset, str(stmt.buffer.dtype))
        )

    body = rewrite_stmt(func.body, lift)
    if layout.buffers:
        params.append(scratch_ptr)
        decls.insert(0, tirx.DeclBuffer(scratch, data=scratch_ptr))
    pointers = {param.__chandle__(): ptr for param, ptr in zip(func.params, params, strict=False)
                if isinstance(param.ty, tirx.BufferType)}
    used = _used_vars(body)
    unused = [tirx.Evaluate(tirx.call_extern("int32", UNUSED_MARKER, pointers[key]))
              for key in pointers if key not in used]
    body = tirx.SeqStmt([*unused, *decls, body, tirx.Return(tirx.IntImm("int32", 0))])
    new_func = tirx.PrimFunc(params, body, ret_type=ir.PrimType("int32"))
    attrs = {k: v for k, v in (func.attrs or {}).items() if k != "global_symbol"}
    new_func = new_func.with_attrs(attrs) if attrs else new_func
    return c_names(new_func), layout


def bind_buffer_offsets(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with the symbolic element offset of every buffer parameter bound to 0.

    Some legalized operators (ScatterND, ScatterElements) declare their parameters with
    `offset_factor=1`, which gives each buffer a free `elem_offset` variable that TVM's packed
    API would read from the DLTensor. Unpacked kernels get a pointer to the first element of
    their tensor, so the offset is 0 (without this, C codegen fails on the undefined variable).
    """
    offsets: dict[int, tirx.PrimExpr] = {}
    for param in func.params:
        if isinstance(param.ty, tirx.BufferType):
            offset = param.ty.elem_offset
            if isinstance(offset, tirx.Var):
                offsets[offset.__chandle__()] = tirx.IntImm(str(offset.ty.dtype), 0)
    if not offsets:
        return func

    def bind(var: tirx.Var) -> tirx.PrimExpr:
        return offsets.get(var.__chandle__(), var)

    return tvm_ffi.structural_map(func, (tirx.Var, bind), order="pre")


def c_name(name: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """`name` as a C identifier (not a keyword) that is not in `taken`: `in put/0` → `in_put_0`,
    `int` → `int_`, `x` (taken) → `x_1`."""
    base = c_identifier(name)
    if base in C_KEYWORDS:
        base += "_"
    ident, index = base, 1
    while ident in taken:
        ident, index = f"{base}_{index}", index + 1
    return ident


def c_names(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with every variable (parameters, buffers, locals) whose name is not a usable C
    identifier renamed to one; parameters get pairwise distinct names.

    TVM's C code generator prints variable names as they are (`float* in put/0`); the names come
    from the model (FuseTIR names kernel parameters after the Relax variables, which frontends
    name after the model's tensors).
    """
    params = list(func.params)
    renamed: dict[int, ir.Var] = {}
    kept: set[int] = set()
    taken: set[str] = set()
    for param in params:  # the first parameter of each usable name keeps it
        if c_name(param.name) == param.name and param.name not in taken:
            taken.add(param.name)
            kept.add(param.__chandle__())
    for param in params:  # FuseTIR may name two parameters alike (`lv1`, `lv1`)
        if param.__chandle__() not in kept:
            new = ir.Var(c_name(param.name, taken), param.ty)
            taken.add(new.name)
            renamed[param.__chandle__()] = new
    if not renamed and all(c_name(name) == name for name in _var_names(func)):
        return func

    def rename(var: ir.Var) -> ir.Var:
        key = var.__chandle__()
        if key not in renamed:
            if c_name(var.name) == var.name:
                return var
            renamed[key] = ir.Var(c_name(var.name), var.ty)
        return renamed[key]

    return tvm_ffi.structural_map(func, (ir.Var, rename), order="pre")


def _var_names(func: tirx.PrimFunc) -> set[str]:
    names: set[str] = set()

    def visit(var: ir.Var) -> ir.Var:
        names.add(var.name)
        return var

    tvm_ffi.structural_map(func, (ir.Var, visit), order="pre")
    return names


def drop_unread_params(func: tirx.PrimFunc, indices: set[int]) -> tirx.PrimFunc | None:
    """The unpacked kernel `func` without its parameters at `indices` (their buffer
    declarations and unused-parameter markers removed), or None when its body still reads one
    of them or they were not plain parameters."""
    removed = {func.params[i].__chandle__() for i in indices}
    stmts = list(func.body.seq) if isinstance(func.body, tirx.SeqStmt) else [func.body]
    kept = [stmt for stmt in stmts if not _declares_or_marks(stmt, removed)]
    if len(kept) == len(stmts) or removed & _used_vars(tirx.SeqStmt(kept)):
        return None
    params = [p for i, p in enumerate(func.params) if i not in indices]
    return tirx.PrimFunc(params, tirx.SeqStmt(kept), func.ret_type, func.attrs)


def _declares_or_marks(stmt: tirx.Stmt, params: set[int]) -> bool:
    """Whether `stmt` is a buffer declared on one of `params` (by handle) or the
    `microexport_unused` marker of one."""
    if isinstance(stmt, tirx.DeclBuffer):
        return isinstance(stmt.data, tirx.Var) and stmt.data.__chandle__() in params
    if isinstance(stmt, tirx.Evaluate) and isinstance(stmt.value, ir.Call):
        call = stmt.value
        return (isinstance(call.op, ir.Op) and call.op.name == "tirx.call_extern"
                and str(call.args[0].value) == UNUSED_MARKER
                and any(isinstance(a, tirx.Var) and a.__chandle__() in params
                        for a in call.args[1:]))
    return False


def _passed_to_extern_calls(node: object) -> set[int]:
    """The buffers (by handle: in TVM 0.27 a buffer is the variable `tvm_access_ptr` names) whose
    address `node` takes (`tvm_access_ptr`, or `address_of` an element) to hand to a function."""
    handles: set[int] = set()
    address_of = ir.Op.get("tirx.address_of")
    access_ptr = ir.Op.get("tirx.tvm_access_ptr")

    def visit(call: ir.Call) -> ir.Call:
        if call.op.same_as(address_of) and isinstance(call.args[0], tirx.BufferLoad):
            handles.add(call.args[0].buffer.__chandle__())
        elif call.op.same_as(access_ptr):
            handles.add(call.args[1].__chandle__())
        return call

    tvm_ffi.structural_map(node, (ir.Call, visit), order="pre")
    return handles


def _var_counts(node: object) -> dict[int, int]:
    """How often each variable (by handle) occurs in `node`."""
    counts: dict[int, int] = {}

    def visit(var: ir.Var) -> ir.Var:
        key = var.__chandle__()
        counts[key] = counts.get(key, 0) + 1
        return var

    tvm_ffi.structural_map(node, (ir.Var, visit), order="pre")
    return counts


def make_unpacked(
    mod: tvm.IRModule, stack_limit: int = DEFAULT_STACK_LIMIT
) -> tuple[tvm.IRModule, dict[str, ScratchLayout]]:
    """Apply `unpack_function` to every PrimFunc of `mod`; returns the module and scratch needs."""
    funcs = {}
    layouts = {}
    for gv, func in sorted(mod.functions.items(), key=lambda item: item[0].name_hint):
        new_func, layout = unpack_function(func, stack_limit)
        funcs[gv] = new_func
        layouts[gv.name_hint] = layout
    return tvm.IRModule(funcs), layouts
