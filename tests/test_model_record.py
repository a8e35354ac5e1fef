"""The compiled-model record: metadata.json written from it, read back through the shipped JSON
Schema, and every hand-edited or corrupt metadata.json a one-line error before it reaches C."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixture_model import fixture_files, fixture_model

from microexport import __version__
from microexport.archive import mlf
from microexport.archive.mlf import ArchiveLayout, extract_archive, read_model, write_archive
from microexport.errors import Error
from microexport.model import METADATA_FORMAT, CompiledModel, metadata_schema


def test_metadata_fields() -> None:
    metadata = mlf.metadata(fixture_model("external"))
    assert metadata["microexport_format"] == METADATA_FORMAT == 2
    assert metadata["model_name"] == "fixture"
    assert (metadata["executor"], metadata["interface_api"], metadata["unpacked_api"]) == (
        "aot", "c", True)
    assert metadata["workspace_mode"] == "external"
    assert metadata["microexport_version"] == __version__
    assert metadata["inputs"][0] == {
        "name": "x:0", "c_name": "x_0", "shape": [2, 3], "dtype": "float32", "size_bytes": 24}
    assert metadata["memory"] == {
        "workspace_bytes": 32, "constants_bytes": 32, "io_bytes": 80, "alignment": 16,
        "functions": {"tvmgen_fixture_double": {"workspace_bytes": 24, "stack_bytes": 0}},
        "io_in_workspace": False, "lower_bound_bytes": 0, "planner": "",
        "pools": [{"name": "workspace", "bytes": 32, "size_limit": None, "section": None}],
    }
    assert metadata["functions"]["main"]["symbol"] == "tvmgen_fixture___tvm_main__"
    assert metadata["functions"]["main"]["params"][0] == {"name": "x_0", "ctype": "float*"}
    assert metadata["version"] == 7  # Model Library Format
    assert mlf.metadata(fixture_model("external")) == metadata  # no timestamps


def test_metadata_json_is_sorted_and_indented() -> None:
    text = mlf.metadata_json(fixture_model()).decode()
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("mode", ["static", "external"])
def test_record_round_trips_through_metadata_json(mode: str) -> None:
    model = fixture_model(mode)
    assert CompiledModel.from_json(mlf.metadata_json(model), "m") == model


def test_written_metadata_passes_the_shipped_schema() -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(metadata_schema())
    jsonschema.validate(mlf.metadata(fixture_model()), metadata_schema())


def test_read_model_from_archive_and_directory(tmp_path: Path) -> None:
    path = tmp_path / "m.tar"
    write_archive(path, fixture_files())
    assert read_model(path) == fixture_model()
    assert read_model(extract_archive(path, tmp_path / "x")) == fixture_model()


def test_symbols_come_from_the_record() -> None:
    symbols = fixture_model().symbols
    assert symbols["tvmgen_fixture_constant_pool"] == "constants"
    assert symbols["tvmgen_fixture_workspace_pool"] == "workspace"
    assert symbols["tvmgen_fixture___tvm_main__"] == "code"
    assert symbols["tvmgen_fixture_double"] == "code"
    assert "tvmgen_fixture_workspace_pool" not in fixture_model("external").symbols


# --- hand-edited metadata.json --------------------------------------------------------------

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(metadata: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = metadata
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


def _delete(path: str) -> Edit:
    def edit(metadata: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = metadata
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]
    return edit


BAD_EDITS: dict[str, tuple[Edit, str]] = {
    "c_name injection": (_set("inputs.0.c_name", "x; int evil"), r"\$\.inputs\[0\]\.c_name"),
    "model name injection": (_set("model_name", "m(); int x"), r"\$\.model_name"),
    "pool name injection": (_set("memory.pools.0.name", "w[1]"), r"memory\.pools\[0\]\.name"),
    "section injection": (_set("memory.pools.0.section", '.x"))); int y'), r"section"),
    "param injection": (_set("functions.main.params.0.name", "a, int b"), r"params\[0\]\.name"),
    "ctype injection": (_set("functions.main.params.0.ctype", "float) {"), r"ctype"),
    "shape is a string": (_set("inputs.0.shape", "2x3"), r"\$\.inputs\[0\]\.shape"),
    "dims negative": (_set("inputs.0.shape", [-1, 3]), r"shape\[0\]"),
    "size_bytes wrong": (_set("inputs.0.size_bytes", 25), "size_bytes 25 does not match"),
    "dtype unknown": (_set("outputs.0.dtype", "float8_e4m3fn"), r"\$\.outputs\[0\]\.dtype"),
    "workspace as string": (_set("memory.workspace_bytes", "32"), "workspace_bytes"),
    "pools do not add up": (_set("memory.workspace_bytes", 64), "total of the workspace pools"),
    "missing inputs": (_delete("inputs"), "'inputs' is a required property"),
    "missing memory": (_delete("memory"), "'memory' is a required property"),
    "missing functions": (_delete("functions"), "'functions' is a required property"),
    "no outputs": (_set("outputs", []), r"\$\.outputs"),
    "unknown key": (_set("inputs.0.evil", 1), "Additional properties"),
    "alignment not a power of two": (_set("memory.alignment", 12), "power of two"),
    "constant outside the pool": (_set("constants.1.offset", 30), "outside the 32 B"),
    "kernels disagree": (_set("memory.functions", {}), "name different kernels"),
    "huge number": (_set("memory.io_bytes", 10**40), "io_bytes"),
    "old format": (_set("microexport_format", 1), "format 1 is not supported"),
    "workspace mode": (_set("workspace_mode", "heap"), "workspace_mode"),
    "main of another model": (_set("functions.main.symbol", "tvmgen_other___tvm_main__"),
                              "starting with 'tvmgen_fixture_'"),
    "c_name with a trailing newline": (_set("inputs.0.c_name", "x_0\n"),
                                       r"C name 'x_0\\n'"),
    "model name with a trailing newline": (_set("model_name", "fixture\n"),
                                           r"model name 'fixture\\n'"),
    "section with a newline": (_set("memory.pools.0.section", ".sram\n"), "section"),
    "section not ASCII": (_set("memory.pools.0.section", ".sram\u00e9"), "section"),
    "pool named constant": (_set("memory.pools.0.name", "constant"), "'constant'"),
    "pools differing in case": (lambda m: m["memory"]["pools"].append(
        {"name": "WORKSPACE", "bytes": 0, "size_limit": None, "section": None}),
                                "also in case"),
    "tensor macro clashes with a pool's": (_set("inputs.0.c_name", "workspace_pool"),
                                           "WORKSPACE_POOL_SIZE"),
    "main lacks the workspace": (lambda m: m["functions"]["main"]["params"].pop(),
                                 "does not take the model's inputs, outputs and pools"),
    "main takes another type": (_set("functions.main.params.0.ctype", "int8_t*"),
                                "does not take the model's inputs"),
    "io_bytes wrong": (_set("memory.io_bytes", 0), "io_bytes is 0"),
    "placement outside pool": (lambda m: (m["inputs"][0].update(workspace_pool="workspace",
                                                                workspace_offset=1000),
                                          m["memory"].update(io_in_workspace=True)),
                               "needs a placement"),
}


@pytest.mark.parametrize("case", sorted(BAD_EDITS))
def test_hand_edited_metadata_is_one_line_error(case: str) -> None:
    edit, message = BAD_EDITS[case]
    metadata = copy.deepcopy(mlf.metadata(fixture_model()))
    edit(metadata)
    with pytest.raises(Error) as info:
        CompiledModel.from_json(json.dumps(metadata).encode(), "m.tar")
    text = info.value.one_line()
    assert text.startswith("m.tar: "), text
    assert re.search(message, text), text
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
        (b'{"microexport_format": 99}', "format 99 is not supported"),
        (b'{"version": 1}', "format None is not supported"),
    ],
)
def test_bad_metadata_file_is_an_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "m.tar"
    write_archive(path, {ArchiveLayout.METADATA: content})
    with pytest.raises(Error, match=message):
        read_model(path)


def test_archive_without_metadata_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.tar"
    write_archive(path, {"x.txt": b""})
    with pytest.raises(Error, match="not a microexport archive"):
        read_model(path)
