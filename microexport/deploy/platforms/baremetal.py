"""The bare-metal platform: arm-none-eabi-gcc + newlib (semihosting), run in QEMU.

`create` renders four files into `<project>/src/` from `templates/baremetal/`: the test harness
(`main.c`), the startup code (`startup.c`: vector table, reset handler, fault handlers, SysTick
counter), its header (`microexport_board.h`) and the linker script (`linker.ld`, flash and RAM
from the board file, the stack and heap reserved as sections). `build` links them with the model
into `<project>/build/<name>.elf`; `run` starts

    qemu-system-arm -M <machine> -semihosting-config enable=on,target=native -icount shift=N ...

in the build directory. Inputs and outputs are raw files in `<build>/io/` that the harness opens
on the host through semihosting; the harness's exit status is QEMU's. Under `-icount` QEMU's
virtual clock advances 2**N ns per instruction, so the SysTick ticks the harness reads around the
run call give the exact, deterministic number of instructions executed (`ticks_to_instructions`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from microexport.archive.glue import interface_variables
from microexport.deploy.platforms.base import (
    Build,
    Capabilities,
    DoesNotFit,
    Invocation,
    MemoryNeeds,
    Platform,
    Project,
    RawRun,
    RunOptions,
    RunStats,
    make_directory,
)
from microexport.deploy.platforms.host import COMPILE_LOG, COMPILE_TIMEOUT, first_error
from microexport.deploy.subproc import exit_description, last_line
from microexport.errors import Error
from microexport.model import CompiledModel
from microexport.templating import glue_environment, render

SOURCE_DIR = "src"
IO_DIR = "io"
QEMU = "qemu-system-arm"
QEMU_PACKAGE = "qemu-system-arm"
DEFAULT_STACK_SIZE = 16 * 1024
STACK_MARGIN = 4 * 1024  # harness, newlib's stdio, AOT main: besides the kernels' C locals
DEFAULT_HEAP_SIZE = 16 * 1024  # newlib's stdio buffers (semihosting files)
# Flash and RAM besides weights, workspace, I/O, stack and heap: newlib (stdio, semihosting),
# the harness and the kernels' code. A margin for the estimate before linking; the linker has
# the last word.
FLASH_OVERHEAD = 64 * 1024
RAM_OVERHEAD = 4 * 1024

# Template → file name under <project>/src/.
SOURCES: dict[str, str] = {
    "baremetal/baremetal_main.c.j2": "main.c",
    "baremetal/startup.c.j2": "startup.c",
    "baremetal/microexport_board.h.j2": "microexport_board.h",
    "baremetal/linker.ld.j2": "linker.ld",
}
LINKER_SCRIPT = "linker.ld"
COMPILER_FLAGS = ("-ffunction-sections", "-fdata-sections")
LINKER_FLAGS = ("--specs=rdimon.specs", "-nostartfiles", "-Wl,--gc-sections")

_STATS = re.compile(r"microexport-stats: overhead_ticks=([0-9a-f]+) run_ticks=([0-9a-f]+)")
_OVERFLOW = re.compile(r"region `(\w+)' overflowed by (\d+) bytes")
_NOT_FIT = re.compile(r"section `([^']+)' will not fit in region `(\w+)'")


def icount_shift(clock_hz: int) -> int:
    """The smallest `-icount shift` giving at least two timer ticks per instruction, so that
    `ticks_to_instructions` is exact: 2**shift ns >= 2 * (10**9 / clock_hz) ns."""
    return max(0, math.ceil(math.log2(2 * 10**9 / clock_hz)))


def ticks_to_instructions(ticks: int, clock_hz: int, shift: int) -> int:
    """Instructions executed between two reads of a `clock_hz` timer under `-icount shift`.

    Each instruction advances virtual time by I = 2**shift ns, a tick lasts T = 10**9/clock_hz ns;
    `ticks` reads floor(a + n*I/T) - floor(a) for some phase a in [0, 1), so n*I/T lies in
    [ticks - 1, ticks + 1): an interval of width 2T/I <= 1 holding exactly one integer n.
    """
    return -((-(ticks - 1) * 10**9) // (clock_hz << shift)) if ticks > 0 else 0


class BaremetalPlatform(Platform):
    """Cortex-M boards without an OS: own startup code and linker script, run in QEMU."""

    name = "baremetal"
    capabilities = Capabilities(
        runs_models=True, emulated=True, measures_instructions=True, reports_size=True
    )

    # --- create ---------------------------------------------------------------------------

    def stack_size(self, model: CompiledModel | None = None) -> int:
        """Bytes of stack the linker script reserves: the board's stack_size, else the default,
        grown for kernels whose C locals (`KernelSpec.stack_bytes`) need more."""
        if self.board.stack_size:
            return self.board.stack_size
        need = STACK_MARGIN + (model.max_kernel_stack_bytes if model is not None else 0)
        return max(DEFAULT_STACK_SIZE, -(-need // 1024) * 1024)

    def heap_size(self) -> int:
        """Bytes of heap the linker script reserves (newlib's stdio)."""
        return self.board.heap_size or DEFAULT_HEAP_SIZE

    def template_variables(self, model: CompiledModel) -> dict[str, Any]:
        """What the templates in templates/baremetal/ receive (see docs/templates.md)."""
        if self.board.flash is None or self.board.ram is None:
            raise Error(f"board '{self.board.name}' has no flash or ram region: the baremetal "
                        f"platform needs both to write the linker script")
        return {
            **interface_variables(model),
            "board": self.board,
            "flash": self.board.flash,
            "ram": self.board.ram,
            "stack_size": self.stack_size(model),
            "heap_size": self.heap_size(),
            "io_dir": IO_DIR,
        }

    def render_sources(self, model: CompiledModel) -> dict[str, str]:
        """File name → text of every file `create` writes into `<project>/src/`."""
        env = glue_environment(self.templates)
        variables = self.template_variables(model)
        return {filename: render(env, template, variables) for template, filename in
                SOURCES.items()}

    def do_create(self, project: Project) -> None:
        source_dir = project.home / SOURCE_DIR
        make_directory(source_dir, "source directory")
        for filename, text in self.render_sources(project.model).items():
            (source_dir / filename).write_text(text, encoding="utf-8")

    def do_overhead(self, model: CompiledModel) -> MemoryNeeds:
        return MemoryNeeds(flash=FLASH_OVERHEAD,
                           ram=self.stack_size(model) + self.heap_size() + RAM_OVERHEAD)

    # --- build ----------------------------------------------------------------------------

    def elf_path(self, project: Project) -> Path:
        """The firmware image `build` links."""
        return project.build_dir / f"{project.name}.elf"

    def compile_command(self, project: Project) -> list[str]:
        """The one compiler command line that compiles and links the image."""
        source_dir = project.home / SOURCE_DIR
        elf = self.elf_path(project)
        return [
            self.board.compiler,
            *self.board.cpu_flags,
            *self.board.cflags,
            *COMPILER_FLAGS,
            f"-I{project.include_dir}",
            f"-I{source_dir}",
            *LINKER_FLAGS,
            f"-T{source_dir / LINKER_SCRIPT}",
            f"-Wl,-Map={elf.with_suffix('.map')}",
            "-o",
            str(elf),
            *(str(s) for s in project.sources),
            str(source_dir / "main.c"),
            str(source_dir / "startup.c"),
            *self.board.ldflags,
        ]

    def do_expected_build(self, project: Project) -> Build:
        elf = self.elf_path(project)
        return Build(project, elf, elf=elf)

    def do_build_plan(self, project: Project) -> list[Invocation]:
        return [Invocation(
            tuple(self.compile_command(project)),
            cwd=project.build_dir,
            env=(("LC_ALL", "C"),),
            timeout=COMPILE_TIMEOUT,
            what=f"compiling '{project.name}' for {self.board.name}",
            package=self.board.compiler_package,
        )]

    def do_build(self, project: Project) -> Build:
        if not (project.home / SOURCE_DIR / LINKER_SCRIPT).is_file():
            raise Error(f"{project.home}: no {SOURCE_DIR}/{LINKER_SCRIPT}; create the project "
                        f"with 'microexport project create' for this platform")
        (step,) = self.do_build_plan(project)
        result = step.execute()
        log = project.build_dir / COMPILE_LOG
        log.write_text(result.stdout + result.stderr, encoding="utf-8")
        if result.returncode != 0:
            self.raise_if_overflow(project, result.stderr)
            raise Error(
                f"compiling '{project.name}' for {self.board.name} failed "
                f"({exit_description(result.returncode)}): "
                f"{first_error(result.stderr or result.stdout)} (full log: {log})"
            )
        return self.do_expected_build(project)

    def raise_if_overflow(self, project: Project, output: str) -> None:
        """DoesNotFit naming needed and available bytes if the linker ran out of a region."""
        regions = {"FLASH": self.board.flash, "RAM": self.board.ram}
        overflow = _OVERFLOW.search(output)
        if overflow and regions.get(overflow.group(1)) is not None:
            region = regions[overflow.group(1)]
            assert region is not None
            needed = region.size + int(overflow.group(2))
            raise DoesNotFit(
                f"model '{project.name}' does not fit the {overflow.group(1).lower()} of board "
                f"'{self.board.name}': the linked image needs {needed} bytes (with "
                f"{self.stack_size(project.model)} B of stack and {self.heap_size()} B of "
                f"heap), the board "
                f"has {region.size} bytes"
            )
        section = _NOT_FIT.search(output)
        if section:
            raise DoesNotFit(f"model '{project.name}' does not fit board '{self.board.name}': "
                             f"section {section.group(1)} does not fit in {section.group(2)}")

    # --- run ------------------------------------------------------------------------------

    def qemu_command(self, elf: Path) -> list[str]:
        """The QEMU command line running `elf` with semihosting, deterministically (-icount)."""
        if self.board.qemu_machine is None:
            raise Error(f"board '{self.board.name}' has no qemu_machine: the baremetal platform "
                        f"can build for it but not run it")
        command = [QEMU, "-M", self.board.qemu_machine, "-display", "none", "-monitor", "none",
                   "-serial", "none", "-semihosting-config", "enable=on,target=native"]
        if self.board.clock_hz is not None:
            shift = icount_shift(self.board.clock_hz)
            command += ["-icount", f"shift={shift},align=off,sleep=off"]
        return [*command, "-no-reboot", "-kernel", str(elf)]

    def io_paths(self, build: Build) -> tuple[dict[str, Path], dict[str, Path]]:
        """The raw input and output files of one run, by tensor name (as the harness names them)."""
        io_dir = build.project.build_dir / IO_DIR
        model = build.project.model
        inputs = {t.name: io_dir / f"input_{t.c_name}.bin" for t in model.inputs}
        outputs = {t.name: io_dir / f"output_{t.c_name}.bin" for t in model.outputs}
        return inputs, outputs

    def do_run_plan(self, build: Build, options: RunOptions) -> list[Invocation]:
        return [Invocation(
            tuple(self.qemu_command(build.artifact)),
            cwd=build.project.build_dir,
            timeout=self.run_timeout(options),
            what=f"running '{build.project.name}' on {self.board.name} "
                 f"(QEMU {self.board.qemu_machine})",
            package=QEMU_PACKAGE,
        )]

    def do_run(self, build: Build, inputs: dict[str, bytes], options: RunOptions) -> RawRun:
        (step,) = self.do_run_plan(build, options)
        input_paths, output_paths = self.io_paths(build)
        make_directory(build.project.build_dir / IO_DIR, "I/O directory")
        for name, path in input_paths.items():
            path.write_bytes(inputs[name])
        for path in output_paths.values():
            path.unlink(missing_ok=True)
        result = step.execute()
        text = result.stdout + result.stderr
        if result.returncode != 0:
            lines = [line for line in text.splitlines()
                     if line.startswith(("harness:", "microexport:", "qemu-system"))]
            message = lines[-1] if lines else last_line(text) or "no message"
            raise Error(f"running '{build.project.name}' on {self.board.name} failed "
                        f"({exit_description(result.returncode)}): {message}")
        missing = [str(p) for p in output_paths.values() if not p.is_file()]
        if missing:
            raise Error(f"running '{build.project.name}' on {self.board.name} wrote no output "
                        f"file {missing[0]}")
        return RawRun({name: path.read_bytes() for name, path in output_paths.items()},
                      self.parse_stats(text))

    def parse_stats(self, text: str) -> RunStats:
        """Instructions per inference from the harness's stats line (None without a clock)."""
        match = _STATS.search(text)
        clock = self.board.clock_hz
        if match is None or clock is None:
            return RunStats()
        overhead, run = (int(group, 16) for group in match.groups())
        shift = icount_shift(clock)
        instructions = (ticks_to_instructions(run, clock, shift)
                        - ticks_to_instructions(overhead, clock, shift))
        return RunStats(instructions=instructions,
                        details={"run_ticks": run, "overhead_ticks": overhead,
                                 "icount_shift": shift, "clock_hz": clock})
