"""`pip install .` without extras is enough to compile a Relax module.

A fresh virtual environment (no system site-packages) gets the repository installed without any
extra, then compiles a small Relax IRModule with `microexport.compile` and runs the console
script. A module imported on every compile but declared only in an extra (as jsonschema once
was) fails here with ModuleNotFoundError. The venv is built once per test session; pip reaches
the package index configured for this machine. Under CI (`CI=true`) nothing is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import venv
from pathlib import Path

import pytest
from support import in_ci

REPO = Path(__file__).resolve().parent.parent
# Not part of the source tree handed to pip: VCS data, caches and build leftovers.
IGNORED = shutil.ignore_patterns(".git", ".hypothesis", ".pytest_cache", ".ruff_cache",
                                 "__pycache__", "*.egg-info", "build", "dist", "out", "*.pyc")
INSTALL_TIMEOUT = 600  # seconds; a warm install takes well under a minute
# Extras that must not be needed (and so must not be installed by a core install).
OPTIONAL_MODULES = ("torch", "onnx", "onnxruntime", "tflite", "tflite_micro", "west",
                    "elftools", "pytest")

COMPILE_SCRIPT = textwrap.dedent("""\
    import importlib.util
    import json
    import sys

    import numpy as np
    from tvm import relax

    import microexport

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8), "float32"))
    weight = relax.const(np.arange(32, dtype="float32").reshape(8, 4) / 32)
    bias = relax.const(np.ones(4, dtype="float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            hidden = bb.emit(relax.op.add(relax.op.matmul(x, weight), bias))
            out = bb.emit_output(relax.op.nn.relu(hidden))
        bb.emit_func_output(out)

    result = microexport.compile(bb.get(), output=sys.argv[1], name="core")
    optional = [m for m in sys.argv[2:] if importlib.util.find_spec(m) is not None]
    print(json.dumps({"archive": str(result.archive), "module": microexport.__file__,
                      "optional": optional}))
    """)


def _clean_env() -> dict[str, str]:
    """The environment for the venv's programs: nothing leaks in from this interpreter."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _fail_or_skip(message: str) -> None:
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """(python of a fresh venv with `pip install <repo>` and no extras, install seconds)."""
    root = tmp_path_factory.mktemp("core-install")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=IGNORED)  # pip builds in the tree: keep ours clean
    env_dir = root / "venv"
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    except (OSError, subprocess.CalledProcessError) as err:
        _fail_or_skip(f"cannot create a virtual environment with pip: {err}")
    python = env_dir / "bin" / "python"
    start = time.monotonic()
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-input", "--progress-bar", "off",
         str(source)],
        capture_output=True, text=True, env=_clean_env(), timeout=INSTALL_TIMEOUT,
    )
    seconds = time.monotonic() - start
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        pytest.fail(f"pip install of the repository without extras failed:\n{tail}")
    return python, seconds


@pytest.mark.slow
def test_core_install_compiles_a_relax_module(core_venv: tuple[Path, float],
                                              tmp_path: Path) -> None:
    python, install_seconds = core_venv
    script = tmp_path / "compile_relax.py"
    script.write_text(COMPILE_SCRIPT)
    archive = tmp_path / "out" / "core.tar"
    start = time.monotonic()
    result = subprocess.run([str(python), str(script), str(archive), *OPTIONAL_MODULES],
                            capture_output=True, text=True, env=_clean_env(), cwd=tmp_path,
                            timeout=600)
    compile_seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # The venv's own copy ran, and no extra came along with the core install.
    assert Path(report["module"]).resolve().is_relative_to(python.parent.parent.resolve())
    assert report["optional"] == []
    assert archive.is_file()
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        metadata = json.loads(tar.extractfile("./metadata.json").read())  # type: ignore[union-attr]
    assert "./codegen/host/src/tvmgen_core_lib.c" in names
    assert "./codegen/host/include/tvmgen_core.h" in names
    assert metadata["model_name"] == "core"
    print(f"core install: pip install {install_seconds:.1f} s, compile {compile_seconds:.1f} s")


@pytest.mark.slow
def test_core_install_console_script(core_venv: tuple[Path, float]) -> None:
    python, _ = core_venv
    script = python.parent / "microexport"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            env=_clean_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("microexport ")
    assert sys.executable != str(python)
