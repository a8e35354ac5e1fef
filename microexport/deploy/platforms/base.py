"""What every platform (host process, bare metal in QEMU, Zephyr) provides.

A platform takes a Model Library Format archive, lays it out as a project for a board (`create`),
builds it (`build`), writes it to the board (`flash`) and runs it on inputs (`run` / `execute`).
As in west's runners, the public methods check, convert and refuse what the platform cannot do
(from its `Capabilities`); subclasses implement only the small `do_*` hooks, on raw bytes.

Every external command a platform runs is first planned as an `Invocation` (`build_plan`,
`flash_plan`, `run_plan`), so the exact command lines can be shown (`--dry-run`) and tested
without the tools or the hardware, then executed through `microexport.deploy.subproc.run_command`.
"""

from __future__ import annotations

import os
import shlex
import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from microexport.archive.mlf import ArchiveLayout, extract_archive, read_model
from microexport.deploy.boards import Board
from microexport.deploy.size import check_fits, size_report
from microexport.deploy.subproc import CommandResult, run_command
from microexport.deploy.tensors import decode_outputs, encode_inputs
from microexport.errors import DoesNotFit, Error, Unsupported
from microexport.model import CompiledModel

MODEL_DIR = "model"  # the extracted archive inside a project or work directory
BUILD_DIR = "build"
SIZE_FILE = "size.json"


