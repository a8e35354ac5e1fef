"""The generated Zephyr application under Zephyr's own test runner (issue 12, point 8):
`west twister -T <projects> -p qemu_cortex_m3` builds each project's self-test (testcase.yaml,
selftest.conf) and runs it in QEMU; the console harness passes on "microexport selftest: PASS".

Two projects of tflite-micro's sine_float: one with TFLite Micro's outputs embedded as the
reference (must pass), one with those outputs off by 0.5 (must fail, at once rather than at the
timeout). The pruned Zephyr tree has no tests/test_config.yaml, which twister reads by default, so
tests/fixtures/zephyr_twister_test_config.yaml is passed with --test-config there; the Debian
toolchain (ZEPHYR_TOOLCHAIN_VARIANT=cross-compile) is not in the boards' toolchain lists, hence
--force-toolchain. Twister needs psutil, ply, natsort, tabulate and anytree (Zephyr's
scripts/requirements-build-test.txt and -run-test.txt).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import zlib
from pathlib import Path

import zoo
from test_zephyr_real import missing, zephyr_env  # noqa: F401 - fixture

import microexport
from microexport.deploy.boards import load_board
from microexport.deploy.compare import sample_inputs
from microexport.deploy.platforms.zephyr import SelftestData, ZephyrPlatform, toolchain_cmake_args
from microexport.deploy.project import create_project
from microexport.deploy.reference import run_reference

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TEST_CONFIG = FIXTURES / "zephyr_twister_test_config.yaml"
TWISTER_MODULES = ("psutil", "ply", "natsort", "tabulate", "anytree", "elftools")
BOARD = "qemu_cortex_m3"


def twister_command(base: Path, root: Path, out: Path) -> list[str]:
    """`west twister` for the projects under `root` on QEMU, with what the tree and toolchain
    call for (see the module docstring)."""
    command = ["west", "twister", "-T", str(root), "-p", load_board(BOARD).zephyr_board or "",
               "--outdir", str(out), "-j", "2", "--inline-logs"]
    if not (base / "tests" / "test_config.yaml").is_file():
        command += ["--test-config", str(TEST_CONFIG)]
    if os.environ.get("ZEPHYR_TOOLCHAIN_VARIANT", "zephyr") != "zephyr":
        command.append("--force-toolchain")
    command += [f"-x={arg}" for arg in toolchain_cmake_args()]
    return command


def test_twister_runs_the_selftest_in_qemu(zephyr_env: Path,  # noqa: F811 - fixture
                                           tmp_path: Path) -> None:
    absent = [name for name in TWISTER_MODULES if importlib.util.find_spec(name) is None]
    if absent:
        missing(f"twister needs the Python packages {', '.join(absent)} "
                f"(pip install {' '.join(absent)})")
    path, _ = zoo.sine_float(tmp_path)
    root = tmp_path / "projects"
    expected_crc = {}
    for name, offset in (("sine_ok", 0.0), ("sine_wrong", 0.5)):
        archive = tmp_path / f"{name}.tar"
        result = microexport.compile(path, archive, name=name)
        project = root / name
        opened = create_project(archive, BOARD, project, platform="zephyr")
        assert isinstance(opened.platform, ZephyrPlatform)
        inputs = sample_inputs(result.model.inputs, 0)
        reference, expected = run_reference(path, inputs)
        outputs = {spec.name: want + offset
                   for spec, want in zip(result.model.outputs, expected, strict=True)}
        opened.platform.write_selftest(opened.project, SelftestData(inputs, outputs, reference))
        selftest = (project / "src" / "selftest.c").read_text()
        assert f"reference {reference}" in selftest
        (output,) = outputs.values()
        expected_crc[name] = zlib.crc32(output.astype("<f4").tobytes())
    out = tmp_path / "twister-out"
    run = subprocess.run(twister_command(zephyr_env, root, out), cwd=tmp_path,
                         capture_output=True, text=True, timeout=3600, check=False)
    log = run.stdout[-4000:] + run.stderr[-4000:]
    report = out / "twister.json"
    assert report.is_file(), log
    # twister names a suite <directory under -T>/<test name>
    suites = {suite["name"]: suite for suite in json.loads(report.read_text())["testsuites"]}
    assert set(suites) == {"sine_ok/microexport.sine_ok.selftest",
                           "sine_wrong/microexport.sine_wrong.selftest"}, log
    ok = suites["sine_ok/microexport.sine_ok.selftest"]
    wrong = suites["sine_wrong/microexport.sine_wrong.selftest"]
    assert ok["status"] == "passed", log
    assert wrong["status"] == "failed", log
    assert run.returncode != 0  # twister reports the failed one
    # The failure came from the self-test's verdict, not from the harness timeout.
    assert float(wrong["execution_time"]) < load_board(BOARD).run_timeout / 2, wrong
    # Each output's CRC-32 is recorded in twister.json; the wrong reference's is not the board's.
    (ok_record,) = ok["recording"]
    (wrong_record,) = wrong["recording"]
    assert ok_record["output"] == wrong_record["output"] == "StatefulPartitionedCall_0"
    assert int(wrong_record["crc32"], 16) != expected_crc["sine_wrong"]
    handler = next((out / ok["platform"].replace("/", "_") / "sine_ok").glob("**/handler.log"))
    text = handler.read_text()
    assert "microexport selftest: PASS" in text
    assert "0 of 1 elements outside tolerance" in text
