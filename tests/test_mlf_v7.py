"""The Model Library Format version 7 fields hold what TVM's own MLF readers looked up.

The paths below are facts read from apache/tvm as it was just before microTVM was removed
(commit 513c2be0c3b853a3b77de729f0ea75d448ee3c37, the parent of "[Refactor] Phase out microTVM
(#17554)"); each entry names the file it comes from. `check_tvm_readers` can be applied to a
whole metadata.json as well (the MLF fields are merged into ours).
"""

from __future__ import annotations

import copy
import datetime
import json
import pathlib
from typing import Any

import pytest

from microexport.archive.mlf_v7 import (
    EXPORT_DATETIME_FORMAT,
    FIXED_EXPORT_DATETIME,
    mlf_v7_fields,
)

# A path into metadata.json: keys, list indices, and "*" for every key of a mapping.
Path = tuple[str | int, ...]

# (file in apache/tvm that reads it, path, expected value or None for "must exist").
READER_PATHS: list[tuple[str, Path, Any]] = [
    # Arduino project generator, _template_model: every module must be a full model, and the
    # workspace of main on the first device sizes the CRT workspace (TVM_WORKSPACE_SIZE_BYTES).
    ("apps/microtvm/arduino/template_project/microtvm_api_server.py",
     ("modules", "*", "style"), "full-model"),
    ("apps/microtvm/arduino/template_project/microtvm_api_server.py",
     ("modules", "*", "memory", "functions", "main", 0, "workspace_size_bytes"), None),
    # Test helper mlf_extract_workspace_size_bytes: sums the same field over all modules.
    ("python/tvm/micro/testing/utils.py",
     ("modules", "*", "memory", "functions", "main", 0, "workspace_size_bytes"), None),
    # tvmc TVMCPackage.import_package: exactly one module; its executors list holds one entry,
    # the executor type ("graph" in it means an executor-config/graph/<m>.graph file).
    ("python/tvm/driver/tvmc/model.py", ("modules", "*", "executors"), ["aot"]),
    ("python/tvm/driver/tvmc/model.py", ("modules", "*", "executors", 0), "aot"),
    # The MLF exporter reads back main[0] to write the C interface header: the workspace size
    # and each input's and output's size (for the TVMGEN_<M>_<TENSOR>_SIZE macros).
    ("python/tvm/micro/model_library_format.py",
     ("modules", "*", "memory", "functions", "main", 0, "workspace_size_bytes"), None),
    ("python/tvm/micro/model_library_format.py",
     ("modules", "*", "memory", "functions", "main", 0, "inputs", "*", "size"), None),
    ("python/tvm/micro/model_library_format.py",
     ("modules", "*", "memory", "functions", "main", 0, "outputs", "*", "size"), None),
    # TVM's own test of the exporter: the version, the module's name, the target list, the
    # exact keys of main's entry and of each operator function's workspace entry.
    ("tests/python/micro/test_micro_model_library_format.py", ("version",), 7),
    ("tests/python/micro/test_micro_model_library_format.py",
     ("modules", "*", "model_name"), None),
    ("tests/python/micro/test_micro_model_library_format.py",
     ("modules", "*", "export_datetime"), None),
    ("tests/python/micro/test_micro_model_library_format.py", ("modules", "*", "target"), None),
    ("tests/python/micro/test_micro_model_library_format.py",
     ("modules", "*", "memory", "functions", "operator_functions", 0, "function_name"), None),
    ("tests/python/micro/test_micro_model_library_format.py",
     ("modules", "*", "memory", "functions", "operator_functions", 0, "workspace", 0, "device"),
     1),
]

# From tests/python/micro/test_micro_model_library_format.py: the keys of main's entry per
# device, and of a tensor in its inputs/outputs; and modules.<m>.export_datetime's format
# ("%Y-%m-%d %H:%M:%SZ", written by python/tvm/micro/model_library_format.py).
MAIN_ENTRY_KEYS = {"constants_size_bytes", "device", "inputs", "io_size_bytes", "outputs",
                   "workspace_size_bytes"}
TENSOR_KEYS = {"dtype", "size"}
OPERATOR_WORKSPACE_KEYS = {"device", "workspace_size_bytes"}
# From python/tvm/micro/model_library_format.py (_export_graph_model_library_format): the keys
# of a full-model module; external_dependencies only with the bundled CRT, which we do not ship.
MODULE_KEYS = {"model_name", "export_datetime", "memory", "target", "executors", "style"}


def resolve(document: Any, path: Path) -> list[Any]:
    """Every value at `path` ("*" fans out over a mapping's values); KeyError/IndexError if a
    step is missing, as it would be for the reader."""
    values = [document]
    for step in path:
        if step == "*":
            values = [v for value in values for v in value.values()]
            if not values:
                raise KeyError(f"no entries at {path}")
        else:
            values = [value[step] for value in values]
    return values


