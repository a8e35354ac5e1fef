"""The board side of the protocol: C99 rendered per model from templates/protocol/.

`render_device_sources` gives `microexport_protocol.h` / `microexport_protocol.c` (the session,
the model's static buffers, the call of `tvmgen_<name>_run`); `render_host_board` a POSIX `main`
serving them on a tty, to try the protocol without a board.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from microexport.archive.glue import interface_variables
from microexport.deploy.protocol.messages import (
    CHUNK_HEADER_SIZE,
    INFO_FLAG_BIG_ENDIAN,
    INFO_FLAG_CLOCK,
    MAX_ERROR_TEXT,
    MAX_NAME_BYTES,
    MAX_TENSORS,
    STATS_FLAG_TICKS,
)
from microexport.deploy.protocol.session import model_signature
from microexport.deploy.protocol.wire import (
    DEFAULT_DEVICE_MAX_PAYLOAD,
    MAGIC,
    MIN_DEVICE_MAX_PAYLOAD,
    PROTOCOL_VERSION,
    ErrorCode,
    FrameType,
    crc32_nibble_table,
)
from microexport.errors import Error
from microexport.model import CompiledModel
from microexport.templating import glue_environment, render

DEVICE_HEADER_TEMPLATE = "protocol/microexport_protocol.h.j2"
DEVICE_SOURCE_TEMPLATE = "protocol/microexport_protocol.c.j2"
HOST_BOARD_TEMPLATE = "protocol/host_board_main.c.j2"
DEVICE_TEMPLATES: dict[str, str] = {
    DEVICE_HEADER_TEMPLATE: "microexport_protocol.h",
    DEVICE_SOURCE_TEMPLATE: "microexport_protocol.c",
}
HOST_BOARD_FILENAME = "host_board_main.c"


def _check_renderable(model: CompiledModel) -> None:
    if len(model.name.encode()) > MAX_NAME_BYTES:
        raise Error(f"model name '{model.name[:20]}...' is longer than {MAX_NAME_BYTES} bytes: "
                    f"the serial protocol cannot carry it")
    for key, specs in (("inputs", model.inputs), ("outputs", model.outputs)):
        if len(specs) > MAX_TENSORS:
            raise Error(f"the model has {len(specs)} {key}: the serial protocol carries "
                        f"at most {MAX_TENSORS}")
        for tensor in specs:
            if tensor.nbytes > 0xFFFFFFFF:
                raise Error(f"{key[:-1]} '{tensor.name}' has {tensor.nbytes} bytes: "
                            f"the serial protocol carries at most 4 GiB per tensor")


def protocol_variables(model: CompiledModel) -> dict[str, Any]:
    """The variables of the protocol templates: the interface variables plus the protocol's."""
    _check_renderable(model)
    variables = interface_variables(model)
    variables.update(
        protocol_version=PROTOCOL_VERSION,
        magic=[f"0x{b:02X}" for b in MAGIC],
        frame_types=list(FrameType),
        error_codes=list(ErrorCode),
        model_signature=f"0x{model_signature(model):08X}u",
        crc_table=[f"0x{v:08X}u" for v in crc32_nibble_table()],
        default_max_payload=DEFAULT_DEVICE_MAX_PAYLOAD,
        min_max_payload=MIN_DEVICE_MAX_PAYLOAD,
        chunk_header_size=CHUNK_HEADER_SIZE,
        max_error_text=MAX_ERROR_TEXT,
        info_flag_clock=INFO_FLAG_CLOCK,
        info_flag_big_endian=INFO_FLAG_BIG_ENDIAN,
        stats_flag_ticks=STATS_FLAG_TICKS,
        device_header="microexport_protocol.h",
    )
    return variables


def render_device_sources(
    model: CompiledModel, template_dir: Path | None = None
) -> dict[str, str]:
    """The board side of the protocol for one model: file name → C text.

    `microexport_protocol.h` (the transport struct, `microexport_serve_once`,
    `microexport_serve_forever`) and `microexport_protocol.c` (the session, the model's static
    input and output buffers, the call of `tvmgen_<name>_run`). Compile them with the archive's
    sources and `-I codegen/host/include`. `template_dir` overrides templates like `--templates`.
    """
    env = glue_environment(template_dir)
    variables = protocol_variables(model)
    return {filename: render(env, template, variables)
            for template, filename in DEVICE_TEMPLATES.items()}


def render_host_board(model: CompiledModel, template_dir: Path | None = None) -> str:
    """A POSIX `main` serving the protocol on a tty (`--fd N` or `--device PATH`).

    Stands in for a board when testing the protocol on the host; compile it with the device
    sources and the archive's sources.
    """
    return render(glue_environment(template_dir), HOST_BOARD_TEMPLATE,
                  protocol_variables(model))
