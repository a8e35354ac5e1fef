"""TIR-as-JSON commands: export-tir, graph, analyze (docs/tir-json.md).

`graph` and `analyze` read only the JSON and never import TVM.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path
from typing import Any

from microexport.cli.options import Command, Option, parse_indent
from microexport.errors import Error, TirJsonError


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise Error(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None


def _write(text: str, output: Path | None, source: Path) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    from microexport.archive.mlf import atomic_write, refuse_overwriting

    refuse_overwriting(output, source)
    atomic_write(output, text.encode())


def _read_tir(path: Path) -> dict[str, Any]:
    from microexport.archive.tir_json.reader import parse

    return parse(_read_text(path), origin=str(path))


def tvmscript_modules(path: Path) -> dict[str, Any]:
    """Run a TVMScript file and take its module-level IRModules, and its PrimFuncs gathered into
    one more IRModule, by variable name. Error if it defines none."""
    import tvm
    from tvm import ir, tirx

    if path.is_dir():
        raise Error(f"{path} is a directory: give a Python file defining TVMScript modules")
    try:
        namespace = runpy.run_path(str(path), run_name="__microexport_export_tir__")
    except FileNotFoundError:
        raise Error(f"cannot read {path}: no such file") from None
    except SystemExit as exit_:
        raise Error(f"{path}: the TVMScript file exited (sys.exit({repr(exit_.code)[:80]})) before "
                    "defining its modules: export-tir runs the file, so put the exit under "
                    "`if __name__ == \"__main__\":`") from None
    except KeyboardInterrupt:
        raise  # Ctrl-C while the script runs: "microexport: interrupted"
    except BaseException as err:  # noqa: BLE001 - the user's script may raise anything
        message = " ".join(str(err).split())[:300]
        raise Error(f"{path}: running the TVMScript file failed: "
                    f"{type(err).__name__}: {message}") from None
    modules = {name: value for name, value in namespace.items()
               if isinstance(value, tvm.IRModule) and not name.startswith("__")}
    funcs = {name: value for name, value in namespace.items()
             if isinstance(value, tirx.PrimFunc) and not name.startswith("__")}
    if funcs:
        modules["functions" if "functions" not in modules else "functions_"] = tvm.IRModule(
            {ir.GlobalVar(name): func for name, func in funcs.items()})
    if not modules:
        raise Error(f"{path} defines no IRModule (@I.ir_module) or PrimFunc (@T.prim_func)")
    return modules


def _target(text: str, host: str) -> Any:
    """A TVM target from a kind (`cuda`) or a JSON config, with `host` as its host target."""
    from tvm.target import Target

    try:
        config = json.loads(text) if text.lstrip().startswith("{") else text
        target = Target(config)
        return target if target.host is not None else Target(config, host=host)
    except (ValueError, TypeError, RuntimeError) as err:
        raise Error(f"bad --target '{text}': {' '.join(str(err).split())[:200]}") from None


def cmd_export_tir(args: argparse.Namespace) -> int:
    from microexport.archive import tir_json

    modules = tvmscript_modules(args.file)
    stage = args.stage
    if args.target is not None:
        from microexport.archive.tir_json.device import lower_for_target

        target = _target(args.target, args.target_host)
        lowered = []
        for mod in modules.values():
            try:
                lowered += lower_for_target(mod, target)
            except (ValueError, TypeError, RuntimeError, AttributeError) as err:
                raise Error(f"lowering for target '{args.target}' failed: "
                            f"{' '.join(str(err).split())[:300]}") from None
        doc = tir_json.to_dict(lowered, stage or "codegen")
    else:
        doc = tir_json.to_dict(modules if len(modules) > 1 else next(iter(modules.values())),
                               stage)
    _write(tir_json.encode(doc, args.indent), args.output, args.file)
    if args.output is not None:
        count = sum(len(m["functions"]) for m in doc["modules"])
        print(f"wrote {args.output}: {len(doc['modules'])} module(s), {count} function(s)",
              file=sys.stderr)
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from microexport.archive.graph import graph_from_tir, graph_json

    doc = _read_tir(args.tir)
    try:
        graph = graph_from_tir(doc, validate=False)
    except TirJsonError as err:  # the document parsed; name the file its JSON path is in
        raise TirJsonError(f"{args.tir}: {err}") from None
    _write(graph_json(graph), args.output, args.tir)
    if args.output is not None:
        print(f"wrote {args.output}: {len(graph['nodes'])} nodes, {len(graph['tensors'])} "
              f"tensors, {len(graph['constants'])} constants", file=sys.stderr)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from microexport.archive.analyze import analyze, format_report

    doc = _read_tir(args.tir)
    try:
        report = analyze(doc, validate=False)
    except TirJsonError as err:
        raise TirJsonError(f"{args.tir}: {err}") from None
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


TIR_FILE = Option(("tir",), "a microexport-tir JSON file (e.g. src/tir-codegen.json of an "
                  "archive)", {"type": Path})
OUTPUT = Option(("-o", "--output"), "file to write (default: standard output)", {"type": Path})

COMMANDS = (
    Command(
        "export-tir",
        "export the TIR of a TVMScript file (@I.ir_module / @T.prim_func) as microexport-tir JSON",
        cmd_export_tir,
        (Option(("file",), "Python file defining an IRModule or PrimFuncs in TVMScript",
                {"type": Path}),),
        (OUTPUT,
         Option(("--stage",), "stage name recorded in the document (default: none, or codegen "
                "with --target)", {}),
         Option(("--target",), "lower for this TVM target first, as tvm.tirx.build would, and "
                "export the host and device modules it hands to code generation: a target kind "
                "(cuda) or a JSON target config ('{\"kind\": \"cuda\", \"arch\": \"sm_80\"}')",
                {}),
         Option(("--target-host",), "host target of --target (default: c)", {"default": "c"}),
         Option(("--indent",), "indent the JSON by this many spaces (default: compact)",
                {"type": parse_indent})),
    ),
    Command(
        "graph",
        "derive the model graph (graph.json) from a microexport-tir document's AOT main",
        cmd_graph,
        (TIR_FILE,),
        (OUTPUT,),
    ),
    Command(
        "analyze",
        "per-kernel loop trip counts, MACs, bytes read/written and scratch bytes of a "
        "microexport-tir document",
        cmd_analyze,
        (TIR_FILE,),
        (Option(("--json",), "print the analysis as JSON", {"action": "store_true"}),),
    ),
)
