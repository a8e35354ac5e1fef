"""Model Library Format (MLF) archives: layout, metadata.json, parameters and deterministic tar I/O.

The archive layout is described in docs/archive.md. Archives are written so that the same files
give byte-identical output: sorted entries, fixed timestamps and owners, no gzip name or time.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import posixpath
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from microexport.archive.mlf_v7 import mlf_v7_fields
from microexport.errors import Error
from microexport.model import CompiledModel

ZIP_DATE_TIME: Final = (1980, 1, 1, 0, 0, 0)  # earliest date a zip file can hold
FILE_MODE: Final = 0o644
DIR_MODE: Final = 0o755
GZIP_SUFFIXES: Final = (".tar.gz", ".tgz")


class ArchiveLayout:
    """Paths inside an MLF archive (POSIX, relative to the archive root)."""

    METADATA: Final = "metadata.json"
    SRC_DIR: Final = "codegen/host/src"
    INCLUDE_DIR: Final = "codegen/host/include"
    PARAMETERS_DIR: Final = "parameters"
    RELAX_TEXT: Final = "src/relax.txt"
    TIR_TEXT: Final = "src/tir.txt"
    GRAPH_JSON: Final = "src/graph.json"

    @staticmethod
    def tir_json(stage: str) -> str:
        """Path of the `microexport-tir` JSON of one TIR stage (`src/tir-<stage>.json`)."""
        return f"src/tir-{stage}.json"

    @staticmethod
    def source(filename: str) -> str:
        """Path of a C source file in the archive."""
        return f"{ArchiveLayout.SRC_DIR}/{filename}"

    @staticmethod
    def header(filename: str) -> str:
        """Path of a C header in the archive."""
        return f"{ArchiveLayout.INCLUDE_DIR}/{filename}"

    @staticmethod
    def parameters(model_name: str) -> str:
        """Path of the model's weights (`parameters/<name>.npz`)."""
        return f"{ArchiveLayout.PARAMETERS_DIR}/{model_name}.npz"


# ---------------------------------------------------------------------------------------------
# metadata.json and the archive's files


def metadata(model: CompiledModel) -> dict[str, Any]:
    """The contents of metadata.json: the record's fields and the Model Library Format version 7
    fields derived from them (`mlf_v7.mlf_v7_fields`), which add only `version` and `modules`."""
    fields = model.to_metadata()
    fields.update(mlf_v7_fields(
        model_name=model.name,
        target=model.target,
        workspace_bytes=model.memory.workspace_bytes,
        constants_bytes=model.memory.constants_bytes,
        io_bytes=model.memory.io_bytes,
        kernel_workspace_bytes={k.symbol: k.workspace_bytes for k in model.kernels},
        inputs=fields["inputs"],
        outputs=fields["outputs"],
    ))
    return fields


def metadata_json(model: CompiledModel) -> bytes:
    """metadata.json bytes: two-space indent, sorted keys, trailing newline."""
    return (json.dumps(metadata(model), indent=2, sort_keys=True) + "\n").encode()


def archive_files(
    model: CompiledModel,
    *,
    lib: tuple[str, str],
    glue: Mapping[str, str],
    parameters: Mapping[str, np.ndarray],
    relax_text: str,
    tir_text: str,
) -> dict[str, bytes]:
    """Every file of the archive but the TIR JSON: metadata.json from the record, the kernel
    library `lib` (file name, C source), the glue (file name → C text; headers go to the include
    directory), the weights and the TVMScript of the Relax model and of the final TIR."""
    layout = ArchiveLayout
    filename, source = lib
    files: dict[str, bytes] = {
        layout.METADATA: metadata_json(model),
        layout.source(filename): source.encode(),
        layout.parameters(model.name): parameters_npz(parameters),
        layout.RELAX_TEXT: relax_text.encode(),
        layout.TIR_TEXT: tir_text.encode(),
    }
    for name, text in glue.items():
        files[layout.header(name) if name.endswith(".h") else layout.source(name)] = text.encode()
    return files


def read_model(path: Path) -> CompiledModel:
    """The compiled-model record of an archive file or of an extracted archive directory."""
    path = Path(path)
    if path.is_dir():
        try:
            data = (path / ArchiveLayout.METADATA).read_bytes()
        except OSError as err:
            raise Error(f"{path}: not a microexport archive ({err.strerror})") from None
    else:
        files = read_archive(path)
        if ArchiveLayout.METADATA not in files:
            raise Error(f"{path}: not a microexport archive (no {ArchiveLayout.METADATA})")
        data = files[ArchiveLayout.METADATA]
    return CompiledModel.from_json(data, str(path))


# ---------------------------------------------------------------------------------------------
# parameters/<name>.npz


