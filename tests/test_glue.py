"""Glue templates: the header and run wrapper render, compile with -Werror and are overridable."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fixture_model import FIXTURE_LIB, FIXTURE_TEMPLATES, constant_pool, fixture_model
from support import require_program

from microexport.archive.glue import (
    comment_safe,
    glue_environment,
    hex_rows,
    interface_variables,
    render_glue,
    render_harness,
)
from microexport.errors import Error
from microexport.model import (
    C_TYPES,
    CompiledModel,
    ConstantSpec,
    CParam,
    FunctionSignature,
    PoolReport,
    TensorSpec,
)

WERROR = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
ARM = ["-mcpu=cortex-m3", "-mthumb"]


def model_with(
    *, alignment: int = 16, empty_pools: bool = False, pool: bytes | None = None,
    **fields: object,
) -> tuple[CompiledModel, bytes]:
    """The fixture's record and constant pool with some fields replaced: `alignment`,
    `empty_pools` (no constants, no workspace), `pool` (the constant pool bytes)."""
    base = fixture_model()
    memory = dataclasses.replace(base.memory, alignment=alignment)
    inputs = fields.get("inputs", base.inputs)
    outputs = fields.get("outputs", base.outputs)
    params = [CParam(t.c_name, C_TYPES.get(t.dtype, "float") + "*")
              for t in inputs + outputs]  # type: ignore[operator]
    if empty_pools:
        memory = dataclasses.replace(memory, constants_bytes=0, workspace_bytes=0,
                                     pools=(PoolReport("workspace", 0),))
        fields.setdefault("constants", ())
        pool = b""
    else:
        params += [CParam("constants", "uint8_t*"), CParam("workspace", "uint8_t*")]
    if pool is None:
        pool = constant_pool()
    io_bytes = sum(t.nbytes for t in inputs + outputs)  # type: ignore[operator]
    memory = dataclasses.replace(memory, constants_bytes=len(pool), io_bytes=io_bytes)
    fields.setdefault("main", FunctionSignature(base.main.symbol, tuple(params)))
    return fixture_model(memory=memory, **fields), pool


def glue_of(**changes: object) -> dict[str, str]:
    """The rendered glue of `model_with(**changes)`."""
    model, pool = model_with(**changes)  # type: ignore[arg-type]
    return render_glue(model, pool)


def write_glue(changes: dict, directory: Path, templates: Path | None = None) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    model, pool = model_with(**changes)
    for filename, text in render_glue(model, pool, templates).items():
        path = directory / filename
        path.write_text(text)
        paths.append(path)
    return paths


def compile_c(compiler: str, flags: list[str], source: Path, include: Path) -> None:
    result = subprocess.run(
        [compiler, *flags, f"-I{include}", "-c", str(source), "-o", str(source.with_suffix(".o"))],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr


# --- rendering ------------------------------------------------------------------------------


def test_render_glue_names_the_files_after_the_model() -> None:
    assert sorted(glue_of()) == ["tvmgen_fixture.c", "tvmgen_fixture.h"]


def test_header_declares_structs_macros_and_run() -> None:
    header = glue_of()["tvmgen_fixture.h"]
    assert "#ifndef TVMGEN_FIXTURE_H_" in header
    assert 'extern "C"' in header
    assert re.search(r"struct tvmgen_fixture_inputs \{\s+float\* x_0;\s+int32_t\* bias;\s+\};",
                     header)
    assert re.search(r"struct tvmgen_fixture_outputs \{\s+float\* y;\s+int32_t\* count;\s+\};",
                     header)
    for macro, value in [("X_0_SIZE", 24), ("BIAS_SIZE", 16), ("Y_SIZE", 24),
                         ("COUNT_SIZE", 16), ("WORKSPACE_SIZE", 32), ("CONSTANTS_SIZE", 32)]:
        assert f"#define TVMGEN_FIXTURE_{macro} {value}\n" in header
    assert ("int32_t tvmgen_fixture_run(struct tvmgen_fixture_inputs* inputs, "
            "struct tvmgen_fixture_outputs* outputs);") in header
    assert "workspace_pools" not in header


def test_external_mode_adds_pools_argument() -> None:
    glue = glue_of(workspace_mode="external")
    header, wrapper = glue["tvmgen_fixture.h"], glue["tvmgen_fixture.c"]
    assert "struct tvmgen_fixture_workspace_pools {\n  uint8_t* workspace;\n};" in header
    assert re.search(r"tvmgen_fixture_run\([^)]*struct tvmgen_fixture_workspace_pools\* pools\);",
                     header)
    assert "workspace_pool[" not in wrapper
    assert "pools->workspace" in wrapper


def test_wrapper_holds_aligned_const_pool_and_static_workspace() -> None:
    glue = glue_of(alignment=64)
    header, wrapper = glue["tvmgen_fixture.h"], glue["tvmgen_fixture.c"]
    # Pools are unions of arrays of every element type (strict-aliasing safe), `bytes` first.
    assert ("union tvmgen_fixture_constants_storage {\n"
            "  uint8_t bytes[32] __attribute__((aligned(64)));\n") in wrapper
    assert "  float f32[(32 + sizeof(float) - 1) / sizeof(float)];\n" in wrapper
    assert ("static const union tvmgen_fixture_constants_storage "
            "tvmgen_fixture_constant_pool = {\n  {\n") in wrapper
    assert ("    0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x00, 0x00, "
            "0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,\n") in wrapper
    assert ("union tvmgen_fixture_workspace_storage {\n"
            "  uint8_t bytes[32] __attribute__((aligned(64)));\n") in header
    assert ("static union tvmgen_fixture_workspace_storage "
            "tvmgen_fixture_workspace_pool;") in wrapper
    assert "(uint8_t*)tvmgen_fixture_constant_pool.bytes" in wrapper
    assert "tvmgen_fixture___tvm_main__(" in wrapper


def test_header_declares_the_main_from_the_record() -> None:
    header = glue_of()["tvmgen_fixture.h"]
    assert ("int32_t tvmgen_fixture___tvm_main__(float* x_0, int32_t* bias, float* y, "
            "int32_t* count, uint8_t* constants, uint8_t* workspace);") in header
    wrapper = glue_of()["tvmgen_fixture.c"]
    assert "int32_t tvmgen_fixture___tvm_main__(" not in wrapper  # declared once, in the header


def test_zero_sized_pools_are_left_out_of_the_main_call() -> None:
    wrapper = glue_of(empty_pools=True)["tvmgen_fixture.c"]
    assert "[0]" not in wrapper
    assert "outputs->count);" in wrapper
    assert "uint8_t* constants" not in wrapper and "uint8_t* workspace" not in wrapper


def test_rendering_is_deterministic() -> None:
    assert glue_of() == glue_of()


def test_hex_rows_sixteen_per_line() -> None:
    rows = hex_rows(bytes(range(20)))
    assert [len(r) for r in rows] == [16, 4]
    assert rows[1] == ["10", "11", "12", "13"]
    assert hex_rows(b"") == []


def test_comment_safe_cannot_close_a_comment() -> None:
    assert "*/" not in comment_safe("evil*/name\n")
    assert "/*" not in comment_safe("a/*b")


def test_names_in_comments_are_sanitised() -> None:
    header = glue_of(inputs=(TensorSpec("in*/put", (2, 3), "float32"),
                             TensorSpec("bias", (4,), "int32")))["tvmgen_fixture.h"]
    assert "in*/put" not in header
    assert "float* in__put;" in header


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "my-model"}, "not a C identifier"),
        ({"workspace_mode": "heap"}, "unknown workspace mode"),
        ({"alignment": 12}, "power of two"),
        ({"outputs": ()}, "no outputs"),
        ({"main": FunctionSignature("main-fn", ())}, "not a C identifier"),
        ({"main": FunctionSignature("tvmgen_fixture_main", (CParam("x; int evil", "float*"),))},
         "bad parameter"),
        ({"pool": bytes(20)}, "outside the 20 B constant pool"),
        ({"inputs": (TensorSpec("x", (1,), "float32", c_name="x; int evil"),)},
         "not a C identifier"),
        ({"inputs": (TensorSpec("a:0", (1,), "float32"), TensorSpec("a_0", (1,), "float32"))},
         "'a:0' and 'a_0' both become the C name 'a_0'"),
        ({"inputs": (TensorSpec("x", (1,), "float32"), TensorSpec("X", (1,), "float32"))},
         "both become the C name 'X'"),
        ({"inputs": (TensorSpec("y", (1,), "float32"),)}, "'y' and 'y' both"),
        ({"inputs": (TensorSpec("float", (1,), "float32"),)}, "reserved"),
        ({"inputs": (TensorSpec("workspace", (1,), "float32"),)}, "reserved"),
        ({"inputs": (TensorSpec("Constants", (1,), "float32"),)}, "pool size macro"),
    ],
)
def test_invalid_record_is_a_user_error(overrides: dict, message: str) -> None:
    with pytest.raises(Error, match=re.escape(message)):
        model_with(**overrides)


def test_dtype_without_c_type_is_rejected() -> None:
    with pytest.raises(Error, match="tensor 'h': dtype 'complex64' has no C type"):
        model_with(inputs=(TensorSpec("h", (2,), "complex64"),))


# --- templates ------------------------------------------------------------------------------


def test_override_by_file_name_can_include_the_builtin() -> None:
    glue = render_glue(fixture_model(), constant_pool(), FIXTURE_TEMPLATES)
    header = glue["tvmgen_fixture.h"]
    assert header.startswith("/* Override by file name: a site banner for model fixture. */\n")
    assert "int32_t tvmgen_fixture_run(" in header
    assert glue["tvmgen_fixture.c"] == glue_of()["tvmgen_fixture.c"]


def test_override_by_relative_path(tmp_path: Path) -> None:
    (tmp_path / "interface").mkdir()
    (tmp_path / "interface" / "tvmgen_model.c.j2").write_text("// {{ run_symbol }}\n")
    glue = render_glue(fixture_model(), constant_pool(), tmp_path)
    assert glue["tvmgen_fixture.c"] == "// tvmgen_fixture_run\n"


def test_harness_override_by_path() -> None:
    text = render_harness(fixture_model(), FIXTURE_TEMPLATES)
    assert text.startswith("/* Override by path: harness for fixture from the test templates. */")
    assert "int main(int argc, char** argv)" in text


def test_missing_template_dir_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(Error, match="does not exist"):
        render_glue(fixture_model(), constant_pool(), tmp_path / "nope")


def test_template_syntax_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "tvmgen_model.h.j2").write_text("line\n{% if name %}\nno end\n")
    with pytest.raises(Error, match=r"tvmgen_model\.h\.j2:\d+: ") as info:
        render_glue(fixture_model(), constant_pool(), tmp_path)
    assert "\n" not in info.value.one_line()


def test_undefined_variable_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "tvmgen_model.h.j2").write_text("{{ no_such_variable }}\n")
    with pytest.raises(Error, match="no_such_variable"):
        render_glue(fixture_model(), constant_pool(), tmp_path)


def test_environment_is_strict() -> None:
    env = glue_environment()
    with pytest.raises(Exception, match="undefined"):
        env.from_string("{{ missing }}").render()


def test_templates_document_every_variable() -> None:
    """Every top-level variable a template receives appears in docs/templates.md."""
    docs = (Path(__file__).parent.parent / "docs" / "templates.md").read_text()
    variables = set(interface_variables(fixture_model()))
    variables |= {"constants", "constant_pool_rows"}
    variables |= {"inputs", "outputs"}
    missing = sorted(v for v in variables if f"`{v}`" not in docs)
    assert not missing, missing


# --- compiling the rendered C ---------------------------------------------------------------

CONTEXTS = {
    "static": {},
    "external": {"workspace_mode": "external"},
    "empty-pools": {"empty_pools": True},
    "empty-pools-external": {"empty_pools": True, "workspace_mode": "external"},
    "all-dtypes": {
        "inputs": tuple(TensorSpec(f"in_{d}", (3,), d) for d in (
            "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
            "uint32", "uint64", "bool")),
        "constants": (ConstantSpec("w", (2, 2), "float32", 0),),
        "pool": bytes(range(16)),
    },
}


@pytest.mark.parametrize("case", sorted(CONTEXTS))
def test_glue_compiles_with_gcc_werror(tmp_path: Path, case: str) -> None:
    gcc = require_program("gcc", "gcc")
    write_glue(CONTEXTS[case], tmp_path)
    compile_c(gcc, ["-O2", *WERROR], tmp_path / "tvmgen_fixture.c", tmp_path)


@pytest.mark.parametrize("case", sorted(CONTEXTS))
def test_glue_compiles_for_cortex_m3(tmp_path: Path, case: str) -> None:
    gcc = require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    write_glue(CONTEXTS[case], tmp_path)
    compile_c(gcc, [*ARM, "-Os", *WERROR], tmp_path / "tvmgen_fixture.c", tmp_path)


@pytest.mark.parametrize("mode", ["static", "external"])
def test_harness_compiles_for_host(tmp_path: Path, mode: str) -> None:
    gcc = require_program("gcc", "gcc")
    write_glue({"workspace_mode": mode}, tmp_path)
    harness = tmp_path / "host_main.c"
    harness.write_text(render_harness(fixture_model(mode)))
    compile_c(gcc, ["-O2", *WERROR], harness, tmp_path)


def test_fixture_library_compiles_for_cortex_m3(tmp_path: Path) -> None:
    gcc = require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    source = tmp_path / FIXTURE_LIB.name
    shutil.copy(FIXTURE_LIB, source)
    compile_c(gcc, [*ARM, *WERROR], source, tmp_path)


def test_header_is_usable_from_cpp(tmp_path: Path) -> None:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed (optional)")
    write_glue({"workspace_mode": "external"}, tmp_path)
    user = tmp_path / "user.cpp"
    user.write_text('#include "tvmgen_fixture.h"\n')
    compile_c(gxx, ["-Wall", "-Wextra", "-Werror"], user, tmp_path)
