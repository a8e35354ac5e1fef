"""Flash and RAM of a linked firmware image, by section, by kind and by model function.

`size_report(elf, board, model)` (`model`: the archive's `CompiledModel`) reads the ELF with
pyelftools:

* every allocated section is placed in the board's flash or RAM by its address; an initialised
  data section in RAM whose load address is in flash (`.data`) counts in both;
* flash is split into **code** (executable sections), **constants** (the model's weight pool)
  and **other** (vectors, newlib's read-only data, `.data`'s initial values);
* RAM into **workspace** (the workspace pools, in the run wrapper or the harness), **io** (the
  harness's input and output buffers), **stack** (`.stack` or Zephyr's thread stacks), **heap**
  (`.heap`) and **other**;
* `functions` gives the code bytes of each model function (kernels, AOT main, run wrapper,
  the int8 micro-kernels `me_*`),
  `kernels` those of the operator kernels alone, by kernel symbol (an unrolled loop's cost
  shows there); a kernel whose symbol the image lacks counts 0.

Which symbol is which comes from the compiled-model record (`CompiledModel.symbols`) and the
packaged harnesses' names (`glue.harness_symbols`), not from symbol-name prefixes.

The report is what `microexport size` prints and what `build` writes to `<project>/size.json`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from microexport.archive.glue import harness_symbols
from microexport.deploy.boards import Board, MemoryRegion
from microexport.errors import DoesNotFit, Error, MissingTool
from microexport.model import CompiledModel

SIZE_FORMAT_VERSION = 1
FLASH_KINDS = ("code", "constants", "other")
RAM_KINDS = ("workspace", "io", "stack", "heap", "other")
STACK_SECTIONS = frozenset({".stack"})
HEAP_SECTIONS = frozenset({".heap"})
ZEPHYR_STACK_SYMBOLS = frozenset({"z_main_stack", "z_interrupt_stacks", "z_idle_stacks"})

SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4


@dataclass(frozen=True)
class SectionSize:
    """One allocated section: where it lives and how many bytes of flash and RAM it takes."""

    name: str
    address: int
    size: int
    flash: int  # bytes of flash (code, constants, or the initial values of a RAM section)
    ram: int  # bytes of RAM


@dataclass(frozen=True)
class RegionUsage:
    """Bytes used in one memory (flash or RAM), by kind, against what the board has."""

    used: int
    available: int | None  # None: unconstrained
    by_kind: dict[str, int]

    @property
    def free(self) -> int | None:
        """Bytes left (negative when over), None when unconstrained."""
        return None if self.available is None else self.available - self.used


@dataclass(frozen=True)
class SizeReport:
    """Flash and RAM of one firmware image (see the module docstring)."""

    elf: str
    board: str
    model: str
    flash: RegionUsage
    ram: RegionUsage
    sections: tuple[SectionSize, ...]
    functions: dict[str, int] = field(default_factory=dict)  # model function → code bytes
    # The compiler's memory plan (metadata.json): workspace + I/O against the liveness bound.
    plan: dict[str, int] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)  # kernel symbol → code bytes

    def to_json(self) -> dict[str, Any]:
        """The JSON document written to size.json."""
        return {
            "version": SIZE_FORMAT_VERSION,
            "elf": self.elf,
            "board": self.board,
            "model": self.model,
            "flash": {**asdict(self.flash), "free": self.flash.free},
            "ram": {**asdict(self.ram), "free": self.ram.free},
            "sections": [asdict(s) for s in self.sections],
            "functions": dict(sorted(self.functions.items(), key=lambda kv: (-kv[1], kv[0]))),
            "kernels": self.kernels,
            "plan": self.plan,
        }

    def write(self, path: Path) -> None:
        """Write the JSON report to `path` (temporary file + rename)."""
        text = json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        except OSError as err:
            raise Error(f"cannot write {path}: {err.strerror or err}") from None

    def summary(self) -> str:
        """A human-readable table: totals by kind, sections, model functions."""
        lines = []
        if self.plan:
            io = 0 if self.plan["io_in_workspace"] else self.plan["io_bytes"]
            used = self.plan["workspace_bytes"] + io
            bound = self.plan["lower_bound_bytes"]
            ratio = f", {used / bound:.3f}x the bound" if bound else ""
            lines.append(
                f"memory plan: workspace {self.plan['workspace_bytes']} B + I/O outside it "
                f"{io} B = {used} B; liveness lower bound {bound} B{ratio}"
            )
        for title, usage, kinds in (("flash", self.flash, FLASH_KINDS),
                                    ("RAM", self.ram, RAM_KINDS)):
            limit = f" of {usage.available} B ({_percent(usage)})" if usage.available else ""
            lines.append(f"{title}: {usage.used} B{limit}")
            for kind in kinds:
                lines.append(f"  {kind:<10} {usage.by_kind.get(kind, 0):>10} B")
        lines.append("sections:")
        lines.append(f"  {'name':<20} {'address':>10} {'size':>9} {'flash':>9} {'RAM':>9}")
        for s in self.sections:
            lines.append(f"  {s.name:<20} {s.address:#010x} {s.size:>9} {s.flash:>9} {s.ram:>9}")
        if self.functions:
            lines.append("model functions (code bytes):")
            for name, size in sorted(self.functions.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {size:>9}  {name}")
        if self.kernels:
            total = sum(self.kernels.values())
            lines.append(f"kernels (code bytes): {total} B in "
                         f"{len(self.kernels)} kernels")
            for name, size in self.kernels.items():
                share = f"{100.0 * size / total:5.1f}%" if total else "    -"
                lines.append(f"  {size:>9}  {share}  {name}")
        return "\n".join(lines)


def _percent(usage: RegionUsage) -> str:
    assert usage.available
    return f"{100.0 * usage.used / usage.available:.1f}%"


def _in(region: MemoryRegion | None, address: int) -> bool:
    return region is not None and region.origin <= address < region.origin + region.size


def _load_addresses(elf: Any) -> dict[str, int]:
    """Section name → load address (LMA), from the PT_LOAD segments."""
    lma = {}
    for segment in elf.iter_segments():
        if segment["p_type"] != "PT_LOAD":
            continue
        for section in elf.iter_sections():
            if section["sh_flags"] & SHF_ALLOC and segment.section_in_segment(section):
                lma[section.name] = section["sh_addr"] - segment["p_vaddr"] + segment["p_paddr"]
    return lma


def _classify_section(
    section: Any, lma: int, board: Board
) -> SectionSize:
    address, size = section["sh_addr"], section["sh_size"]
    nobits = section["sh_type"] == "SHT_NOBITS"
    flash_region, ram_region = board.flash, board.ram
    if flash_region is None and ram_region is None:  # unconstrained board: loaded = flash
        return SectionSize(section.name, address, size, 0 if nobits else size, size)
    if _in(ram_region, address) and not _in(flash_region, address):
        initial = 0 if nobits or not _in(flash_region, lma) or lma == address else size
        return SectionSize(section.name, address, size, initial, size)
    return SectionSize(section.name, address, size, 0 if nobits else size, 0)


def size_report(elf_path: Path, board: Board, model: CompiledModel) -> SizeReport:
    """The flash and RAM report of a linked image for `board` (see the module docstring)."""
    try:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection
    except ImportError:
        raise MissingTool("pyelftools", "python3-pyelftools") from None
    # Symbol classes come from the record (the archive's own symbols) and from the packaged
    # harnesses' naming (their static pools and I/O buffers), never from name prefixes.
    classes = {**harness_symbols(model), **model.symbols}
    try:
        handle = open(elf_path, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise Error(f"cannot read {elf_path}: {err.strerror or err}; build the project first") \
            from None
    with handle:
        try:
            elf = ELFFile(handle)
            lma = _load_addresses(elf)
            sections = []
            exec_bytes = 0
            stack_bytes = heap_bytes = 0
            for section in elf.iter_sections():
                if not section["sh_flags"] & SHF_ALLOC or section["sh_size"] == 0:
                    continue
                entry = _classify_section(section, lma.get(section.name, section["sh_addr"]),
                                          board)
                sections.append(entry)
                if section["sh_flags"] & SHF_EXECINSTR:
                    exec_bytes += entry.flash
                if section.name in STACK_SECTIONS:
                    stack_bytes += entry.ram
                if section.name in HEAP_SECTIONS:
                    heap_bytes += entry.ram
            functions: dict[str, int] = {}
            constants = workspace = io = 0
            for table in elf.iter_sections():
                if not isinstance(table, SymbolTableSection):
                    continue
                for symbol in table.iter_symbols():
                    kind, size = symbol["st_info"]["type"], symbol["st_size"]
                    role = classes.get(symbol.name)
                    if role is None and _MICROKERNEL_FUNCTION.match(symbol.name):
                        role = "code"  # a static micro-kernel of the model's C, or GCC's clone
                    if kind == "STT_FUNC" and role == "code":
                        functions[symbol.name] = size
                    elif kind == "STT_OBJECT":
                        if role == "constants":
                            constants += size
                        elif role == "workspace":
                            workspace += size
                        elif role == "io":
                            io += size
                        elif symbol.name in ZEPHYR_STACK_SYMBOLS:
                            stack_bytes += size
        except Exception as err:  # noqa: BLE001 - pyelftools raises many kinds on a bad file
            raise Error(f"{elf_path} is not a readable ELF file: {err}") from None
    flash_used = sum(s.flash for s in sections)
    ram_used = sum(s.ram for s in sections)
    flash = RegionUsage(
        flash_used, board.flash.size if board.flash else None,
        {"code": exec_bytes, "constants": constants,
         "other": flash_used - exec_bytes - constants},
    )
    ram = RegionUsage(
        ram_used, board.ram.size if board.ram else None,
        {"workspace": workspace, "io": io, "stack": stack_bytes, "heap": heap_bytes,
         "other": ram_used - workspace - io - stack_bytes - heap_bytes},
    )
    memory = model.memory
    plan = {"workspace_bytes": memory.workspace_bytes, "io_bytes": memory.io_bytes,
            "lower_bound_bytes": memory.lower_bound_bytes,
            "io_in_workspace": int(memory.io_in_workspace)}
    symbols = sorted(kernel.symbol for kernel in model.kernels)
    kernels = {symbol: functions.get(symbol, 0) for symbol in symbols}
    return SizeReport(str(elf_path), board.name, model.name, flash, ram, tuple(sections),
                      functions, plan, kernels)


# The int8 micro-kernels the model's C defines as static functions
# (templates/codegen/int8_dot.h.j2), with GCC's `.constprop.N` / `.isra.N` clone suffixes.
_MICROKERNEL_FUNCTION = re.compile(r"^me_[a-z0-9_]+(\.(constprop|isra|part)\.\d+)*$")


def check_fits(report: SizeReport, board: Board) -> None:
    """DoesNotFit naming needed and available bytes if the image exceeds the board's memories."""
    for title, usage in (("flash", report.flash), ("RAM", report.ram)):
        if usage.available is not None and usage.used > usage.available:
            raise DoesNotFit(
                f"model '{report.model}' does not fit the {title} of board '{board.name}': "
                f"the linked image needs {usage.used} bytes, the board has {usage.available} bytes"
            )


def read_size_report(path: Path) -> dict[str, Any]:
    """A size.json written by `SizeReport.write`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise Error(f"cannot read size report {path}: {err}") from None
