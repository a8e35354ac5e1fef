"""Host and device modules of a TIR module, as TVM's `tirx.build` hands them to code generation.

`tvm.tirx.build(mod, target)` binds the target, runs the default TIR pipeline, splits the result
into a host module and one module per device target, finalizes each and generates code.
`lower_for_target` does the same up to, not including, code generation, so the JSON export can
show exactly what each code generator receives (e.g. `Target("cuda", host="c")`, which works
without a GPU).
"""

from __future__ import annotations

import sys

import tvm
from tvm.target import Target


def lower_for_target(mod: tvm.IRModule, target: str | Target) -> list[tvm.IRModule]:
    """The finalized host module and device modules (sorted by target) of `mod` for `target`."""
    build = sys.modules["tvm.tirx.build"]  # `tvm.tirx.build` the attribute is the function
    target = Target(target)
    host = target.host if target.host is not None else Target("c")
    mod = tvm.tirx.transform.BindTarget(target.with_host(host))(mod)
    pipeline, finalize_host, finalize_device = tvm.tirx.get_default_tir_pipeline(target)
    host_mod, device_mods = build.split_host_device_mods(pipeline(mod))
    modules = [finalize_host()(host_mod)]
    for _, device_mod in sorted(device_mods.items(), key=lambda item: str(item[0])):
        if len(device_mod.functions):
            modules.append(finalize_device()(device_mod))
    return modules
