"""`project create --kind zephyr-module` (issue 12, point 7): the model as a Zephyr module that an
application of its own adds with ZEPHYR_EXTRA_MODULES. The application here is ours
(tests/fixtures/zephyr_module_app: calls tvmgen_sine_run through the module's header on eight
inputs and prints the outputs' bits); it is built with real west against the Zephyr tree and run
in QEMU, and its outputs are compared with TFLite Micro's."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zoo
from fixture_model import fixture_files
from test_zephyr_real import zephyr_env  # noqa: F401 - fixture

import microexport
from microexport.archive.mlf import write_archive
from microexport.cli import main
from microexport.deploy.compare import compare
from microexport.deploy.platforms.zephyr import toolchain_cmake_args
from microexport.deploy.reference import run_reference

APP = Path(__file__).resolve().parent / "fixtures" / "zephyr_module_app"
POINTS = 8  # the fixture application's inputs: x = i * 0.75
LINE = re.compile(r"sine x=([0-9a-f]{8}) y=([0-9a-f]{8})")


def test_module_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "fixture.tar"
    write_archive(archive, fixture_files())
    module = tmp_path / "module"
    assert main(["project", "create", str(archive), "--board", "qemu_cortex_m3", "-o",
                 str(module), "--kind", "zephyr-module"]) == 0
    assert f"-DZEPHYR_EXTRA_MODULES={module}" in capsys.readouterr().out
    files = sorted(str(p.relative_to(module)) for p in module.rglob("*")
                   if p.is_file() and p.parts[len(module.parts)] != "model")
    assert files == ["CMakeLists.txt", "Kconfig", "zephyr/module.yml"]
    assert yaml.safe_load((module / "zephyr" / "module.yml").read_text()) == {
        "name": "microexport_fixture", "build": {"cmake": ".", "kconfig": "Kconfig"}}
    cmake = (module / "CMakeLists.txt").read_text()
    assert "if(CONFIG_MICROEXPORT_FIXTURE)" in cmake
    assert "zephyr_library_named(microexport_fixture)" in cmake
    assert "${CMAKE_CURRENT_LIST_DIR}/model/codegen/host/src/tvmgen_fixture_lib.c" in cmake
    assert "zephyr_include_directories(${CMAKE_CURRENT_LIST_DIR}/model/codegen/host/include)" \
        in cmake
    kconfig = (module / "Kconfig").read_text()
    assert "config MICROEXPORT_FIXTURE\n" in kconfig and "\tdefault y\n" in kconfig
    assert "\tselect REQUIRES_FULL_LIBC\n" in kconfig  # the fixture's C calls isnan
    assert (module / "model" / "codegen" / "host" / "include" / "tvmgen_fixture.h").is_file()
    assert not (module / "microexport.json").exists()  # not a project: nothing to build alone


def test_module_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "fixture.tar"
    write_archive(archive, fixture_files())
    for argv, message in [
        (["--board", "mps2_an386"], "board 'mps2_an386' has no Zephyr platform"),
        (["--board", "qemu_cortex_m3", "--platform", "baremetal"],
         "--kind zephyr-module is for the zephyr platform: drop --platform baremetal"),
    ]:
        status = main(["project", "create", str(archive), "-o", str(tmp_path / "m"),
                       "--kind", "zephyr-module", *argv])
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1 and message in err, err
        assert not (tmp_path / "m").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    status = main(["project", "create", str(archive), "--board", "qemu_cortex_m3", "-o",
                   str(tmp_path / "busy"), "--kind", "zephyr-module"])
    assert status == 2 and "already exists and is not empty" in capsys.readouterr().err


def test_application_uses_the_module_in_qemu(zephyr_env: Path,  # noqa: F811 - fixture
                                             tmp_path: Path) -> None:
    path, sample = zoo.sine_float(tmp_path)
    (name,) = sample
    archive = tmp_path / "sine.tar"
    microexport.compile(path, archive, name="sine")
    module = tmp_path / "module"
    assert main(["project", "create", str(archive), "--board", "qemu_cortex_m3", "-o",
                 str(module), "--kind", "zephyr-module"]) == 0
    app = tmp_path / "app"
    shutil.copytree(APP, app)
    build = tmp_path / "build"
    result = subprocess.run(
        ["west", "build", "-b", "qemu_cortex_m3", "-d", str(build), str(app), "--",
         f"-DZEPHYR_EXTRA_MODULES={module}", *toolchain_cmake_args()],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = (build / "zephyr" / ".config").read_text()
    assert "CONFIG_MICROEXPORT_SINE=y" in config
    assert "CONFIG_MINIMAL_LIBC=y" in config  # sine_float calls no libm
    lines = run_in_qemu(build / "zephyr" / "zephyr.elf")
    xs = np.array([int(x, 16) for x, _ in lines], dtype=np.uint32).view(np.float32)
    ys = np.array([int(y, 16) for _, y in lines], dtype=np.uint32).view(np.float32)
    np.testing.assert_array_equal(xs, np.arange(POINTS, dtype=np.float32) * np.float32(0.75))
    for x, y in zip(xs, ys, strict=True):
        _, (want,) = run_reference(path, {name: np.array([[x]], dtype=np.float32)})
        comparison = compare("y", np.array([[y]], dtype=np.float32), want)
        assert comparison.passed, (x, y, want)


def run_in_qemu(elf: Path) -> list[tuple[str, str]]:
    """Run the application in QEMU (Zephyr's qemu_cortex_m3 machine) until it prints
    "sine done"; its "sine x=... y=..." lines."""
    qemu = subprocess.Popen(
        ["qemu-system-arm", "-cpu", "cortex-m3", "-machine", "lm3s6965evb", "-nographic",
         "-vga", "none", "-monitor", "none", "-serial", "stdio", "-kernel", str(elf)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    output = b""
    deadline = time.monotonic() + 120
    try:
        assert qemu.stdout is not None
        os.set_blocking(qemu.stdout.fileno(), False)
        while b"sine done" not in output and time.monotonic() < deadline:
            chunk = qemu.stdout.read()
            if chunk:
                output += chunk
            elif qemu.poll() is not None:
                break
            else:
                time.sleep(0.05)
    finally:
        os.killpg(qemu.pid, signal.SIGKILL)
        qemu.wait(10)
    text = output.decode(errors="replace")
    assert "sine done" in text, text
    lines = LINE.findall(text)
    assert len(lines) == POINTS, text
    return lines
