"""The one way microexport runs external programs (compilers, the host harness, emulators).

Every command is logged (shlex-quoted) at INFO level; a missing program becomes
`errors.MissingTool` naming the Debian package, a timeout or (with `check=True`) a non-zero exit
status a one-line `errors.Error`.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from microexport.errors import Error, MissingTool

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0

# Program → Debian package that provides it.
DEBIAN_PACKAGES: dict[str, str] = {
    "cc": "gcc",
    "gcc": "gcc",
    "c++": "g++",
    "g++": "g++",
    "clang": "clang",
    "make": "make",
    "cmake": "cmake",
    "arm-none-eabi-gcc": "gcc-arm-none-eabi",
    "arm-none-eabi-objcopy": "binutils-arm-none-eabi",
    "arm-none-eabi-size": "binutils-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
    "west": "python3-west",
}


@dataclass(frozen=True)
class CommandResult:
    """What a finished command printed and returned."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def command_line(self) -> str:
        """The command as a shell would show it."""
        return shlex.join(self.argv)


class CommandFailed(Error):
    """A command exited with a non-zero status (or died from a signal)."""

    def __init__(self, result: CommandResult, what: str) -> None:
        super().__init__(f"{what} failed ({exit_description(result.returncode)}): "
                         f"{last_line(result.stderr or result.stdout) or result.command_line}")
        self.result = result


def exit_description(returncode: int) -> str:
    """`exit status 1` or `killed by SIGSEGV`."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def last_line(text: str) -> str:
    """The last non-empty line of `text`, stripped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def debian_package(program: str) -> str:
    """The Debian package providing `program` (its own name when unknown)."""
    return DEBIAN_PACKAGES.get(Path(program).name, Path(program).name)


def check_program(program: str, cwd: Path | None = None, package: str | None = None) -> None:
    """MissingTool if a program name is not on PATH; Error if a program path is not executable."""
    if "/" not in program:
        if shutil.which(program) is None:
            raise MissingTool(program, package or debian_package(program))
        return
    path = Path(cwd or ".") / program
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise Error(f"program {program} not found or not executable")


def run_command(
    argv: Sequence[str | Path],
    cwd: Path | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    check: bool = False,
    what: str | None = None,
    package: str | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run `argv` in `cwd`, capturing its output, and return the result.

    Raises `MissingTool` (with `package`, or the known Debian package) if the program is not
    installed, `Error` on timeout, and `CommandFailed` on a non-zero status if `check`.
    """
    args = tuple(str(a) for a in argv)
    label = what or f"'{Path(args[0]).name}'"
    if cwd is not None and not Path(cwd).is_dir():
        raise Error(f"cannot run {label}: directory {cwd} does not exist")
    check_program(args[0], cwd, package)
    log.info("running: %s%s", shlex.join(args), f"  (in {cwd})" if cwd else "")
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            check=False,
            env=dict(env) if env is not None else None,
        )
    except subprocess.TimeoutExpired:
        raise Error(f"{label} timed out after {timeout:g} s: {shlex.join(args)}") from None
    except FileNotFoundError:
        raise MissingTool(args[0], package or debian_package(args[0])) from None
    result = CommandResult(
        argv=args,
        returncode=proc.returncode,
        stdout=proc.stdout.decode(errors="replace"),
        stderr=proc.stderr.decode(errors="replace"),
    )
    if check and result.returncode != 0:
        raise CommandFailed(result, label)
    return result
