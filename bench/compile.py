"""Compile time per zoo model: import + lower + plan + codegen + glue + archive.

    python bench/compile.py

The first model also pays one-time start-up costs (frontend and TVM function registries).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import build, markdown_table, zoo_names

import microexport


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in zoo_names():
            work = Path(tmp) / name
            work.mkdir()
            path, shapes = build(name, work)
            start = time.perf_counter()
            result = microexport.compile(path, work / "m.tar", name=name, input_shapes=shapes)
            seconds = time.perf_counter() - start
            kernels = len(result.model.kernels)
            rows.append([name, path.suffix, kernels, f"{seconds:.2f}"])
    print(markdown_table(["model", "format", "kernels", "compile s"], rows))


if __name__ == "__main__":
    main()
