"""MLF archives: deterministic bytes, safe reading, metadata.json and parameters."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fixture_model import PARAMS, fixture_files, fixture_model

from microexport.archive import mlf as package
from microexport.archive.mlf import (
    ArchiveLayout,
    check_member_name,
    extract_archive,
    parameters_npz,
    read_archive,
    read_parameters,
    write_archive,
)
from microexport.errors import Error

FILES = {
    "metadata.json": b"{}\n",
    "codegen/host/src/b.c": b"int b;\n",
    "codegen/host/src/a.c": b"int a;\n",
    "codegen/host/include/a.h": b"",
    "parameters/m.npz": b"\x00\x01",
}


# --- writing --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_archive_bytes_are_deterministic(tmp_path: Path, suffix: str) -> None:
    first, second = tmp_path / f"one{suffix}", tmp_path / "sub" / f"two{suffix}"
    write_archive(first, fixture_files())
    write_archive(second, dict(reversed(fixture_files().items())))
    assert first.read_bytes() == second.read_bytes()


def test_gzip_header_has_no_name_or_time(tmp_path: Path) -> None:
    path = tmp_path / "m.tar.gz"
    write_archive(path, FILES)
    header = path.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] == 0  # no FNAME
    assert header[4:8] == b"\x00\x00\x00\x00"  # mtime 0


def test_entries_are_sorted_with_directories_and_fixed_owners(tmp_path: Path) -> None:
    path = tmp_path / "m.tar"
    write_archive(path, FILES)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names[:5] == [".", "./codegen", "./codegen/host", "./codegen/host/include",
                         "./codegen/host/include/a.h"]  # "./" as TVM's MLF export named them
    for member in members:
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
            0, 0, 0, "", "")
        assert member.mode == (0o755 if member.isdir() else 0o644)
    assert {m.name for m in members if m.isdir()} == {
        ".", "./codegen", "./codegen/host", "./codegen/host/include", "./codegen/host/src",
        "./parameters"}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.tar"
    write_archive(path, FILES)
    assert read_archive(path) == FILES
    gz = tmp_path / "m.tgz"
    write_archive(gz, FILES)
    assert read_archive(gz) == FILES


def test_output_file_mode_follows_umask_like_open(tmp_path: Path) -> None:
    path, reference = tmp_path / "m.tar", tmp_path / "reference"
    write_archive(path, FILES)
    reference.write_bytes(b"")
    assert path.stat().st_mode == reference.stat().st_mode


def test_unwritable_path_is_one_line_error_and_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(Error, match=r"cannot write .*m\.tar") as info:
        write_archive(blocker / "m.tar", FILES)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_directory_as_output_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(Error, match="Is a directory"):
        write_archive(tmp_path, FILES)


def test_failed_replace_keeps_old_archive_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.tar"
    path.write_bytes(b"old")

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(package.os, "replace", fail)
    with pytest.raises(Error, match="No space left on device"):
        write_archive(path, FILES)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.tar"]


@pytest.mark.parametrize(
    "name", ["/abs", "../up", "a/../../b", "a//b", "a/./b", "", "a\\b", "./", "a/"]
)
def test_unsafe_member_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        check_member_name(name)


def test_leading_dot_slash_is_normalised() -> None:
    assert check_member_name("./metadata.json") == "metadata.json"


def test_file_and_directory_clash_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both a file and a directory"):
        write_archive(tmp_path / "m.tar", {"a": b"", "a/b": b""})


# --- reading --------------------------------------------------------------------------------


def crafted_tar(path: Path, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x") -> Path:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    with tarfile.open(path, "w") as tar:
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil"])
def test_path_traversal_is_refused(tmp_path: Path, name: str) -> None:
    archive = crafted_tar(tmp_path / "bad.tar", name)
    with pytest.raises(Error, match="unsafe archive member"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_links_are_refused(tmp_path: Path) -> None:
    archive = crafted_tar(tmp_path / "bad.tar", "link", tarfile.SYMTYPE)
    with pytest.raises(Error, match="not a regular file"):
        read_archive(archive)


@pytest.mark.parametrize("content", [b"not a tar at all" * 100, b"\x1f\x8b\x08garbage", b""])
def test_corrupt_archive_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    with pytest.raises(Error, match="corrupt"):
        read_archive(path)


def test_truncated_archive_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.tar.gz"
    write_archive(path, fixture_files())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(Error, match="corrupt"):
        read_archive(path)


def test_missing_archive_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(Error, match="cannot read archive"):
        read_archive(tmp_path / "nope.tar")


def test_extract_writes_every_file(tmp_path: Path) -> None:
    path = tmp_path / "m.tar"
    write_archive(path, FILES)
    dest = extract_archive(path, tmp_path / "out")
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data


# --- layout ---------------------------------------------------------------------------------


def test_layout_helpers() -> None:
    assert ArchiveLayout.source("a.c") == "codegen/host/src/a.c"
    assert ArchiveLayout.header("a.h") == "codegen/host/include/a.h"
    assert ArchiveLayout.parameters("kws") == "parameters/kws.npz"
    assert (ArchiveLayout.RELAX_TEXT, ArchiveLayout.TIR_TEXT) == ("src/relax.txt", "src/tir.txt")


def test_archive_layout_is_documented() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "archive.md").read_text()
    for path in (ArchiveLayout.METADATA, ArchiveLayout.SRC_DIR, ArchiveLayout.INCLUDE_DIR,
                 ArchiveLayout.RELAX_TEXT, ArchiveLayout.TIR_TEXT, ArchiveLayout.GRAPH_JSON):
        assert path in docs
    for key in package.metadata(fixture_model()):
        assert f"`{key}`" in docs


# --- parameters -----------------------------------------------------------------------------


def test_parameters_are_deterministic_and_loadable() -> None:
    params = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), **PARAMS}
    data = parameters_npz(params)
    assert data == parameters_npz(dict(reversed(params.items())))
    loaded = read_parameters(data)
    assert sorted(loaded) == sorted(params)
    for name, array in params.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype
    with np.load(io.BytesIO(data)) as npz:  # plain numpy reads it too
        np.testing.assert_array_equal(npz["w"], params["w"])


def test_parameters_have_fixed_zip_dates() -> None:
    with zipfile.ZipFile(io.BytesIO(parameters_npz(PARAMS))) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == ["offsets.npy", "scale.npy"]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_empty_parameters() -> None:
    assert read_parameters(parameters_npz({})) == {}
