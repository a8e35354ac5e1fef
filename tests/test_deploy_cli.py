"""The deploy commands end to end through the CLI: boards, project create, build, run, size,
flash; and every kind of bad input gives one line and exit status 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from fixture_model import expected_outputs, fixture_files, fixture_inputs
from support import require_program

from microexport.archive.mlf import write_archive
from microexport.cli import main
from microexport.deploy.boards import load_board

CATALOGUE = ["host", "mps2_an385", "mps2_an386", "mps2_an500", "mps2_an521", "mps3_an547",
             "nrf5340dk_nrf5340_cpuapp", "nucleo_f746zg", "nucleo_l4r5zi", "qemu_cortex_m3",
             "qemu_x86", "stm32f746g_disco"]


def cli(args: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_user_error(status: int, err: str, *fragments: str) -> None:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "fixture.tar"
    write_archive(path, fixture_files())
    return path


@pytest.fixture
def input_files(tmp_path: Path) -> list[str]:
    inputs = fixture_inputs(2)
    np.save(tmp_path / "x.npy", inputs["x:0"])
    np.save(tmp_path / "bias.npy", inputs["bias"])
    return ["--input", str(tmp_path / "x.npy"), "--input", f"bias={tmp_path / 'bias.npy'}"]


@pytest.fixture
def qemu() -> None:
    require_program("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    require_program("qemu-system-arm", "qemu-system-arm")


def test_boards_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(["boards"], capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "cpu", "fpu", "flash", "ram", "platforms"]
    assert [line.split()[0] for line in lines[1:]] == CATALOGUE
    row = next(line for line in lines if line.startswith("mps2_an386 ")).split()
    assert row == ["mps2_an386", "cortex-m4", "fpv4-sp-d16", "(hard)", "4M", "4M",
                   "baremetal"]  # not a Zephyr 4.0 board


def test_project_build_run_size(archive: Path, input_files: list[str], tmp_path: Path,
                                qemu: None, capsys: pytest.CaptureFixture[str]) -> None:
    proj = tmp_path / "proj"
    status, out, _ = cli(["project", "create", archive, "--board", "mps2_an386", "-o", proj],
                         capsys)
    assert status == 0 and "platform 'baremetal'" in out
    assert sorted(p.name for p in proj.iterdir()) == ["board.yaml", "microexport.json", "model",
                                                      "src"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".proj")]
    status, out, _ = cli(["build", proj], capsys)
    assert status == 0 and "built" in out and "size: flash" in out
    counts = []
    for run in range(2):
        status, out, _ = cli(["run", proj, *input_files, "-o", tmp_path / f"out{run}"], capsys)
        assert status == 0, out
        counts.append(re.search(r"^(\d+) instructions per inference$", out, re.M).group(1))
        inputs = fixture_inputs(2)
        want = expected_outputs(inputs)
        np.testing.assert_array_equal(np.load(tmp_path / f"out{run}" / "y.npy"), want["y"])
        np.testing.assert_array_equal(np.load(tmp_path / f"out{run}" / "count.npy"),
                                      want["count"])
    assert counts[0] == counts[1]
    status, out, _ = cli(["size", proj], capsys)
    assert status == 0
    for fragment in ("flash:", "code", "constants", "RAM:", "workspace", "io", "stack",
                     ".text", "tvmgen_fixture_run", "memory plan: workspace 32 B",
                     "liveness lower bound"):
        assert fragment in out
    report = json.loads((proj / "size.json").read_text())
    assert report["plan"]["workspace_bytes"] == 32 and report["plan"]["io_bytes"] == 80
    assert report["board"] == "mps2_an386" and report["ram"]["available"] == 4 * 1024 * 1024
    assert report["flash"]["by_kind"]["constants"] == 32
    assert report["ram"]["by_kind"]["workspace"] == 32 and report["ram"]["by_kind"]["io"] == 80
    assert sum(report["flash"]["by_kind"].values()) == report["flash"]["used"]
    assert sum(report["ram"]["by_kind"].values()) == report["ram"]["used"]
    status, out, _ = cli(["size", proj, "--json"], capsys)
    assert json.loads(out)["functions"]["tvmgen_fixture_run"] > 0


def test_run_archive_on_a_board(archive: Path, input_files: list[str], tmp_path: Path,
                                qemu: None, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(["run", archive, "--board", "mps2_an385", *input_files,
                          "-o", tmp_path / "out", "--build-dir", tmp_path / "work"], capsys)
    assert status == 0 and "instructions per inference" in out
    assert (tmp_path / "work" / "build" / "fixture.elf").is_file()


def test_unsupported_commands_and_options(archive: Path, input_files: list[str],
                                          tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    proj = tmp_path / "proj"
    assert cli(["project", "create", archive, "--board", "mps2_an385", "-o", proj], capsys)[0] == 0
    status, _, err = cli(["flash", proj], capsys)
    assert_user_error(status, err, "baremetal doesn't support flash on board 'mps2_an385'")
    status, _, err = cli(["run", proj, *input_files, "-o", tmp_path / "o", "--port", "/dev/x"],
                         capsys)
    assert_user_error(status, err, "baremetal doesn't support --port")
    status, _, err = cli(["run", archive, "--board", "host", *input_files, "-o", tmp_path / "o",
                          "--port", "/dev/x"], capsys)
    assert_user_error(status, err, "host doesn't support --port")
    status, _, err = cli(["run", proj, "--board", "mps2_an386", *input_files,
                          "-o", tmp_path / "o"], capsys)
    assert_user_error(status, err, "project for board 'mps2_an385'")


def test_bad_boards_and_platforms(archive: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(["project", "create", archive, "--board", "nope", "-o", tmp_path / "p"],
                         capsys)
    assert_user_error(status, err, "unknown board 'nope'", "mps2_an385", "nucleo_f746zg")
    status, _, err = cli(["project", "create", archive, "--board", "host", "--platform",
                          "zephyr", "-o", tmp_path / "p"], capsys)
    assert_user_error(status, err, "board 'host' does not support platform 'zephyr'")
    status, _, err = cli(["project", "create", archive, "--board", "qemu_x86", "--platform",
                          "baremetal", "-o", tmp_path / "p"], capsys)
    assert_user_error(status, err, "does not support platform 'baremetal': it supports zephyr")
    assert not (tmp_path / "p").exists()
    status, _, err = cli(["build", tmp_path / "nothing"], capsys)
    assert_user_error(status, err, "does not exist", "microexport project create")


def test_missing_toolchain_names_the_debian_package(archive: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    board = load_board("mps2_an385")
    text = (Path(__file__).parent.parent / "boards" / "mps2_an385.yaml").read_text()
    custom = tmp_path / "my_board.yaml"
    custom.write_text(text.replace("name: mps2_an385", "name: my_board")
                      .replace("compiler: arm-none-eabi-gcc", "compiler: arm-none-eabi-gcc-9z"))
    proj = tmp_path / "proj"
    assert cli(["project", "create", archive, "--board", custom, "-o", proj], capsys)[0] == 0
    status, _, err = cli(["build", proj], capsys)
    assert_user_error(status, err, "'arm-none-eabi-gcc-9z' not found",
                      f"apt-get install {board.compiler_package}")


def test_existing_project_directory(archive: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "keep.txt").write_text("mine")
    status, _, err = cli(["project", "create", archive, "--board", "mps2_an385", "-o", proj],
                         capsys)
    assert_user_error(status, err, "already exists and is not empty", "--force")
    assert (proj / "keep.txt").read_text() == "mine"
    status, _, _ = cli(["project", "create", archive, "--board", "mps2_an385", "-o", proj,
                        "--force"], capsys)
    assert status == 0 and not (proj / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixture.tar", "proj"]


def test_model_too_big_for_the_board(archive: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    text = (Path(__file__).parent.parent / "boards" / "qemu_cortex_m3.yaml").read_text()
    custom = tmp_path / "tiny.yaml"
    custom.write_text(text.replace("name: qemu_cortex_m3", "name: tiny")
                      .replace("size: 256K", "size: 16K"))
    status, _, err = cli(["project", "create", archive, "--board", custom, "-o",
                          tmp_path / "p"], capsys)
    assert_user_error(status, err, "does not fit the flash of board 'tiny'", "needs about",
                      "the board has 16384 bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixture.tar", "tiny.yaml"]
