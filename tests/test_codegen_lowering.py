"""Math intrinsics TVM's C codegen cannot print are lowered to libm by a pass over our module only:
compiling a model leaves TVM's process-wide intrinsic lowering table untouched."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

ABS_MODEL = '''
import sys

import tvm
from tvm.script import ir as I, relax as R
import microexport

@I.ir_module
class Abs:
    @R.function
    def main(x: R.Tensor((1, 8), "float32")) -> R.Tensor((1, 8), "float32"):
        with R.dataflow():
            y = R.add(R.abs(x), x)
            R.output(y)
        return y

result = microexport.compile(Abs, sys.argv[1], name="absm")
try:
    lowering = tvm.ir.Op.get("tirx.fabs").get_attr("c.FLowerIntrinsic")
except Exception:  # the attribute was never registered in this process
    lowering = None
print("registered" if lowering is not None else "untouched")
'''


def test_fabs_becomes_fabsf_without_registering_a_global_lowering(tmp_path: Path) -> None:
    archive = tmp_path / "absm.tar"
    script = tmp_path / "abs_model.py"  # a file: TVMScript reads the source of the class
    script.write_text(ABS_MODEL)
    result = subprocess.run([sys.executable, str(script), str(archive)], capture_output=True,
                            text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["untouched"], result.stdout + result.stderr
    with tarfile.open(archive) as tar:
        member = tar.extractfile("./codegen/host/src/tvmgen_absm_lib.c")
        assert member is not None
        lib = member.read().decode()
    assert "fabsf(x[" in lib

    import microexport

    x = np.linspace(-2, 2, 8, dtype=np.float32).reshape(1, 8)
    (got,) = microexport.run(archive, {"x": x}).values()
    np.testing.assert_array_equal(got, np.abs(x) + x)
