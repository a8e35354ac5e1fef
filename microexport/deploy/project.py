"""Project directories: a compiled model laid out for one board and platform, to build, flash,
run and measure (`microexport project create / build / flash / run / size`).

    proj/
      microexport.json   which board, platform and model (and the microexport that made it)
      board.yaml         the board description used, so a project is self-contained
      model/             the Model Library Format archive, extracted
      src/ …             the platform's sources (bare metal: main.c, startup.c, linker.ld;
                         Zephyr: CMakeLists.txt, prj.conf, src/main.c, …)
      build/             created by `build`
      size.json          flash and RAM of the built image (platforms that build one)

`create_project` writes the directory next to its final place and renames it into place, so an
error never leaves a half-written project.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from microexport.archive.mlf import atomic_write
from microexport.deploy.boards import Board, dump_board, load_board, parse_board, read_board_file
from microexport.deploy.platforms import PLATFORMS, get_platform
from microexport.deploy.platforms.base import (
    BUILD_DIR,
    MODEL_DIR,
    SIZE_FILE,
    Build,
    Invocation,
    Platform,
    Project,
    RunOptions,
    RunResult,
)
from microexport.errors import Error
from microexport.model import CompiledModel
from microexport.version import __version__

PROJECT_FILE = "microexport.json"
BOARD_FILE = "board.yaml"
TEMPLATES_DIR = "templates"  # the project's copy of --templates
PROJECT_FORMAT = 1


@dataclass(frozen=True)
class ProjectInfo:
    """The contents of `microexport.json`."""

    board: str
    platform: str
    model: str
    microexport_version: str
    templates: str | None = None  # the project's copy of the --templates directory, if any

    def to_json(self) -> str:
        """The JSON text of `microexport.json`."""
        data = {"format": PROJECT_FORMAT, "board": self.board, "platform": self.platform,
                "model": self.model, "microexport_version": self.microexport_version,
                "templates": self.templates}
        return json.dumps(data, indent=2) + "\n"


@dataclass(frozen=True)
class OpenProject:
    """A project directory opened for work: its files, platform and description."""

    project: Project
    platform: Platform
    info: ProjectInfo

    @property
    def directory(self) -> Path:
        """The project directory."""
        return self.project.home


def is_project(path: str | Path) -> bool:
    """True if `path` is a project directory (has microexport.json)."""
    return (Path(path) / PROJECT_FILE).is_file()


def resolve_board(board: str | Board) -> Board:
    """A `Board` from a board name, a board YAML path or a `Board`."""
    return board if isinstance(board, Board) else load_board(board)


def create_project(
    archive: str | Path,
    board: str | Board,
    output: str | Path,
    *,
    platform: str | None = None,
    templates: str | Path | None = None,
    force: bool = False,
) -> OpenProject:
    """Lay out `archive` as a project for `board` in the new directory `output`.

    `platform` defaults to the board's first; `force` replaces an existing `output`. The model
    is checked against the board's flash and RAM first (`errors.Error` subclass `DoesNotFit`).
    """
    board_info = resolve_board(board)
    template_dir = Path(templates).absolute() if templates is not None else None
    chosen = get_platform(board_info, platform, templates=template_dir)
    output = Path(output).absolute()
    if output.exists() and not force and (not output.is_dir() or any(output.iterdir())):
        raise Error(f"{output} already exists and is not empty: choose another -o or pass --force")
    if not Path(archive).is_file():
        raise Error(f"archive {archive} does not exist")
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Error(f"cannot create {parent}: {err.strerror or err}") from None
    staging = parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        project = chosen.create(Path(archive), staging)
        if template_dir is not None:
            # A copy, so the project builds the same wherever it moves and whatever happens to
            # the original directory.
            shutil.copytree(template_dir, staging / TEMPLATES_DIR)
        info = ProjectInfo(board=board_info.name, platform=chosen.name, model=project.name,
                           microexport_version=__version__,
                           templates=TEMPLATES_DIR if template_dir else None)
        (staging / PROJECT_FILE).write_text(info.to_json(), encoding="utf-8")
        (staging / BOARD_FILE).write_text(dump_board(board_info), encoding="utf-8")
        _move_into_place(staging, output)
    except OSError as err:
        raise Error(f"cannot write project {output}: {err.strerror or err}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return open_project(output)


PROJECT_KINDS = ("app", "zephyr-module")  # `project create --kind`


def create_zephyr_module(
    archive: str | Path,
    board: str | Board,
    output: str | Path,
    *,
    templates: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write `archive` as a Zephyr module in the new directory `output` (`--kind zephyr-module`:
    zephyr/module.yml, CMakeLists.txt with zephyr_library, Kconfig, the extracted model) for an
    existing Zephyr application to add with ZEPHYR_EXTRA_MODULES; returns its path. The model
    is checked against `board`'s flash and RAM first, as for a project."""
    from microexport.deploy.platforms.zephyr_module import create_module

    board_info = resolve_board(board)
    if "zephyr" not in board_info.platforms:
        raise Error(f"board '{board_info.name}' has no Zephyr platform (its platforms: "
                    f"{', '.join(board_info.platforms)}): choose a Zephyr board for "
                    f"--kind zephyr-module (see microexport boards)")
    template_dir = Path(templates).absolute() if templates is not None else None
    zephyr = get_platform(board_info, "zephyr", templates=template_dir)
    return create_module(archive, board_info, output, templates=template_dir, force=force,
                         check_fit=zephyr.check_fit)


