"""What every platform (host process, QEMU, Zephyr, a serial-attached board) provides.

A platform takes an extracted Model Library Format archive (a `Project`), builds it for a board
(`build`) and runs it on inputs (`run`). The public methods validate and convert; subclasses only
implement the small `do_build` / `do_run` hooks on raw bytes.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..boards import Board
from ..errors import Error, InputError
from ..package import ArchiveLayout, extract_archive, read_metadata


@dataclass(frozen=True)
class Capabilities:
    """What a platform can do, so callers can pick one or skip a test."""

    runs_models: bool  # `run` executes the model and returns its outputs
    needs_hardware: bool = False  # a physical board must be attached
    emulated: bool = False  # runs under an emulator (QEMU)
    measures_cycles: bool = False  # reports cycle counts


@dataclass(frozen=True)
class Project:
    """An extracted MLF archive (`root`) and the directory to build it in."""

    root: Path
    build_dir: Path
    metadata: dict[str, Any]

    @classmethod
    def from_directory(cls, root: Path, build_dir: Path) -> Project:
        """Open an extracted archive directory; Error if it has no usable metadata.json."""
        return cls(Path(root), Path(build_dir), read_metadata(Path(root)))

    @property
    def name(self) -> str:
        """The model name (the `<name>` of `tvmgen_<name>_run`)."""
        return str(self.metadata["model_name"])

    @property
    def include_dir(self) -> Path:
        """Directory of the generated headers."""
        return self.root / ArchiveLayout.INCLUDE_DIR

    @property
    def sources(self) -> list[Path]:
        """The generated C sources, sorted; Error if there are none."""
        sources = sorted((self.root / ArchiveLayout.SRC_DIR).glob("*.c"))
        if not sources:
            raise Error(f"{self.root}: no C sources in {ArchiveLayout.SRC_DIR}")
        return sources


@dataclass(frozen=True)
class Build:
    """A built project: the program or firmware image that runs the model."""

    project: Project
    artifact: Path


def encode_inputs(
    metadata: Mapping[str, Any], inputs: Mapping[str, np.ndarray]
) -> dict[str, bytes]:
    """Check `inputs` against the archive's inputs; raw little-endian bytes by input name.

    Raises `InputError` naming the input for a missing or unknown name or a wrong shape or dtype.
    """
    specs = metadata["inputs"]
    names = [spec["name"] for spec in specs]
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise InputError(
            f"unknown input '{unknown[0]}': the model's inputs are {', '.join(names) or 'none'}"
        )
    encoded = {}
    for spec in specs:
        name = spec["name"]
        if name not in inputs:
            raise InputError(f"missing input '{name}': expected shape "
                             f"{tuple(spec['shape'])} {spec['dtype']}")
        encoded[name] = encode_array(spec, np.asarray(inputs[name]))
    return encoded


def encode_array(spec: Mapping[str, Any], array: np.ndarray) -> bytes:
    """One input as raw little-endian bytes after checking its shape and dtype."""
    want_shape = tuple(int(d) for d in spec["shape"])
    want_dtype = np.dtype(spec["dtype"])
    if array.shape != want_shape or array.dtype.name != want_dtype.name:
        raise InputError(
            f"input '{spec['name']}': expected shape {want_shape} {want_dtype.name}, "
            f"got shape {array.shape} {array.dtype.name}"
        )
    return np.ascontiguousarray(array, dtype=want_dtype.newbyteorder("<")).tobytes()


def decode_outputs(
    metadata: Mapping[str, Any], raw: Mapping[str, bytes]
) -> dict[str, np.ndarray]:
    """Raw little-endian output bytes by output name → arrays of the archive's shapes and dtypes."""
    outputs = {}
    for spec in metadata["outputs"]:
        name = spec["name"]
        data = raw[name]
        dtype = np.dtype(spec["dtype"])
        if len(data) != spec["size_bytes"]:
            raise Error(f"output '{name}': got {len(data)} bytes, expected {spec['size_bytes']}")
        array = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(spec["shape"])
        outputs[name] = array.astype(dtype)
    return outputs


class Platform(ABC):
    """Builds and runs compiled models for one board. Subclasses implement `do_build`/`do_run`."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, board: Board, *, templates: Path | None = None) -> None:
        """`templates` overrides packaged templates (e.g. the harness) by file name."""
        if self.name not in board.platforms:
            raise Error(
                f"board '{board.name}' does not support platform '{self.name}': "
                f"it supports {', '.join(board.platforms)}"
            )
        self.board = board
        self.templates = Path(templates) if templates is not None else None

    def prepare(self, archive: Path, work_dir: Path) -> Project:
        """Extract `archive` into `work_dir/archive` (replacing what a previous run left there),
        to be built in `work_dir/build`."""
        root = Path(work_dir) / "archive"
        try:
            if root.exists():
                shutil.rmtree(root)
        except OSError as err:
            raise Error(f"cannot clean {root}: {err.strerror or err}") from None
        extract_archive(Path(archive), root)
        return Project.from_directory(root, Path(work_dir) / "build")

    def build(self, project: Project) -> Build:
        """Build `project` into its build directory."""
        try:
            project.build_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise Error(f"cannot create build directory {project.build_dir}: "
                        f"{err.strerror or err}") from None
        return self.do_build(project)

    def run(self, build: Build, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a built model once on `inputs` (name → array); outputs by name."""
        if not self.capabilities.runs_models:
            raise Error(f"platform '{self.name}' builds models but cannot run them")
        metadata = build.project.metadata
        raw = self.do_run(build, encode_inputs(metadata, inputs))
        return decode_outputs(metadata, raw)

    def run_archive(
        self, archive: Path, inputs: Mapping[str, np.ndarray], work_dir: Path
    ) -> dict[str, np.ndarray]:
        """Extract, build and run an archive in `work_dir`; inputs are checked before building."""
        encode_inputs(read_metadata(Path(archive)), inputs)
        return self.run(self.build(self.prepare(archive, work_dir)), inputs)

    @abstractmethod
    def do_build(self, project: Project) -> Build:
        """Compile the project; the build directory exists."""

    @abstractmethod
    def do_run(self, build: Build, inputs: dict[str, bytes]) -> dict[str, bytes]:
        """Run once on checked raw inputs (by input name); raw outputs by output name."""
