"""Differential fuzzing: random ONNX graphs through compile + host run against onnxruntime.

    python bench/fuzz.py --count 2000 --seed 0 [--batch 25] [--jobs 1] [--format tflite]

Graph `i` of a run is `tests/random_models.random_graph(seed + i)`: the same arguments check the
same graphs on every machine. Graphs are compiled `--batch` at a time as one model (a failing
batch is bisected), every output compared with onnxruntime (float32: rtol 1e-4, atol 1e-5).
Batches rotate through the compile-option layouts of `random_models.LAYOUTS` (static or
external workspace, I/O in the workspace, alignments, kernel stack limit, two pools). A failing
graph is shrunk to a small reproducer written as JSON to `--out`
(`<status>-<graph>.json`, loadable with `random_models.Graph.from_json`; copy it to
tests/fuzz_reproducers/ to make it a regression test), and a mismatch is attributed with TVM's
own LLVM build of the same import (`import`: TVM's build agrees with our C; `pipeline`: it
does not). `--out`/summary.json holds every graph's outcome; the result line is appended to
the table of bench/RESULTS.md (`--no-write`: print it only).

`--format tflite` checks `random_models.write_random_tflite` graphs (float32 NHWC: CONV_2D,
DEPTHWISE_CONV_2D, pools, PAD, CONCATENATION, TRANSPOSE, ADD/SUB/MUL with fused activations,
FULLY_CONNECTED, SOFTMAX, float16 weights through DEQUANTIZE) against TFLite Micro (LiteRT where
TFLite Micro cannot run one); a failing one is shrunk to the earliest produced tensor that
still fails (`random_models.shrink_tflite_seed`), its reproducer `{"format": "tflite", "seed":
S, "output_at": N}` (`check_tflite_seeds([S], output_at=N)` is its regression test).

`--format tflite-int8` checks `random_int8_models` models (one per seed: chains of int8 CONV_2D,
DEPTHWISE_CONV_2D, pools, PAD, residual ADD and a FULLY_CONNECTED head, quantized by
ai-edge-quantizer) bit for bit against TFLite Micro; a failing one is shrunk to its fewest layers
and its JSON (`random_int8_models.layers_from_json`; copy it to tests/fuzz_reproducers/int8/)
is the reproducer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import random_int8_models  # noqa: E402
import random_models  # noqa: E402

RESULTS_MD = ROOT / "bench" / "RESULTS.md"
SECTION_BEGIN = "<!-- fuzz:begin -->"
SECTION_END = "<!-- fuzz:end -->"
SECTION_HEAD = """## Differential fuzzing: random graphs against onnxruntime and TFLite Micro

`python bench/fuzz.py --count N --seed S [--format tflite]` (tests/random_models.py: convs,
depthwise, pools, pads, concats, splits, reshapes/views, transposes, slices, reductions,
residual and broadcasting arithmetic, activations, dense heads, float16 and int8 weights,
several outputs; compiled in batches, run on the host, every output compared with onnxruntime
(ONNX) or TFLite Micro (TFLite) at rtol 1e-4, atol 1e-5). *unsupported*: a one-line error of
ours; *mismatch*: wrong outputs (ONNX: attributed with `--reference tvm`, import or pipeline);
*crash*: a traceback or generated C that does not build. Each run appends a row.

