"""Rewrite microexport/archive/tir_json/schema/tir.schema.json from the node table (needs TVM)."""

from __future__ import annotations

from pathlib import Path

from microexport.archive.tir_json.schema_gen import schema_text

SCHEMA = (Path(__file__).resolve().parent.parent
          / "microexport/archive/tir_json/schema/tir.schema.json")

if __name__ == "__main__":
    SCHEMA.write_text(schema_text())
    print(f"wrote {SCHEMA}")
