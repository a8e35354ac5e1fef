"""The host platform: compile the archive with the native C compiler and run it as a process.

The test program comes from `templates/harness/host_main.c.j2`: it reads each input from a raw
little-endian file, calls `tvmgen_<name>_run` and writes each output to a raw file.
"""

from __future__ import annotations

from pathlib import Path

from microexport.archive.glue import HARNESS_FILENAME, render_harness
from microexport.deploy.platforms.base import (
    Build,
    Capabilities,
    Invocation,
    Platform,
    Project,
    RawRun,
    RunOptions,
)
from microexport.deploy.subproc import CommandResult, exit_description, last_line
from microexport.errors import Error

COMPILE_TIMEOUT = 600.0
COMPILE_LOG = "compile.log"


def first_error(output: str) -> str:
    """The first compiler or linker error line of `output` (else its last line)."""
    for marker in ("undefined reference", "error:", "error"):
        for line in output.splitlines():
            if marker in line:
                return line.strip()
    return last_line(output)


class HostPlatform(Platform):
    """Builds a native test program with the board's compiler (`cc`) and runs it."""

    name = "host"
    capabilities = Capabilities(runs_models=True)

    def program_path(self, project: Project) -> Path:
        """Where the test program is built."""
        return project.build_dir / f"{project.name}_host"

    def compile_command(self, project: Project, harness: Path) -> list[str]:
        """The compiler command line building the test program."""
        return [
            self.board.compiler,
            *self.board.cflags,
            f"-I{project.include_dir}",
            "-o",
            str(self.program_path(project)),
            *(str(s) for s in project.sources),
            str(harness),
            *self.board.ldflags,
        ]

    def do_expected_build(self, project: Project) -> Build:
        return Build(project, self.program_path(project))

    def do_build_plan(self, project: Project) -> list[Invocation]:
        harness = project.build_dir / HARNESS_FILENAME
        return [Invocation(
            tuple(self.compile_command(project, harness)),
            cwd=project.build_dir,
            env=(("LC_ALL", "C"),),  # plain ASCII diagnostics
            timeout=COMPILE_TIMEOUT,
            what=f"compiling '{project.name}' for host",
            package=self.board.compiler_package,
        )]

    def do_build(self, project: Project) -> Build:
        harness = project.build_dir / HARNESS_FILENAME
        harness.write_text(render_harness(project.model, self.templates), encoding="utf-8")
        (compile_step,) = self.do_build_plan(project)
        result = compile_step.execute()
        log = project.build_dir / COMPILE_LOG
        log.write_text(result.stdout + result.stderr, encoding="utf-8")
        if result.returncode != 0:
            raise Error(
                f"compiling '{project.name}' for host failed "
                f"({exit_description(result.returncode)}): "
                f"{first_error(result.stderr or result.stdout)} (full log: {log})"
            )
        return self.do_expected_build(project)

    def io_paths(self, build: Build) -> tuple[dict[str, Path], dict[str, Path]]:
        """The raw input and output files of one run, by tensor name."""
        io_dir = build.project.build_dir / "io"
        model = build.project.model
        inputs = {t.name: io_dir / f"input_{t.c_name}.bin" for t in model.inputs}
        outputs = {t.name: io_dir / f"output_{t.c_name}.bin" for t in model.outputs}
        return inputs, outputs

    def do_run_plan(self, build: Build, options: RunOptions) -> list[Invocation]:
        input_paths, output_paths = self.io_paths(build)
        files = [*input_paths.values(), *output_paths.values()]
        return [Invocation(
            tuple(str(a) for a in (build.artifact, *files)),
            cwd=build.project.build_dir,
            timeout=self.run_timeout(options),
            what=f"running '{build.project.name}' on host",
        )]

    def do_run(self, build: Build, inputs: dict[str, bytes], options: RunOptions) -> RawRun:
        input_paths, output_paths = self.io_paths(build)
        io_dir = build.project.build_dir / "io"
        io_dir.mkdir(exist_ok=True)
        for name, path in input_paths.items():
            path.write_bytes(inputs[name])
        for path in output_paths.values():
            path.unlink(missing_ok=True)
        (step,) = self.do_run_plan(build, options)
        result = step.execute()
        check_run(result, build.project.name)
        return RawRun({name: path.read_bytes() for name, path in output_paths.items()})


def check_run(result: CommandResult, model: str) -> None:
    """Error with the harness's one-line message if the run failed."""
    if result.returncode != 0:
        message = last_line(result.stderr) or last_line(result.stdout) or "no message"
        raise Error(
            f"running '{model}' on host failed ({exit_description(result.returncode)}): {message}"
        )