"""
COLUMNS = ("format", "graphs", "seeds", "pass", "unsupported", "mismatch (import / pipeline)",
           "crash", "nodes per graph", "minutes", "commit")
TABLE_HEAD = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"


def _check(args: tuple[int, int, int, str, str, int]) -> list[dict[str, Any]]:
    """Outcomes of graphs `first` … `first + count - 1` (run in a worker process)."""
    first, count, shrink_budget, fmt, layout, max_nodes = args
    if fmt == "tflite-int8":
        return [_check_int8(seed, shrink_budget) for seed in range(first, first + count)]
    if fmt == "tflite":
        checked = random_models.check_tflite_seeds(list(range(first, first + count)))
        results = []
        for seed, (status, detail) in checked.items():
            reproducer = None
            if status in ("mismatch", "crash"):
                cut = random_models.shrink_tflite_seed(seed, status)
                reproducer = json.dumps({"format": "tflite", "seed": seed, "output_at": cut})
            results.append({"graph": f"tflite{seed}", "nodes": None, "status": status,
                            "detail": detail, "attribution": "", "reproducer": reproducer})
        return results
    graphs = [random_models.random_graph(seed, max_nodes)
              for seed in range(first, first + count)]
    original = {g.name: g for g in graphs}
    results = []
    for outcome in random_models.check_batch(graphs, shrink_budget=shrink_budget,
                                             layout=layout):
        name = outcome.graph.name
        results.append({
            "graph": name,
            "nodes": len(original[name].nodes),
            "status": outcome.status,
            "detail": outcome.detail,
            "attribution": outcome.attribution,
            "reproducer": outcome.graph.to_json() if outcome.bug else None,
        })
    return results


def _check_int8(seed: int, shrink_budget: int) -> dict[str, Any]:
    """The outcome of the int8 model of `seed`, shrunk when it fails."""
    shape, layers = random_int8_models.random_layers(seed)
    status, detail = random_int8_models.check_layers(shape, layers, seed)
    reproducer = None
    if status in ("mismatch", "crash"):
        def fails(candidate: list[random_int8_models.Layer]) -> bool:
            return random_int8_models.check_layers(shape, candidate, seed)[0] == status

        small = random_int8_models.shrink(shape, layers, fails, shrink_budget)
        reproducer = random_int8_models.layers_to_json(shape, small, seed)
    return {"graph": f"int8-{seed}", "nodes": len(layers), "status": status, "detail": detail,
            "attribution": "", "reproducer": reproducer}


def run(count: int, seed: int, batch: int, jobs: int, shrink_budget: int, fmt: str = "onnx",
        max_nodes: int = 8, verbose: bool = True) -> list[dict[str, Any]]:
    """Check `count` graphs from `seed` on; outcomes in seed order."""
    layouts = random_models.LAYOUTS
    chunks = [(first, min(batch, seed + count - first), shrink_budget, fmt,
               layouts[index % len(layouts)], max_nodes)
              for index, first in enumerate(range(seed, seed + count, batch))]
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for chunk in pool.map(_check, chunks):
            results += chunk
            if verbose:
                for r in chunk:
                    if r["status"] != "pass":
                        print(f"{r['graph']}: {r['status']} {r['attribution']} "
                              f"{r['detail'][:160]}", flush=True)
                print(f"{len(results)}/{count} graphs checked", flush=True)
    return results


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "microexport",
                                "templates"], cwd=ROOT, check=False).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+" if dirty else "")


def result_row(results: list[dict[str, Any]], seed: int, seconds: float, commit: str,
               fmt: str = "onnx") -> str:
    """The markdown table row of one run."""
    by_status = Counter(r["status"] for r in results)
    attributions = Counter(r["attribution"] for r in results if r["status"] == "mismatch")
    counted = [r["nodes"] for r in results if r["nodes"] is not None]
    nodes = f"{sum(counted) / len(counted):.1f}" if counted else "n/a"
    return (f"| {fmt} | {len(results)} | {seed}–{seed + len(results) - 1} | {by_status['pass']} | "
            f"{by_status['unsupported'] + by_status['reference-error']} | "
            f"{by_status['mismatch']} ({attributions['import']} / {attributions['pipeline']}) | "
            f"{by_status['crash']} | {nodes} | {seconds / 60:.1f} | {commit} |")


def append_row(row: str, path: Path = RESULTS_MD) -> None:
    """Append `row` to the fuzzing table of bench/RESULTS.md (creating the section)."""
    text = path.read_text(encoding="utf-8")
    if SECTION_BEGIN not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION_BEGIN}\n{SECTION_HEAD}{TABLE_HEAD}{SECTION_END}\n"
    head, rest = text.split(SECTION_END, 1)
    path.write_text(head.rstrip("\n") + "\n" + row + "\n" + SECTION_END + rest, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="graphs to check (1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first graph (0)")
    parser.add_argument("--batch", type=int, default=25, help="graphs per compilation (25)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (1)")
    parser.add_argument("--shrink-budget", type=int, default=40,
                        help="compilations spent shrinking each failing graph (40)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz",
                        help="directory for summary.json and reproducers (build/fuzz)")
    parser.add_argument("--format", choices=["onnx", "tflite", "tflite-int8"], default="onnx",
                        help="which random graphs (onnx)")
    parser.add_argument("--max-nodes", type=int, default=8,
                        help="operators per ONNX graph, at most about (8, as in the tests)")
    parser.add_argument("--no-write", action="store_true",
                        help="print the result row instead of appending it to bench/RESULTS.md")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    started = time.monotonic()
    results = run(args.count, args.seed, args.batch, args.jobs, args.shrink_budget, args.format,
                  args.max_nodes)
    seconds = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    for r in results:
        if r["reproducer"]:
            (args.out / f"{r['status']}-{r['graph']}.json").write_text(r["reproducer"])
    summary = [{k: v for k, v in r.items() if k != "reproducer"} for r in results]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    row = result_row(results, args.seed, seconds, _commit(), args.format)
    print(row)
    if not args.no_write:
        append_row(row)
    bugs = [r for r in results if r["status"] in ("mismatch", "crash")]
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
