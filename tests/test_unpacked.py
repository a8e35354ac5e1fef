"""The unpacked-API pass: buffer params → pointers, internal allocations → one scratch param."""

from __future__ import annotations

import tvm
from tvm import ir, tirx
from tvm.script import tirx as T

from microexport.compiler.codegen import generate_c
from microexport.compiler.lower import tir_pipeline
from microexport.compiler.unpacked import make_unpacked


@T.prim_func(private=True, s_tir=True)
def two_stage(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
    tmp = T.alloc_buffer((64,), "float32")
    for i in range(64):
        with T.sblock("square"):
            vi = T.axis.spatial(64, i)
            tmp[vi] = a[vi] * a[vi]
    for i in range(64):
        with T.sblock("plus"):
            vi = T.axis.spatial(64, i)
            b[vi] = tmp[vi] + T.float32(1)


@T.prim_func(private=True, s_tir=True)
def copy(a: T.Buffer((8,), "int8"), b: T.Buffer((8,), "int8")):
    for i in range(8):
        with T.sblock("copy"):
            vi = T.axis.spatial(8, i)
            b[vi] = a[vi]


def lowered_module() -> tvm.IRModule:
    target = tvm.target.Target("c")
    mod = tvm.IRModule(
        {
            ir.GlobalVar("two_stage"): two_stage.with_attr("target", target),
            ir.GlobalVar("copy"): copy.with_attr("target", target),
        }
    )
    return tir_pipeline()(mod)


def test_buffer_params_become_pointers_and_allocs_move_to_scratch() -> None:
    mod, layouts = make_unpacked(lowered_module())
    func = mod["two_stage"]
    assert [p.name for p in func.params] == ["a", "b", "scratch"]
    assert all(isinstance(p.ty, ir.PointerType) for p in func.params)
    assert layouts["two_stage"].nbytes == 256
    assert layouts["two_stage"].buffers[0].name == "tmp"
    assert layouts["copy"].nbytes == 0
    assert [p.name for p in mod["copy"].params] == ["a", "b"]

    def no_alloc(stmt: tirx.Stmt) -> None:
        assert not isinstance(stmt, tirx.AllocBuffer)

    from microexport.compiler.unpacked import rewrite_stmt

    rewrite_stmt(func.body, lambda s: no_alloc(s))


def test_kernels_compile_to_plain_c_functions_returning_int32() -> None:
    mod, _ = make_unpacked(lowered_module())
    _, lib = generate_c(mod, "m")
    assert "int32_t two_stage(float* a, float* b, uint8_t* scratch)" in lib.source
    assert "int32_t copy(int8_t* a, int8_t* b)" in lib.source
    assert "return 0;" in lib.source
    for forbidden in ("TVM_DLL", "TVMFFI", "TVMBackend", "#include \"tvm/", "malloc"):
        assert forbidden not in lib.source


@T.prim_func(private=True, s_tir=True)
def absolute(a: T.Buffer((4,), "float32"), b: T.Buffer((4,), "float32")):
    for i in range(4):
        with T.sblock("abs"):
            vi = T.axis.spatial(4, i)
            b[vi] = T.fabs(a[vi])


def test_float_abs_lowers_to_libm() -> None:
    target = tvm.target.Target("c")
    mod = tvm.IRModule(
        {
            ir.GlobalVar("absolute"): absolute.with_attr("target", target),
            ir.GlobalVar("copy"): copy.with_attr("target", target),
        }
    )
    unpacked, _ = make_unpacked(tir_pipeline()(mod))
    _, lib = generate_c(unpacked, "m")
    assert "fabsf(a[" in lib.source


def test_rewrite_keeps_loop_steps() -> None:
    from microexport.compiler.unpacked import rewrite_stmt

    i = tirx.Var("i", "int32")
    loop = tirx.For(i, 0, 8, tirx.ForKind.SERIAL, tirx.Evaluate(tirx.IntImm("int32", 0)),
                    step=tirx.IntImm("int32", 2))
    assert int(rewrite_stmt(loop, lambda s: None).step) == 2
