"""Board YAML files: schema, validation, lookup."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from microexport.deploy.boards import (
    Board,
    MemoryRegion,
    SerialConfig,
    dump_board,
    list_boards,
    load_board,
    parse_board,
    parse_size,
)
from microexport.deploy.platforms import PLATFORMS
from microexport.errors import Error

CORTEX_M = """
name: example_m4
description: a Cortex-M4F board
platforms: [qemu, zephyr]
cpu: cortex-m4
fpu: fpv4-sp-d16
float_abi: hard
compiler: arm-none-eabi-gcc
compiler_package: gcc-arm-none-eabi
cflags: [-mcpu=cortex-m4, -mthumb]
ldflags: [-lm]
flash: {origin: 0x08000000, size: 1M}
ram: {origin: 0x20000000, size: 128K}
qemu_machine: netduinoplus2
zephyr_board: example_m4
zephyr_versions: ["3.7.0", "4.0.0"]
serial: {baud: 115200, vid_pid: "0483:374b"}
run_timeout: 30
clock_hz: 168000000
stack_size: 8K
heap_size: 0
west_runner: openocd
"""


def test_host_board() -> None:
    board = load_board("host")
    assert board.name == "host"
    assert board.platforms == ("host",) and board.default_platform == "host"
    assert board.compiler == "cc" and board.compiler_package == "gcc"
    assert board.cflags == ("-O2", "-std=c99", "-Wall", "-Wextra", "-Werror")
    assert board.ldflags == ("-lm",)
    assert board.flash is None and board.ram is None and board.cpu is None


def test_list_boards_is_sorted_and_has_host() -> None:
    names = list_boards()
    assert names == sorted(names)
    assert "host" in names


@pytest.mark.parametrize("name", list_boards())
def test_every_shipped_board_loads_and_has_a_known_platform(name: str) -> None:
    board = load_board(name)
    assert board.name == name
    assert any(p in PLATFORMS for p in board.platforms), board.platforms


def test_unknown_board_lists_known_names() -> None:
    with pytest.raises(Error, match="unknown board 'nope': known boards are .*host"):
        load_board("nope")


def test_full_schema() -> None:
    board = parse_board(CORTEX_M, "example.yaml")
    assert board == Board(
        name="example_m4",
        description="a Cortex-M4F board",
        platforms=("qemu", "zephyr"),
        cpu="cortex-m4",
        fpu="fpv4-sp-d16",
        float_abi="hard",
        compiler="arm-none-eabi-gcc",
        compiler_package="gcc-arm-none-eabi",
        cflags=("-mcpu=cortex-m4", "-mthumb"),
        ldflags=("-lm",),
        flash=MemoryRegion(0x08000000, 1024 * 1024),
        ram=MemoryRegion(0x20000000, 128 * 1024),
        qemu_machine="netduinoplus2",
        zephyr_board="example_m4",
        zephyr_versions=("3.7.0", "4.0.0"),
        serial=SerialConfig(115200, ("0483:374b",)),
        run_timeout=30.0,
        clock_hz=168_000_000,
        stack_size=8192,
        heap_size=0,
        west_runner="openocd",
    )


def test_board_from_path(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(CORTEX_M)
    assert load_board(str(path)).name == "example_m4"


def mutate(**changes: object) -> str:
    data = yaml.safe_load(CORTEX_M)
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return yaml.safe_dump(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (mutate(colour="red"), "unknown field(s) colour"),
        (mutate(compiler=None), "missing required field 'compiler'"),
        (mutate(platforms=[]), "missing required field 'platforms'"),
        (mutate(cflags="-O2"), "cflags: expected a list of strings"),
        (mutate(flash={"origin": 0}), "flash: expected a mapping with 'origin' and 'size'"),
        (mutate(ram={"origin": 0, "size": "lots"}), "ram.size: expected a size"),
        (mutate(serial={"vid_pid": "1:2"}), "serial: expected a mapping with 'baud'"),
        (mutate(cpu=3), "cpu: expected a string or null"),
        (mutate(run_timeout=0), "run_timeout: expected a positive number"),
        (mutate(float_abi="soft-ish"), "float_abi: expected soft, softfp or hard"),
        (mutate(serial={"baud": 9600, "vid_pid": "0483-374b"}), "serial.vid_pid: expected a USB"),
        (mutate(serial={"baud": 9600, "vid_pid": ["0483:374b", 7]}), "serial.vid_pid"),
        (mutate(serial={"baud": -1}), "serial.baud: expected a positive integer"),
        (mutate(clock_hz="fast"), "clock_hz: expected a positive integer"),
        (mutate(stack_size="big"), "stack_size: expected a size"),
        (mutate(name="b\nadd_subdirectory(evil)"), "name: 'b\\nadd_subdirectory(evil)' is "
                                                   "not a plain name"),
        (mutate(cpu="cortex-m3 */ int evil; /*"), "is not a plain name"),
        (mutate(zephyr_board='x" evil'), "zephyr_board: 'x\" evil' is not a plain name"),
        (mutate(workspace_pools=[{"name": "constant"}]), "'constant'"),
        (mutate(zephyr_versions="4.0.0"), "zephyr_versions: expected a list of Zephyr versions"),
        (mutate(zephyr_versions=["v4.0"]), "zephyr_versions: expected a list of Zephyr versions"),
        (mutate(zephyr_board=None), "zephyr_versions: Zephyr versions without a zephyr_board"),
        (mutate(workspace_pools=[{"name": "p\n"}]), "pool name 'p\\n'"),
        ("name: [unclosed", "invalid YAML"),
        ("- a list", "expected a YAML mapping"),
    ],
)
def test_invalid_board_is_a_one_line_error(text: str, message: str) -> None:
    with pytest.raises(Error) as info:
        parse_board(text, "b.yaml")
    assert message in info.value.one_line()
    assert info.value.one_line().startswith("b.yaml")


@pytest.mark.parametrize(
    ("value", "size"), [(4096, 4096), ("64K", 65536), ("1M", 1048576), (" 2 k ", 2048)]
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value, "x") == size


@pytest.mark.parametrize("value", [-1, "1G", "1.5K", True, None])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(Error, match="expected a size"):
        parse_size(value, "x")


def test_boards_are_documented() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "boards.md").read_text()
    for field in Board.__dataclass_fields__:
        assert f"`{field}`" in docs, field


CATALOGUE = {
    # name: (platforms, cpu, fpu, float ABI, flash origin/size, RAM origin/size, QEMU machine,
    #        Zephyr board)
    "host": (("host",), None, None, None, None, None, None, None),
    "mps2_an385": (("baremetal", "zephyr"), "cortex-m3", None, "soft", (0, 4 << 20),
                   (0x20000000, 4 << 20), "mps2-an385", "mps2/an385"),
    # Zephyr 4.0 has no mps2/an386 or mps2/an500 board: bare metal only.
    "mps2_an386": (("baremetal",), "cortex-m4", "fpv4-sp-d16", "hard", (0, 4 << 20),
                   (0x20000000, 4 << 20), "mps2-an386", None),
    "mps2_an500": (("baremetal",), "cortex-m7", "fpv5-d16", "hard", (0, 4 << 20),
                   (0x20000000, 4 << 20), "mps2-an500", None),
    # Zephyr's mps2/an521/cpu0 has no FPU (only CPU1 selects CPU_HAS_FPU).
    "mps2_an521": (("zephyr",), "cortex-m33", None, "soft", (0x10000000, 4 << 20),
                   (0x38000000, 4 << 20), "mps2-an521", "mps2/an521/cpu0"),
    "mps3_an547": (("baremetal", "zephyr"), "cortex-m55", "auto", "hard", (0x10000000, 512 << 10),
                   (0x30000000, 512 << 10), "mps3-an547", "mps3/corstone300/an547"),
    "nrf5340dk_nrf5340_cpuapp": (("zephyr",), "cortex-m33", "fpv5-sp-d16", "hard", (0, 1 << 20),
                                 (0x20000000, 448 << 10), None, "nrf5340dk/nrf5340/cpuapp"),
    "nucleo_f746zg": (("zephyr",), "cortex-m7", "fpv5-sp-d16", "hard", (0x08000000, 1 << 20),
                      (0x20010000, 256 << 10), None, "nucleo_f746zg"),
    "nucleo_l4r5zi": (("zephyr",), "cortex-m4", "fpv4-sp-d16", "hard", (0x08000000, 2 << 20),
                      (0x20000000, 192 << 10), None, "nucleo_l4r5zi"),
    "qemu_cortex_m3": (("zephyr",), "cortex-m3", None, "soft", (0, 256 << 10),
                       (0x20000000, 64 << 10), "lm3s6965evb", "qemu_cortex_m3"),
    "qemu_x86": (("zephyr",), None, None, None, (0x00500000, 4 << 20), (0, 32 << 20), "q35",
                 "qemu_x86"),
    "stm32f746g_disco": (("zephyr",), "cortex-m7", "fpv5-sp-d16", "hard", (0x08000000, 1 << 20),
                         (0x20010000, 256 << 10), None, "stm32f746g_disco"),
}
PROBES = {"nrf5340dk_nrf5340_cpuapp": ("1366:1015", "1366:1051", "1366:1061"),
          "nucleo_f746zg": ("0483:374b", "0483:3752"), "nucleo_l4r5zi": ("0483:374b", "0483:3752"),
          "stm32f746g_disco": ("0483:374b", "0483:3752")}


def _region(region: MemoryRegion | None) -> tuple[int, int] | None:
    return None if region is None else (region.origin, region.size)


def test_catalogue_is_pinned() -> None:
    assert list_boards() == sorted(CATALOGUE)
    for name, (platforms, cpu, fpu, abi, flash, ram, machine, zephyr) in CATALOGUE.items():
        board = load_board(name)
        assert (board.platforms, board.cpu, board.fpu, board.float_abi, _region(board.flash),
                _region(board.ram), board.qemu_machine, board.zephyr_board) == (
            platforms, cpu, fpu, abi, flash, ram, machine, zephyr), name
        assert board.serial == (SerialConfig(115200, PROBES[name]) if name in PROBES else None)
        # Every Zephyr board names its Zephyr board and the releases it was checked with.
        assert board.zephyr_versions == (("4.0.0",) if "zephyr" in platforms else ()), name
        if "baremetal" in platforms:
            assert board.clock_hz is not None and board.compiler == "arm-none-eabi-gcc"


def test_cpu_flags() -> None:
    assert load_board("mps2_an386").cpu_flags == (
        "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
    assert load_board("mps2_an385").cpu_flags == ("-mcpu=cortex-m3", "-mthumb",
                                                  "-mfloat-abi=soft")
    assert load_board("host").cpu_flags == ()


@pytest.mark.parametrize("name", list_boards())
def test_board_yaml_round_trips(name: str) -> None:
    board = load_board(name)
    assert parse_board(dump_board(board), "x.yaml") == board


ZEPHYR_TREE = Path(__file__).resolve().parent.parent.parent / "shared" / "zephyr" / "zephyr"


@pytest.mark.parametrize("name", [n for n, row in CATALOGUE.items() if "zephyr" in row[0]])
def test_zephyr_boards_are_true_to_zephyr(name: str) -> None:
    """Each Zephyr board exists in the Zephyr 4.0.0 tree, and its board file claims an FPU
    exactly when Zephyr's SoC Kconfig gives the CPU one."""
    from microexport.deploy.platforms.zephyr import check_board_in_tree, zephyr_version

    if not (ZEPHYR_TREE / "VERSION").is_file():
        pytest.skip(f"no Zephyr tree at {ZEPHYR_TREE}")
    assert zephyr_version(ZEPHYR_TREE) == "4.0.0"
    board = load_board(name)
    check_board_in_tree(board, ZEPHYR_TREE)
    has_fpu = {"mps2/an385": False, "mps2/an521/cpu0": False, "qemu_cortex_m3": False,
               "qemu_x86": False}.get(board.zephyr_board or "", True)
    assert (board.fpu is not None) == has_fpu and (board.float_abi == "hard") == has_fpu, name