def check_tvm_readers(metadata: dict[str, Any]) -> None:
    """Assert that every path TVM's MLF readers used exists in `metadata` with a usable value."""
    for source, path, expected in READER_PATHS:
        for value in resolve(metadata, path):
            if expected is not None:
                assert value == expected, (source, path, value)
    assert len(metadata["modules"]) == 1  # tvmc and the STM32 emitter refuse more
    for module in metadata["modules"].values():
        assert set(module) == MODULE_KEYS
        assert isinstance(module["target"], list)
        assert all(isinstance(t, str) for t in module["target"])
        datetime.datetime.strptime(module["export_datetime"], EXPORT_DATETIME_FORMAT)
        for main in module["memory"]["functions"]["main"]:
            assert set(main) == MAIN_ENTRY_KEYS
            for key in ("workspace_size_bytes", "constants_size_bytes", "io_size_bytes"):
                assert isinstance(main[key], int) and main[key] >= 0
            for tensor in (*main["inputs"].values(), *main["outputs"].values()):
                assert set(tensor) == TENSOR_KEYS and isinstance(tensor["size"], int)
        for function in module["memory"]["functions"]["operator_functions"]:
            assert set(function) == {"function_name", "workspace"}
            for entry in function["workspace"]:
                assert set(entry) == OPERATOR_WORKSPACE_KEYS


def _fields(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "model_name": "kws",
        "target": "c",
        "workspace_bytes": 10240,
        "constants_bytes": 20480,
        "io_bytes": 1976,
        "kernel_workspace_bytes": {"tvmgen_kws_fused_dense": 0,
                                   "tvmgen_kws_fused_conv2d_add_relu": 512},
        "inputs": [{"name": "input:0", "c_name": "input_0", "dtype": "float32",
                    "shape": [1, 49, 10], "size_bytes": 1960}],
        "outputs": [{"name": "probs", "c_name": "probs", "dtype": "float32", "shape": [1, 4],
                     "size_bytes": 16}],
    }
    arguments.update(overrides)
    return mlf_v7_fields(**arguments)


def test_tvm_readers_find_their_fields() -> None:
    check_tvm_readers(_fields())


def test_values_map_our_record() -> None:
    fields = _fields()
    assert set(fields) == {"version", "modules"}
    module = fields["modules"]["kws"]
    assert module["model_name"] == "kws"
    assert module["target"] == ["c"]
    assert module["executors"] == ["aot"] and module["style"] == "full-model"
    (main,) = module["memory"]["functions"]["main"]
    assert main == {
        "device": 1,
        "workspace_size_bytes": 10240,
        "constants_size_bytes": 20480,
        "io_size_bytes": 1976,
        "inputs": {"input:0": {"size": 1960, "dtype": "float32"}},
        "outputs": {"probs": {"size": 16, "dtype": "float32"}},
    }
    assert module["memory"]["functions"]["operator_functions"] == [
        {"function_name": "tvmgen_kws_fused_conv2d_add_relu",
         "workspace": [{"device": 1, "workspace_size_bytes": 512}]},
        {"function_name": "tvmgen_kws_fused_dense",
         "workspace": [{"device": 1, "workspace_size_bytes": 0}]},
    ]


def test_deterministic_and_json() -> None:
    first, second = _fields(), _fields()
    assert first == second
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert json.loads(json.dumps(first)) == first
    assert first["modules"]["kws"]["export_datetime"] == FIXED_EXPORT_DATETIME
    stamp = datetime.datetime.strptime(FIXED_EXPORT_DATETIME, EXPORT_DATETIME_FORMAT)
    assert stamp == datetime.datetime(1970, 1, 1)


def test_merges_into_our_metadata_without_clobbering() -> None:
    ours = {"microexport_format": 2, "model_name": "kws", "target": "c",
            "memory": {"workspace_bytes": 10240}, "inputs": [], "outputs": []}
    merged = copy.deepcopy(ours)
    fields = _fields()
    merged.update(fields)
    assert {k: merged[k] for k in ours} == ours
    check_tvm_readers(merged)


def test_no_kernels_and_several_outputs() -> None:
    fields = _fields(kernel_workspace_bytes={}, outputs=[
        {"name": "a", "dtype": "int8", "size_bytes": 4},
        {"name": "b", "dtype": "int32", "size_bytes": 8},
    ])
    module = fields["modules"]["kws"]
    assert module["memory"]["functions"]["operator_functions"] == []
    assert list(module["memory"]["functions"]["main"][0]["outputs"]) == ["a", "b"]


@pytest.mark.parametrize("overrides", [
    {"workspace_bytes": -1},
    {"kernel_workspace_bytes": {"k": -4}},
    {"inputs": [{"name": "x", "dtype": "float32", "size_bytes": 4}] * 2},
])
def test_bad_arguments(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _fields(**overrides)


def test_a_compiled_archive_reads_like_tvms_mlf(tmp_path: pathlib.Path) -> None:
    """The archive `compile` writes: `./metadata.json` as TVM's MLF tar named it (its test helper
    `mlf_extract_workspace_size_bytes` looks it up by that name) and every field TVM's readers
    used, with the workspace size the record planned."""
    import tarfile

    from fixture_model import fixture_files, fixture_model

    from microexport.archive.mlf import write_archive

    archive = tmp_path / "fixture.tar"
    write_archive(archive, fixture_files())
    with tarfile.open(archive, "r:*") as tar:
        assert "./metadata.json" in tar.getnames()
        metadata = json.load(tar.extractfile("./metadata.json"))  # type: ignore[arg-type]
    check_tvm_readers(metadata)
    (module,) = metadata["modules"].values()
    main = module["memory"]["functions"]["main"][0]
    assert main["workspace_size_bytes"] == fixture_model().memory.workspace_bytes
