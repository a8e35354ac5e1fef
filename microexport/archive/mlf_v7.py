"""The Model Library Format (MLF) version 7 fields of metadata.json.

microTVM's `tvm.micro.export_model_library_format` (removed from TVM in 0.19) wrote format
version 7 from TVM 0.10 (mid 2022) until microTVM was dropped. Tools written for it (the Arduino
and Zephyr project generators, `tvmc`, the STM32 emitter, test helpers) open `metadata.json` and
walk down from `modules`. `mlf_v7_fields` returns exactly those keys, computed from our own
record, so they can be merged into our metadata.json: MLF v7 keeps everything except `version`
under `modules`, so the merge adds two top-level keys (`version`, `modules`) and touches none of
ours. Our own format number therefore lives in a separate key (`microexport_format`).

What a v7 "full-model" metadata.json held, field by field, and what we write:

==============================================  ==============================================
MLF v7 path                                     microexport value
==============================================  ==============================================
`version`                                       `7`
`modules`                                       one entry, keyed by the model name (TVM's
                                                `--module-name`, default `default`; ours
                                                `--name`)
`modules.<m>.model_name`                        the model name again
`modules.<m>.export_datetime`                   `"1970-01-01 00:00:00Z"`, always (see below)
`modules.<m>.executors`                         `["aot"]` (TVM: `["aot"]` or `["graph"]`)
`modules.<m>.style`                             `"full-model"` (TVM's other style, `"operator"`,
                                                was for single operators built with tvm.build)
`modules.<m>.target`                            `[<target>]`, the target string we compiled for
                                                (TVM: `str()` of each target)
`modules.<m>.memory.functions.main`             a list with one entry per device; we have one
                                                device, the CPU
`...main[0].device`                             `1` (DLPack `kDLCPU`, the device of target `c`)
`...main[0].workspace_size_bytes`               all workspace pools together
                                                (`memory.workspace_bytes`): the bytes the caller
                                                provides with `--workspace external`
`...main[0].constants_size_bytes`               the constant pool (`memory.constants_bytes`)
`...main[0].io_size_bytes`                      all inputs and outputs (`memory.io_bytes`)
`...main[0].inputs.<name>`                      `{"size": bytes, "dtype": dtype}` per model
                                                input, keyed by its name in the model
`...main[0].outputs.<name>`                     the same per output (TVM named an unnamed single
                                                output `output`, several `output0`, `output1`..;
                                                we always have names)
`modules.<m>.memory.functions.operator_functions`
                                                one entry per kernel, sorted by C symbol:
                                                `{"function_name": symbol, "workspace":
                                                [{"device": 1, "workspace_size_bytes": its
                                                scratch bytes}]}`
`modules.<m>.memory.sids`                       not written: graph executor only
`modules.<m>.external_dependencies`             not written: TVM listed the standalone CRT it
                                                bundled under `./runtime`; our C needs no runtime
==============================================  ==============================================

`export_datetime`: TVM stamped the local time of the export (`"%Y-%m-%d %H:%M:%SZ"`). A
timestamp would break our guarantee that the same model and options give the same archive bytes,
and leaving the key out would break a reader that indexes it; so we write the Unix epoch in TVM's
format, the same convention as the archive's tar entries (mtime 0). It parses with TVM's format
string and never claims a real export time.

Which of these fields TVM's own readers used (and so what `tests/test_mlf_v7.py` pins down):
`modules` (every reader; `tvmc` and the STM32 emitter require exactly one module),
`modules.<m>.style == "full-model"` (Arduino generator),
`modules.<m>.memory.functions.main[0].workspace_size_bytes` (Arduino generator, test helper
`mlf_extract_workspace_size_bytes`, and the MLF exporter itself for the C interface header),
`modules.<m>.executors` (`tvmc`: its first and only entry is the executor type; `"graph"` in it
means an `executor-config/graph/<m>.graph` file exists), and `main[0].inputs`/`outputs` with
their `size` (the exporter, for the header's size macros).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

MLF_VERSION: Final = 7
# DLPack device type of TVM's `c` target (kDLCPU).
CPU_DEVICE: Final = 1
# TVM's strftime format for export_datetime, and the fixed value we write in it.
EXPORT_DATETIME_FORMAT: Final = "%Y-%m-%d %H:%M:%SZ"
FIXED_EXPORT_DATETIME: Final = "1970-01-01 00:00:00Z"


def _tensor_map(kind: str, tensors: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """`{name: {"size": bytes, "dtype": dtype}}` for the inputs or outputs of `main`."""
    entries: dict[str, dict[str, Any]] = {}
    for tensor in tensors:
        name = str(tensor["name"])
        if name in entries:
            raise ValueError(f"two {kind} are named '{name}'")
        entries[name] = {"size": int(tensor["size_bytes"]), "dtype": str(tensor["dtype"])}
    return entries


def mlf_v7_fields(
    *,
    model_name: str,
    target: str,
    workspace_bytes: int,
    constants_bytes: int,
    io_bytes: int,
    kernel_workspace_bytes: dict[str, int],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
) -> dict[str, Any]:
    """The MLF version 7 keys (`version`, `modules`) to merge into metadata.json.

    `inputs`/`outputs` are our metadata.json tensor entries (at least `name`, `dtype`,
    `size_bytes`); `kernel_workspace_bytes` maps each kernel's C symbol to its scratch bytes in
    the workspace. Deterministic: the same arguments give equal dictionaries, and the only
    time-like field, `export_datetime`, is fixed (see the module docstring).
    """
    for label, value in (("workspace_bytes", workspace_bytes),
                         ("constants_bytes", constants_bytes), ("io_bytes", io_bytes),
                         *kernel_workspace_bytes.items()):
        if int(value) < 0:
            raise ValueError(f"{label} must not be negative, got {value}")
    main = {
        "device": CPU_DEVICE,
        "workspace_size_bytes": int(workspace_bytes),
        "constants_size_bytes": int(constants_bytes),
        "io_size_bytes": int(io_bytes),
        "inputs": _tensor_map("inputs", inputs),
        "outputs": _tensor_map("outputs", outputs),
    }
    operator_functions = [
        {
            "function_name": symbol,
            "workspace": [{"device": CPU_DEVICE, "workspace_size_bytes": int(nbytes)}],
        }
        for symbol, nbytes in sorted(kernel_workspace_bytes.items())
    ]
    module = {
        "model_name": model_name,
        "export_datetime": FIXED_EXPORT_DATETIME,
        "executors": ["aot"],
        "style": "full-model",
        "target": [target],
        "memory": {"functions": {"main": [main], "operator_functions": operator_functions}},
    }
    return {"version": MLF_VERSION, "modules": {model_name: module}}