@pytest.mark.parametrize("name", [n for n in list_boards() if load_board(n).cpu])
def test_dsp_declaration_matches_the_compiler(name: str, tmp_path: Path) -> None:
    """A board declares `dsp: true` exactly when its compiler, with the board's flags, defines
    __ARM_FEATURE_SIMD32 (what selects the SMLAD micro-kernels in the generated C)."""
    import subprocess

    from support import require_program

    board = load_board(name)
    require_program(board.compiler, board.compiler_package or board.compiler)
    probe = tmp_path / "probe.c"
    probe.write_text("int simd32 = __ARM_FEATURE_SIMD32;\n")
    done = subprocess.run([board.compiler, *board.cpu_flags, *board.cflags, "-c", str(probe),
                           "-o", str(tmp_path / "probe.o")], capture_output=True, text=True)
    assert (done.returncode == 0) == board.dsp, (name, done.stderr[-300:])


def test_dsp_is_a_boolean() -> None:
    assert parse_board(CORTEX_M + "dsp: true\n", "b.yaml").dsp
    assert not parse_board(CORTEX_M, "b.yaml").dsp
    with pytest.raises(Error) as info:
        parse_board(CORTEX_M + "dsp: maybe\n", "b.yaml")
    assert "dsp: expected true or false" in info.value.one_line()
