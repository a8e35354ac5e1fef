"""A compiled model as a Zephyr module, for teams with their own Zephyr application
(`microexport project create ARCHIVE --board BOARD -o DIR --kind zephyr-module`).

`create_module` renders, from `templates/zephyr_module/`:

    zephyr/module.yml   the module's name (microexport_<name>), its CMake and Kconfig
    CMakeLists.txt      with CONFIG_MICROEXPORT_<NAME>: zephyr_library_named(microexport_<name>)
                        over the model's C, and its include directory for the application
    Kconfig             MICROEXPORT_<NAME> (default y), selecting REQUIRES_FULL_LIBC when the
                        model's C calls libm
    model/              the Model Library Format archive, extracted

An application adds it with `west build ... -- -DZEPHYR_EXTRA_MODULES=<DIR>` (or its west manifest)
and calls `tvmgen_<name>_run` through `tvmgen_<name>.h`.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from microexport.archive.glue import interface_variables
from microexport.archive.mlf import extract_archive, read_model
from microexport.deploy.platforms.base import MODEL_DIR, Project, make_directory
from microexport.deploy.platforms.zephyr import libm_calls
from microexport.errors import Error
from microexport.templating import glue_environment, render

KIND = "zephyr-module"
MODULE_TEMPLATES: dict[str, str] = {
    "zephyr_module/module.yml.j2": "zephyr/module.yml",
    "zephyr_module/CMakeLists.txt.j2": "CMakeLists.txt",
    "zephyr_module/Kconfig.j2": "Kconfig",
}


def module_variables(project: Project, board: Any, module_dir: Path) -> dict[str, Any]:
    """What the templates in templates/zephyr_module/ receive."""
    model = project.model
    return {
        **interface_variables(model),
        "board": board,
        "module_name": f"microexport_{model.name}",
        "module_dir": str(module_dir),
        "kconfig_symbol": f"MICROEXPORT_{model.upper_name}",
        "model_sources": [source.name for source in project.sources],
        "kernel_stack_bytes": model.max_kernel_stack_bytes,
        "libm_calls": libm_calls(project),
    }


def create_module(
    archive: str | Path,
    board: Any,
    output: str | Path,
    *,
    templates: Path | None = None,
    force: bool = False,
    check_fit: Any = None,
) -> Path:
    """Write `archive` as a Zephyr module in the new directory `output` (replaced with `force`);
    returns its absolute path. `check_fit(model)`, if given, refuses a model too large for the
    board first. Written next to `output` and renamed into place: an error leaves nothing."""
    output = Path(output).absolute()
    if output.exists() and not force and (not output.is_dir() or any(output.iterdir())):
        raise Error(f"{output} already exists and is not empty: choose another -o or pass --force")
    if not Path(archive).is_file():
        raise Error(f"archive {archive} does not exist")
    if check_fit is not None:
        check_fit(read_model(Path(archive)))
    make_directory(output.parent, "directory")
    staging = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        extract_archive(Path(archive), staging / MODEL_DIR)
        project = Project.from_directory(staging / MODEL_DIR, staging / "build", staging)
        env = glue_environment(templates)
        variables = module_variables(project, board, output)
        make_directory(staging / "zephyr", "module directory")
        for template, relative in MODULE_TEMPLATES.items():
            (staging / relative).write_text(render(env, template, variables), encoding="utf-8")
        if output.exists():
            if output.is_dir():
                shutil.rmtree(output)
            else:
                output.unlink()
        staging.rename(output)
    except OSError as err:
        raise Error(f"cannot write Zephyr module {output}: {err.strerror or err}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return output
