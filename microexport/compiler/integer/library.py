"""Fixed-point functions and fixed tables of the generated C library, outside the constant pool.

Some integer operators need data that is not the model's: the uint16 sigmoid table that int16
LOGISTIC, TANH and the integer LSTM interpolate in, the exp and 1/(1 + x) tables of int16
SOFTMAX. Those tables are the same for every model, so they belong with the kernels' code (TFLite
Micro keeps its sigmoid table in its library too) rather than in each model's constant pool. And
int8 SOFTMAX's exponentials are computed per element as TFLite Micro does (gemmlowp's
exp_on_negative_values), instead of a 1 KB table per operator.

`templates/codegen/fixed_point.h.j2` holds the C; it is rendered into the model's C file when the
kernels call it. The kernels reach both through `call_pure_extern`, so the TIR (and its JSON) names
the call. The values of the tables come from `fixedpoint` at render time, so they are built by
the same definitions that the tests check against TFLite Micro. TVM's own LLVM build cannot call
them: within `te_kernels_only` the importer passes the tables as constants and the exponentials
as a table instead (`frontend/tflite_integer.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import tirx

from microexport.compiler.integer import fixedpoint as fp

SOFTMAX_EXP_S8 = "me_softmax_exp_s8"


@dataclass(frozen=True)
class LibraryTable:
    """A fixed table of the C library, read as `table[index]` in a TE kernel like a tensor."""

    name: str  # of the C array; `<name>_at(index)` reads it
    dtype: str
    values: Callable[[], np.ndarray]

    @property
    def reader(self) -> str:
        return f"{self.name}_at"

    def __getitem__(self, index: Any) -> tirx.PrimExpr:
        return tirx.call_pure_extern(self.dtype, self.reader, index)


SIGMOID_U16 = LibraryTable("me_sigmoid_u16", "uint16", fp.sigmoid_table_uint16)
SOFTMAX_EXP_S16 = LibraryTable("me_softmax_exp_s16", "int16", fp.int16_softmax_exp_table)
SOFTMAX_RECIPROCAL_S16 = LibraryTable("me_softmax_reciprocal_s16", "int16",
                                      fp.int16_softmax_reciprocal_table)
TABLES = (SIGMOID_U16, SOFTMAX_EXP_S16, SOFTMAX_RECIPROCAL_S16)


def softmax_exp_s8(diff: tirx.PrimExpr, params: fp.SoftmaxExp) -> tirx.PrimExpr:
    """exp(diff) in Q0.31 of an int8 SOFTMAX input difference (int32 `diff` <= 0), as
    `fixedpoint.softmax_exp` computes it: a call of the library's C function."""
    def i32(value: int) -> tirx.PrimExpr:
        return tirx.const(value, "int32")

    return tirx.call_pure_extern("int32", SOFTMAX_EXP_S8, diff, i32(params.multiplier),
                            i32(max(params.left_shift, 0)), i32(max(-params.left_shift, 0)),
                            i32(params.diff_min))


# A call of any function of the template, in C.
LIBRARY_CALL = r"\b(" + "|".join([SOFTMAX_EXP_S8, *(t.reader for t in TABLES)]) + r")\("


def template_variables(source: str) -> dict[str, Any]:
    """What `templates/codegen/fixed_point.h.j2` renders for C `source`: the functions and
    tables it calls, with the tables' C types and values."""
    called = set(re.findall(LIBRARY_CALL, source))
    tables = [{"name": t.name, "reader": t.reader, "ctype": f"{t.dtype}_t",
               "values": [int(v) for v in t.values()]}
              for t in TABLES if t.reader in called]
    exp = SOFTMAX_EXP_S8 in called
    return {"softmax_exp_s8": exp, "fixed_tables": tables, "uses_fixed_point": bool(tables) or exp,
            # gemmlowp's constants, from the Python that the tests check
            "diff_integer_bits": fp.SOFTMAX_DIFF_INTEGER_BITS, "exp_barrel": fp.EXP_BARREL,
            "one_third": fp.ONE_THIRD, "exp_minus_one_eighth": fp.EXP_MINUS_ONE_EIGHTH}