@dataclass(frozen=True)
class Capabilities:
    """What a platform can do; the CLI refuses commands and options a platform lacks."""

    runs_models: bool  # `run` executes the model and returns its outputs
    can_flash: bool = False  # `flash` writes the firmware to a board
    emulated: bool = False  # runs under an emulator (QEMU)
    has_serial: bool = False  # talks to the board over a serial port (`--port`)
    measures_instructions: bool = False  # `run` reports instructions (or cycles) per inference
    needs_hardware: bool = False  # a physical board must be attached
    reports_size: bool = False  # the build is an ELF for the board: `size` works

    def supported(self) -> list[str]:
        """Names of the capabilities that are set."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


@dataclass(frozen=True)
class Project:
    """A model laid out for a platform: the extracted archive (`root`), where to build it
    (`build_dir`) and the project directory holding both (`directory`)."""

    root: Path
    build_dir: Path
    model: CompiledModel
    directory: Path | None = None  # None: the parent of `root`

    @classmethod
    def from_directory(cls, root: Path, build_dir: Path, directory: Path | None = None) -> Project:
        """Open an extracted archive directory; Error if it has no usable metadata.json."""
        return cls(Path(root), Path(build_dir), read_model(Path(root)), directory)

    @property
    def home(self) -> Path:
        """The project directory (platform sources, `size.json`)."""
        return self.directory if self.directory is not None else self.root.parent

    @property
    def name(self) -> str:
        """The model name (the `<name>` of `tvmgen_<name>_run`)."""
        return self.model.name

    @property
    def include_dir(self) -> Path:
        """Directory of the generated headers."""
        return self.root / ArchiveLayout.INCLUDE_DIR

    @property
    def sources(self) -> list[Path]:
        """The archive's C sources the record names (kernel library, run wrapper); Error if one
        is missing. Never a directory listing: only these names reach build files."""
        sources = [self.root / ArchiveLayout.source(name) for name in self.model.sources]
        for source in sources:
            if not source.is_file():
                raise Error(f"{self.root}: {ArchiveLayout.source(source.name)} is missing: "
                            f"extract the archive again")
        return sources


@dataclass(frozen=True)
class Build:
    """A built project: the program or firmware image that runs the model (`elf`: the image to
    measure with `size`, when the platform builds one for the board)."""

    project: Project
    artifact: Path
    elf: Path | None = None


@dataclass(frozen=True)
class Invocation:
    """One external command a platform will run: argv, directory, added environment variables."""

    argv: tuple[str, ...]
    cwd: Path
    env: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None
    what: str | None = None  # how errors name the command
    package: str | None = None  # Debian package of argv[0], for "not found" errors

    @property
    def command_line(self) -> str:
        """The command as a shell would run it, with its environment additions."""
        assignments = [f"{key}={shlex.quote(value)}" for key, value in self.env]
        return " ".join([*assignments, shlex.join(self.argv)])

    def execute(self) -> CommandResult:
        """Run it through `subproc.run_command` (the caller's environment plus `env`)."""
        env = {**os.environ, **dict(self.env)} if self.env else None
        return run_command(self.argv, cwd=self.cwd, timeout=self.timeout, what=self.what,
                           package=self.package, env=env)


@dataclass(frozen=True)
class RunOptions:
    """How to run once: a timeout replacing the board's `run_timeout`, a serial port."""

    timeout: float | None = None
    port: str | None = None


@dataclass(frozen=True)
class RunStats:
    """What a run measured besides the outputs."""

    instructions: int | None = None  # per inference, emulated (QEMU -icount), deterministic
    cycles: int | None = None  # per inference, on hardware
    details: Mapping[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for humans ("" when nothing was measured)."""
        parts = []
        if self.instructions is not None:
            parts.append(f"{self.instructions} instructions per inference")
        if self.cycles is not None:
            parts.append(f"{self.cycles} cycles per inference")
        return ", ".join(parts)


@dataclass(frozen=True)
class RawRun:
    """What `do_run` returns: raw little-endian outputs by output name, and measurements."""

    outputs: dict[str, bytes]
    stats: RunStats = RunStats()


@dataclass(frozen=True)
class RunResult:
    """Outputs (name → array) and measurements of one run."""

    outputs: dict[str, np.ndarray]
    stats: RunStats


@dataclass(frozen=True)
class MemoryNeeds:
    """Bytes of flash and RAM a model needs on a board (an estimate before linking)."""

    flash: int
    ram: int


def make_directory(path: Path, what: str) -> None:
    """`mkdir -p`, as a one-line Error naming `what` on failure."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Error(f"cannot create {what} {path}: {err.strerror or err}") from None


class Platform(ABC):
    """Builds and runs compiled models for one board. Subclasses implement the `do_*` hooks."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]  # the most the platform can do, on any board

    def __init__(self, board: Board, *, templates: Path | None = None) -> None:
        """`templates` overrides packaged templates (harness, startup code, …) by file name."""
        if self.name not in board.platforms:
            raise Error(
                f"board '{board.name}' does not support platform '{self.name}': "
                f"it supports {', '.join(board.platforms)}"
            )
        self.board = board
        self.templates = Path(templates) if templates is not None else None

    # --- capabilities ---------------------------------------------------------------------

    @property
    def caps(self) -> Capabilities:
        """What this platform can do on this board (see `board_capabilities`)."""
        return self.board_capabilities(self.board)

    @classmethod
    def board_capabilities(cls, board: Board) -> Capabilities:
        """What the platform can do on `board`; platforms whose abilities depend on the board
        (Zephyr on QEMU vs on hardware) narrow `capabilities` here."""
        del board
        return cls.capabilities

    def require(self, capability: str, what: str) -> None:
        """Unsupported ("<platform> doesn't support <what>") unless the capability is set."""
        if not getattr(self.caps, capability):
            can = ", ".join(self.caps.supported()) or "nothing"
            raise Unsupported(f"{self.name} doesn't support {what} on board '{self.board.name}' "
                              f"(it can: {can})")

    # --- create ---------------------------------------------------------------------------

    def create(self, archive: Path, directory: Path) -> Project:
        """Lay `archive` out in `directory` for this board: the model in `directory/model`
        (replacing a previous one) and the platform's sources (`do_create`); built in
        `directory/build`. Refuses a model that cannot fit the board (`check_fit`)."""
        self.check_fit(read_model(Path(archive)))
        directory = Path(directory).absolute()  # commands run in the build directory
        root = directory / MODEL_DIR
        try:
            if root.exists():
                shutil.rmtree(root)
        except OSError as err:
            raise Error(f"cannot clean {root}: {err.strerror or err}") from None
        extract_archive(Path(archive), root)
        project = Project.from_directory(root, directory / BUILD_DIR, directory)
        self.do_create(project)
        return project

    def prepare(self, archive: Path, work_dir: Path) -> Project:
        """`create` in a work directory (the quick path of `run_archive`)."""
        return self.create(archive, work_dir)

    # --- build ----------------------------------------------------------------------------

    def build_plan(self, project: Project) -> list[Invocation]:
        """The commands `build` runs, in order."""
        return self.do_build_plan(project)

    def expected_build(self, project: Project) -> Build:
        """What `build` produces for `project` (the files may not exist yet)."""
        return self.do_expected_build(project)

    def build(self, project: Project) -> Build:
        """Build `project` into its build directory; refuses a model that cannot fit first.

        A platform that builds an ELF for the board writes its size report to
        `<project>/size.json` and refuses an image that does not fit (`size.check_fits`)."""
        self.check_fit(project.model)
        make_directory(project.build_dir, "build directory")
        build = self.do_build(project)
        if build.elf is not None:
            report = size_report(build.elf, self.board, project.model)
            report.write(project.home / SIZE_FILE)
            check_fits(report, self.board)
        return build

    # --- flash ----------------------------------------------------------------------------

    def flash_plan(self, build: Build) -> list[Invocation]:
        """The commands `flash` runs."""
        self.require("can_flash", "flash")
        return self.do_flash_plan(build)

    def flash(self, build: Build) -> None:
        """Write the built firmware to the board."""
        self.require("can_flash", "flash")
        self.do_flash(build)

    # --- run ------------------------------------------------------------------------------

    def run_plan(self, build: Build, options: RunOptions = RunOptions()) -> list[Invocation]:
        """The commands one `run` starts (empty when it only talks to an attached board)."""
        self.check_options(options)
        return self.do_run_plan(build, options)

    def check_options(self, options: RunOptions) -> None:
        """Unsupported for an option the platform cannot honour on this board."""
        if not self.caps.runs_models:
            raise Unsupported(f"{self.name} doesn't support run on board '{self.board.name}'")
        if options.port is not None:
            self.require("has_serial", "--port")
        if options.timeout is not None and options.timeout <= 0:
            raise Error(f"--timeout must be a positive number of seconds, got {options.timeout:g}")

    def run(self, build: Build, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a built model once on `inputs` (name → array); outputs by name."""
        return self.execute(build, inputs).outputs

    def execute(
        self, build: Build, inputs: Mapping[str, np.ndarray], options: RunOptions = RunOptions()
    ) -> RunResult:
        """Run a built model once; its outputs and what the platform measured."""
        self.check_options(options)
        model = build.project.model
        raw = self.do_run(build, encode_inputs(model, inputs), options)
        return RunResult(decode_outputs(model, raw.outputs), raw.stats)

    def runs_without_build(self) -> bool:
        """True when `run` talks to an already flashed board rather than to a fresh build."""
        return False

    def run_timeout(self, options: RunOptions) -> float:
        """Seconds one run may take: `--timeout`, else the board's `run_timeout`."""
        return options.timeout if options.timeout is not None else self.board.run_timeout

    def run_archive(
        self, archive: Path, inputs: Mapping[str, np.ndarray], work_dir: Path
    ) -> dict[str, np.ndarray]:
        """Extract, build and run an archive in `work_dir`; inputs are checked before building."""
        return self.execute_archive(archive, inputs, work_dir).outputs

    def execute_archive(
        self,
        archive: Path,
        inputs: Mapping[str, np.ndarray],
        work_dir: Path,
        options: RunOptions = RunOptions(),
    ) -> RunResult:
        """`run_archive` with measurements and run options."""
        self.check_options(options)
        encode_inputs(read_model(Path(archive)), inputs)
        return self.execute(self.build(self.prepare(archive, work_dir)), inputs, options)

    # --- memory ---------------------------------------------------------------------------

    def estimate_memory(self, model: CompiledModel) -> MemoryNeeds:
        """Flash and RAM the model needs on this board, before linking (see `do_overhead`)."""
        memory = model.memory
        overhead = self.do_overhead(model)
        flash = memory.constants_bytes + overhead.flash
        ram = memory.workspace_bytes + memory.io_bytes + overhead.ram
        return MemoryNeeds(flash=flash, ram=ram)

    def check_fit(self, model: CompiledModel) -> None:
        """DoesNotFit if the estimate exceeds the board's flash or RAM (unbounded: no check)."""
        needs = self.estimate_memory(model)
        memory = model.memory
        for region, needed, detail in (
            ("flash", needs.flash, f"{memory.constants_bytes} B of weights"),
            ("RAM", needs.ram, f"{memory.workspace_bytes} B of workspace and "
                               f"{memory.io_bytes} B of inputs and outputs"),
        ):
            available = getattr(self.board, region.lower())
            if available is not None and needed > available.size:
                raise DoesNotFit(
                    f"model '{model.name}' does not fit the {region} of board "
                    f"'{self.board.name}': needs about {needed} bytes ({detail} plus code, stack "
                    f"and runtime), the board has {available.size} bytes"
                )

    # --- hooks ----------------------------------------------------------------------------

    def do_create(self, project: Project) -> None:  # noqa: B027 - optional hook
        """Render the platform's sources into `project.home` (default: nothing)."""

    def do_overhead(self, model: CompiledModel) -> MemoryNeeds:
        """Flash and RAM needed besides weights, workspace and I/O (default: none)."""
        del model
        return MemoryNeeds(0, 0)

    @abstractmethod
    def do_build_plan(self, project: Project) -> list[Invocation]:
        """The build commands."""

    @abstractmethod
    def do_expected_build(self, project: Project) -> Build:
        """The `Build` (artifact paths) of `project`, without building."""

    @abstractmethod
    def do_build(self, project: Project) -> Build:
        """Compile the project; the build directory exists."""

    def do_flash_plan(self, build: Build) -> list[Invocation]:
        """The flash commands (only called when `can_flash`)."""
        raise Unsupported(f"{self.name} doesn't support flash")

    def do_flash(self, build: Build) -> None:
        """Flash the board (only called when `can_flash`)."""
        raise Unsupported(f"{self.name} doesn't support flash")

    def do_run_plan(self, build: Build, options: RunOptions) -> list[Invocation]:
        """The commands one run starts (default: none)."""
        del build, options
        return []

    @abstractmethod
    def do_run(self, build: Build, inputs: dict[str, bytes], options: RunOptions) -> RawRun:
        """Run once on checked raw inputs (by input name); raw outputs by output name."""