def _move_into_place(staging: Path, output: Path) -> None:
    """Rename `staging` to `output`, replacing an existing `output` only once `staging` is
    complete."""
    if not output.exists():
        os.replace(staging, output)
        return
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
        os.replace(staging, output)
        return
    trash = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(output, trash)
    os.replace(staging, output)
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink()


def read_info(directory: Path) -> ProjectInfo:
    """The `microexport.json` of a project directory; Error if missing or malformed."""
    path = Path(directory) / PROJECT_FILE
    if not path.is_file():
        what = "does not exist" if not Path(directory).exists() else "is not a project"
        raise Error(f"{directory} {what}: create one with 'microexport project create "
                    f"ARCHIVE --board BOARD -o {directory}'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != PROJECT_FORMAT:
            raise Error(f"{path}: project format {data.get('format')!r} is not supported "
                        f"(this microexport reads {PROJECT_FORMAT}): create the project again")
        return ProjectInfo(board=str(data["board"]), platform=str(data["platform"]),
                           model=str(data["model"]),
                           microexport_version=str(data["microexport_version"]),
                           templates=data.get("templates"))
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise Error(f"{path} is not a valid project file ({err}): create the project again") \
            from None


def open_project(directory: str | Path) -> OpenProject:
    """Open a project directory made by `create_project`."""
    directory = Path(directory).absolute()
    info = read_info(directory)
    board_path = directory / BOARD_FILE
    board = parse_board(read_board_file(board_path), str(board_path))
    if info.platform not in PLATFORMS:
        raise Error(f"{directory}: platform '{info.platform}' is not available: available are "
                    f"{', '.join(PLATFORMS)}")
    templates = directory / info.templates if info.templates else None
    platform = get_platform(board, info.platform, templates=templates)
    project = Project.from_directory(directory / MODEL_DIR, directory / BUILD_DIR, directory)
    return OpenProject(project, platform, info)


def _newest_source(project: Project) -> float:
    """The newest modification time of the files a build reads (model and platform sources)."""
    newest = 0.0
    for top in project.home.iterdir():
        if top.name in (BUILD_DIR, SIZE_FILE):
            continue
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            if path.is_file():
                newest = max(newest, path.stat().st_mtime)
    return newest


def build_project(opened: OpenProject) -> Build:
    """Build the project (its platform's `build`); writes size.json where the platform can."""
    return opened.platform.build(opened.project)


def current_build(opened: OpenProject) -> Build:
    """The project's build, building first if it is missing or older than its sources."""
    expected = opened.platform.expected_build(opened.project)
    artifact = expected.artifact
    if artifact.exists() and artifact.stat().st_mtime >= _newest_source(opened.project):
        return expected
    return build_project(opened)


def build_plan(opened: OpenProject) -> list[Invocation]:
    """The commands `build` would run."""
    return opened.platform.build_plan(opened.project)


def flash_project(opened: OpenProject) -> Build:
    """Build if needed and flash the board."""
    opened.platform.require("can_flash", "flash")
    build = current_build(opened)
    opened.platform.flash(build)
    return build


def run_project(
    opened: OpenProject, inputs: Mapping[str, np.ndarray], options: RunOptions | None = None
) -> RunResult:
    """Build if needed, run once on `inputs` (name → array); outputs and measurements."""
    options = options or RunOptions()
    opened.platform.check_options(options)
    from microexport.deploy.tensors import encode_inputs

    encode_inputs(opened.project.model, inputs)  # bad inputs fail before building
    platform = opened.platform
    build = (platform.expected_build(opened.project) if platform.runs_without_build()
             else current_build(opened))
    return platform.execute(build, inputs, options)


def size_of_project(opened: OpenProject) -> Any:
    """The size report of the built image (building first if needed); writes size.json."""
    from microexport.deploy.size import size_report

    opened.platform.require("reports_size", "size")
    build = current_build(opened)
    assert build.elf is not None
    report = size_report(build.elf, opened.platform.board, opened.project.model)
    report.write(opened.directory / SIZE_FILE)
    return report


def write_outputs(
    model: CompiledModel, outputs: Mapping[str, np.ndarray], output_dir: str | Path
) -> list[Path]:
    """Write one `<c_name>.npy` per model output into `output_dir` (each through a temporary file
    renamed into place); returns the paths in model order."""
    out_dir = Path(output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Error(f"cannot create output directory {out_dir}: {err.strerror or err}") from None
    paths = []
    for spec in model.outputs:
        path = out_dir / f"{spec.c_name}.npy"
        buffer = io.BytesIO()
        np.save(buffer, outputs[spec.name])
        atomic_write(path, buffer.getvalue())  # one-line error, nothing half-written
        paths.append(path)
    return paths