def parameters_npz(params: Mapping[str, np.ndarray]) -> bytes:
    """Weights as a .npz (readable with `np.load`), byte-identical for identical arrays.

    `np.savez` stamps zip entries with the current time; this writes each `<name>.npy` member
    with a fixed date and mode, in sorted name order, uncompressed like `np.savez`.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(params):
            array = np.asarray(params[name])
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # unix, whatever the host
            info.external_attr = FILE_MODE << 16
            force_zip64 = array.nbytes >= 2**31
            with archive.open(info, "w", force_zip64=force_zip64) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def read_parameters(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a parameters .npz, by name."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


# ---------------------------------------------------------------------------------------------
# tar archives


def check_member_name(name: str) -> str:
    """`name` normalised to a safe relative POSIX path; ValueError if it escapes the root."""
    cleaned = name[2:] if name.startswith("./") else name
    parts = cleaned.split("/")
    if (
        not cleaned
        or cleaned.startswith("/")
        or "\\" in cleaned
        or "\0" in cleaned
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ValueError(f"unsafe archive member name {name!r}")
    return cleaned


def parent_directories(names: list[str]) -> list[str]:
    """Every directory that contains one of `names`, sorted."""
    dirs = set()
    for name in names:
        parent = posixpath.dirname(name)
        while parent:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    return sorted(dirs)


def _tar_info(name: str, size: int, is_dir: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = DIR_MODE if is_dir else FILE_MODE
    info.size = 0 if is_dir else size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_bytes(files: Mapping[str, bytes]) -> bytes:
    """A deterministic uncompressed tar of `files` (archive path → bytes), with directories.

    Members are named `./<path>` under a `.` directory entry, as TVM's MLF export wrote them
    (`tar.add(dir, arcname=".")`): TVM's readers look for `./metadata.json` by name."""
    names = sorted(check_member_name(name) for name in files)
    if len(set(names)) != len(names):
        raise ValueError("duplicate archive member names after normalisation")
    contents = {check_member_name(name): data for name, data in files.items()}
    dirs = parent_directories(names)
    clash = set(dirs) & set(names)
    if clash:
        raise ValueError(f"archive member {sorted(clash)[0]!r} is both a file and a directory")
    entries = [(d, True) for d in dirs] + [(n, False) for n in names]
    entries.sort(key=lambda entry: entry[0])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_info(".", 0, True))
        for name, is_dir in entries:
            if is_dir:
                tar.addfile(_tar_info(f"./{name}", 0, True))
            else:
                data = bytes(contents[name])
                tar.addfile(_tar_info(f"./{name}", len(data), False), io.BytesIO(data))
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """gzip `data` with no file name and a zero timestamp in the header."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buffer.getvalue()


def refuse_overwriting(output: Path, source: Path, flag: str = "-o") -> None:
    """Error if writing `output` would replace the input file `source` (the same file, whatever
    the path spelling), before any work is done."""
    output, source = Path(output), Path(source)
    try:
        same = output.exists() and source.exists() and output.samefile(source)
    except OSError:
        same = False
    if same:
        raise Error(f"{flag} {output} is the input file itself: write the output elsewhere")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and `os.replace`.

    Creates missing parent directories. Any OSError becomes a one-line Error; on failure the
    temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise Error(f"cannot write {path}: {err.strerror or err}") from None


def write_archive(path: Path, files: Mapping[str, bytes]) -> None:
    """Write `files` (archive path → content) as a deterministic `.tar` (or `.tar.gz`/`.tgz`)."""
    data = tar_bytes(files)
    if str(path).endswith(GZIP_SUFFIXES):
        data = gzip_bytes(data)
    atomic_write(Path(path), data)


def _members(tar: tarfile.TarFile, origin: str) -> Iterator[tuple[str, bytes]]:
    for member in tar:
        if member.isdir() and member.name in (".", "./"):  # the root entry TVM's MLF had
            continue
        try:
            name = check_member_name(member.name)
        except ValueError as err:
            raise Error(f"{origin}: {err}") from None
        if member.isdir():
            continue
        if not member.isreg():
            raise Error(f"{origin}: member '{name}' is not a regular file or directory")
        handle = tar.extractfile(member)
        assert handle is not None
        yield name, handle.read()


def read_archive(path: Path) -> dict[str, bytes]:
    """Every regular file in a tar (optionally gzip-compressed) archive: member path → bytes.

    Unsafe member names (absolute, `..`), links and device files raise Error, as does a missing
    or corrupt archive.
    """
    origin = str(path)
    try:
        with tarfile.open(path, mode="r:*") as tar:
            files: dict[str, bytes] = {}
            for name, data in _members(tar, origin):
                if name in files:
                    raise Error(f"{origin}: member '{name}' appears twice")
                files[name] = data
            return files
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise Error(f"{origin}: corrupt or unsupported archive ({err})") from None
    except OSError as err:
        raise Error(f"cannot read archive {origin}: {err.strerror or err}") from None


def extract_archive(path: Path, dest: Path) -> Path:
    """Extract an archive's regular files under `dest` (created if needed); returns `dest`."""
    files = read_archive(path)
    dest = Path(dest)
    root = dest.resolve()
    try:
        for name, data in sorted(files.items()):
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                raise Error(f"{path}: member '{name}' escapes the destination directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    except OSError as err:
        raise Error(f"cannot extract {path} into {dest}: {err.strerror or err}") from None
    return dest
