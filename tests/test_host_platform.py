"""Host platform end to end on the hand-written fixture model; the subprocess wrapper."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from fixture_model import (
    FIXTURE_TEMPLATES,
    FIXTURES,
    expected_outputs,
    fixture_files,
    fixture_inputs,
    fixture_model,
)
from support import require_program

import microexport
from microexport.archive.mlf import ArchiveLayout, write_archive
from microexport.deploy.boards import load_board
from microexport.deploy.platforms import PLATFORMS, Capabilities, Platform, get_platform
from microexport.deploy.platforms.host import HostPlatform, first_error
from microexport.deploy.subproc import CommandFailed, debian_package, run_command
from microexport.deploy.tensors import decode_outputs, encode_inputs
from microexport.errors import Error, InputError, MissingTool


@pytest.fixture
def cc() -> str:
    return require_program("cc", "gcc")


def make_archive(tmp_path: Path, mode: str = "static", **changes: bytes | None) -> Path:
    files = fixture_files(mode)
    for name, data in changes.items():
        path = ArchiveLayout.source(name)
        if data is None:
            del files[path]
        else:
            files[path] = data
    archive = tmp_path / f"fixture-{mode}.tar"
    write_archive(archive, files)
    return archive


def host(templates: Path | None = None) -> Platform:
    return get_platform(load_board("host"), templates=templates)


def assert_outputs(got: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> None:
    want = expected_outputs(inputs)
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype
        assert got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["static", "external"])
def test_run_archive_numerics(tmp_path: Path, cc: str, mode: str) -> None:
    inputs = fixture_inputs()
    got = host().run_archive(make_archive(tmp_path, mode), inputs, tmp_path / "work")
    assert_outputs(got, inputs)


def test_build_once_run_many(tmp_path: Path, cc: str) -> None:
    platform = host()
    project = platform.prepare(make_archive(tmp_path), tmp_path / "work")
    build = platform.build(project)
    assert build.artifact.is_file()
    assert (project.build_dir / "compile.log").is_file()
    for seed in range(3):
        inputs = fixture_inputs(seed)
        assert_outputs(platform.run(build, inputs), inputs)


def test_reused_work_dir_drops_files_of_the_previous_archive(tmp_path: Path, cc: str) -> None:
    work = tmp_path / "work"
    broken = make_archive(tmp_path, **{"tvmgen_fixture_lib.c": (FIXTURES / "broken_lib.c")
                                       .read_bytes()})
    with pytest.raises(Error, match="compiling"):
        host().run_archive(broken, fixture_inputs(), work)
    inputs = fixture_inputs()
    assert_outputs(host().run_archive(make_archive(tmp_path), inputs, work), inputs)


def test_only_the_sources_the_record_names_are_built(tmp_path: Path, cc: str) -> None:
    """A stray .c file in an archive (or a member named to inject build-file syntax) never
    reaches the compiler or a build file: the sources come from the record."""
    stray = {"zz_stray.c": (FIXTURES / "broken_lib.c").read_bytes()}
    inputs = fixture_inputs()
    got = host().run_archive(make_archive(tmp_path, **stray), inputs, tmp_path / "work")
    assert_outputs(got, inputs)


def test_api_run_uses_host_platform(tmp_path: Path, cc: str) -> None:
    inputs = fixture_inputs(7)
    got = microexport.run(make_archive(tmp_path), inputs, build_dir=tmp_path / "build")
    assert_outputs(got, inputs)


def test_harness_template_override(tmp_path: Path, cc: str) -> None:
    inputs = fixture_inputs()
    platform = host(FIXTURE_TEMPLATES)
    got = platform.run_archive(make_archive(tmp_path), inputs, tmp_path / "work")
    assert_outputs(got, inputs)
    harness = (tmp_path / "work" / "build" / "host_main.c").read_text()
    assert harness.startswith("/* Override by path: harness for fixture")


def test_nothing_is_written_to_the_cwd(
    tmp_path: Path, cc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_archive(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    microexport.run(archive, fixture_inputs())
    assert list(cwd.iterdir()) == []


def test_big_endian_inputs_are_accepted(tmp_path: Path, cc: str) -> None:
    inputs = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in fixture_inputs().items()}
    got = host().run_archive(make_archive(tmp_path), inputs, tmp_path / "work")
    assert_outputs(got, {k: v.astype(v.dtype.newbyteorder("=")) for k, v in inputs.items()})


# --- failures -------------------------------------------------------------------------------


def test_run_failure_is_one_line(tmp_path: Path, cc: str) -> None:
    inputs = fixture_inputs()
    inputs["x:0"][0, 0] = np.nan  # the fixture returns 7
    with pytest.raises(Error, match=r"exit status 3\): harness: tvmgen_fixture_run failed "
                                    r"with status 7") as info:
        host().run_archive(make_archive(tmp_path), inputs, tmp_path / "work")
    assert "\n" not in str(info.value)


def test_compile_error_names_the_first_error(tmp_path: Path, cc: str) -> None:
    broken = (FIXTURES / "broken_lib.c").read_bytes()
    archive = make_archive(tmp_path, **{"tvmgen_fixture_lib.c": broken})
    with pytest.raises(Error, match=r"compiling 'fixture' for host failed .*'x' undeclared"
                                    r".*compile\.log"):
        host().run_archive(archive, fixture_inputs(), tmp_path / "work")


def test_link_error_names_the_undefined_symbol(tmp_path: Path, cc: str) -> None:
    archive = make_archive(tmp_path, **{"tvmgen_fixture_lib.c": b"/* no AOT main */\n"})
    with pytest.raises(Error, match="undefined reference to .tvmgen_fixture___tvm_main__"):
        host().run_archive(archive, fixture_inputs(), tmp_path / "work")


def test_missing_source_is_one_line(tmp_path: Path, cc: str) -> None:
    archive = make_archive(tmp_path, **{"tvmgen_fixture_lib.c": None})
    with pytest.raises(Error, match="tvmgen_fixture_lib.c is missing") as info:
        host().run_archive(archive, fixture_inputs(), tmp_path / "work")
    assert "\n" not in str(info.value)


def test_missing_compiler_names_the_package(tmp_path: Path) -> None:
    board = dataclasses.replace(load_board("host"), compiler="microexport-no-such-cc")
    with pytest.raises(MissingTool, match="apt-get install gcc"):
        HostPlatform(board).run_archive(make_archive(tmp_path), fixture_inputs(), tmp_path / "w")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: i.update({"x:0": i["x:0"].reshape(3, 2)}),
         "input 'x:0': expected shape (2, 3) float32, got shape (3, 2) float32"),
        (lambda i: i.update({"x:0": i["x:0"].astype(np.float64)}),
         "input 'x:0': expected shape (2, 3) float32, got shape (2, 3) float64"),
        (lambda i: i.update({"bias": i["bias"].astype(np.int64)}),
         "input 'bias': expected shape (4,) int32, got shape (4,) int64"),
        (lambda i: i.pop("bias"), "missing input 'bias'"),
        (lambda i: i.update({"z": np.zeros(1)}), "unknown input 'z': the model's inputs are "
                                                 "x:0, bias"),
    ],
)
def test_input_errors_before_building(tmp_path: Path, change, message: str) -> None:
    inputs = fixture_inputs()
    change(inputs)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        host().run_archive(make_archive(tmp_path), inputs, tmp_path / "work")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "work").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "m.tar"
    path.write_bytes(b"nope" * 300)
    with pytest.raises(Error, match="corrupt"):
        host().run_archive(path, fixture_inputs(), tmp_path / "work")


# --- encoding -------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    model = fixture_model()
    inputs = fixture_inputs()
    raw = encode_inputs(model, inputs)
    assert raw["x:0"] == inputs["x:0"].astype("<f4").tobytes()
    outputs = expected_outputs(inputs)
    encoded = {name: array.astype(array.dtype.newbyteorder("<")).tobytes()
               for name, array in outputs.items()}
    decoded = decode_outputs(model, encoded)
    for name, array in outputs.items():
        np.testing.assert_array_equal(decoded[name], array)
        assert decoded[name].dtype == array.dtype and decoded[name].flags.writeable


def test_short_output_is_an_error() -> None:
    with pytest.raises(Error, match="output 'y': got 3 bytes, expected 24"):
        decode_outputs(fixture_model(), {"y": b"abc", "count": bytes(16)})


# --- registry -------------------------------------------------------------------------------


def test_registry_is_sorted_and_has_host() -> None:
    assert list(PLATFORMS) == ["baremetal", "host", "zephyr"]
    assert PLATFORMS["host"] is HostPlatform
    assert HostPlatform.capabilities == Capabilities(runs_models=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        HostPlatform.capabilities.runs_models = False  # type: ignore[misc]


def test_unsupported_platform_for_board() -> None:
    with pytest.raises(Error, match="does not support platform 'qemu'"):
        get_platform(load_board("host"), "qemu")
    board = dataclasses.replace(load_board("host"), platforms=("host", "qemu"))
    with pytest.raises(Error, match="platform 'qemu' of board 'host' is not implemented"):
        get_platform(board, "qemu")


def test_first_error() -> None:
    log = "a.c: In function 'f':\na.c:1:5: error: 'x' undeclared\ncc1: all warnings...\n"
    assert first_error(log) == "a.c:1:5: error: 'x' undeclared"
    assert first_error("just text\nlast\n") == "last"


# --- subprocess wrapper ---------------------------------------------------------------------


def test_run_command_logs_quoted_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="microexport.deploy.subproc"):
        result = run_command([sys.executable, "-c", "print('hi there')"], cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "hi there\n"
    assert "-c 'print('\"'\"'hi there'\"'\"')'" in caplog.text


def test_run_command_missing_program() -> None:
    with pytest.raises(MissingTool, match="'arm-none-eabi-nope' not found: install it with "
                                          "'apt-get install arm-none-eabi-nope'"):
        run_command(["arm-none-eabi-nope"])
    with pytest.raises(MissingTool, match="apt-get install some-package"):
        run_command(["microexport-no-such-tool"], package="some-package")


def test_debian_packages() -> None:
    assert debian_package("arm-none-eabi-gcc") == "gcc-arm-none-eabi"
    assert debian_package("/usr/bin/cc") == "gcc"
    assert debian_package("qemu-system-arm") == "qemu-system-arm"


def test_run_command_timeout_is_one_line() -> None:
    with pytest.raises(Error, match=r"timed out after 0\.2 s") as info:
        run_command([sys.executable, "-c", "import time; time.sleep(10)"], timeout=0.2)
    assert "\n" not in str(info.value)


def test_run_command_check() -> None:
    with pytest.raises(CommandFailed, match=r"boom failed \(exit status 3\): bad thing"):
        run_command(
            [sys.executable, "-c", "import sys; print('bad thing', file=sys.stderr); sys.exit(3)"],
            check=True, what="boom",
        )


def test_run_command_missing_program_path(tmp_path: Path) -> None:
    with pytest.raises(Error, match="not found or not executable"):
        run_command([str(tmp_path / "prog")])
