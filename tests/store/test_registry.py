"""Registry loading and validation, the bundled registry, field texts and weights, protocols."""

from __future__ import annotations

import copy
import json

import pytest

from embedshare.registry import (
    FIELDS,
    Registry,
    RegistryError,
    Tool,
    field_texts,
    field_weights,
    load_registry,
    parse_registry,
)

pytestmark = pytest.mark.timeout(60)


def _tool(name: str, **extra) -> dict:
    tool = {
        "name": name,
        "description": f"{name.replace('_', ' ')} does something useful",
        "parameters": [
            {"name": "path", "type": "string", "description": "where", "required": True},
            {"name": "limit", "type": "integer", "description": "how many", "required": False, "default": 10},
        ],
        "returns": [{"name": "result", "type": "string", "description": "the result"}],
        "errors": [{"code": "NOT_FOUND", "description": "nothing there"}],
        "metadata": {"category": "file_operations", "operation": "read", "version": "1.0"},
    }
    tool.update(extra)
    return tool


DIFF = {
    "unique_purpose": "the only tool that reads csv",
    "key_differentiators": ["streams rows", "detects delimiters"],
    "usage_keywords": ["csv", "spreadsheet"],
    "avoid_keywords": ["json"],
    "example_scenario": "load a sales export",
}


# -- loading ------------------------------------------------------------------------------------


def test_dict_and_list_registries_load_the_same_tools():
    tools = [_tool("read_csv", differentiation=DIFF), _tool("write_csv")]
    as_list = load_registry(copy.deepcopy(tools))
    as_dict = load_registry({t["name"]: {k: v for k, v in t.items() if k != "name"} for t in copy.deepcopy(tools)})
    for reg in (as_list, as_dict):
        assert isinstance(reg, Registry)
        assert len(reg) == 2
        assert [t.name for t in reg.tools] == ["read_csv", "write_csv"]
        assert reg.tools[0].category == "file_operations"
        assert reg.tools[0].differentiation == DIFF
        assert reg.tools[1].differentiation is None
        assert set(reg.by_name()) == {"read_csv", "write_csv"}
    # the name of a dict entry comes from its key; same content, same hash
    assert as_dict.tools[0].raw["name"] == "read_csv"
    assert as_list.content_hash == as_dict.content_hash


def test_load_from_file(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"read_csv": _tool("read_csv")}))
    reg = load_registry(path)
    assert [t.name for t in reg.tools] == ["read_csv"]
    assert reg.source == str(path)
    assert load_registry(str(path)).content_hash == reg.content_hash


def test_unknown_fields_are_kept():
    tool = _tool("read_csv", x_custom={"owner": "team-a"}, aliases=["csv_reader"])
    tool["parameters"][0]["x_param_extra"] = 1
    reg = load_registry([tool])
    raw = reg.tools[0].raw
    assert raw["x_custom"] == {"owner": "team-a"}
    assert raw["aliases"] == ["csv_reader"]
    assert raw["parameters"][0]["x_param_extra"] == 1


def test_category_defaults():
    tool = _tool("t")
    del tool["metadata"]
    assert load_registry([tool]).tools[0].category == "uncategorized"
    assert load_registry([{**tool, "category": "network"}]).tools[0].category == "network"


def test_content_hash_is_stable_and_tracks_content():
    tools = [_tool("a"), _tool("b", differentiation=DIFF)]
    h = load_registry(copy.deepcopy(tools)).content_hash
    assert h == load_registry(copy.deepcopy(tools)).content_hash
    # key order inside a tool does not matter
    reordered = [dict(reversed(list(t.items()))) for t in copy.deepcopy(tools)]
    assert load_registry(reordered).content_hash == h

    changed = copy.deepcopy(tools)
    changed[1]["description"] += "!"
    assert load_registry(changed).content_hash != h
    changed = copy.deepcopy(tools)
    changed[0]["parameters"][1]["default"] = 11
    assert load_registry(changed).content_hash != h
    changed = copy.deepcopy(tools)
    changed[1]["differentiation"]["usage_keywords"].append("tsv")
    assert load_registry(changed).content_hash != h
    assert load_registry(copy.deepcopy(tools[:1])).content_hash != h


# -- validation errors ---------------------------------------------------------------------------


def _error(data) -> str:
    with pytest.raises(RegistryError) as info:
        parse_registry(data, origin="reg.json")
    message = str(info.value)
    assert "reg.json" in message
    return message


def _without(tool: dict, key: str) -> dict:
    return {k: v for k, v in tool.items() if k != key}


def test_missing_name_names_position_and_field():
    message = _error([_tool("ok"), _without(_tool("x"), "name")])
    assert "tool #1" in message and "'name'" in message and "missing" in message


def test_empty_name():
    message = _error([_tool("ok"), {**_tool("x"), "name": "  "}])
    assert "'name'" in message and "non-empty string" in message


def test_missing_description():
    message = _error([_tool("ok"), _without(_tool("read_csv"), "description")])
    assert "'read_csv'" in message and "'description'" in message and "missing" in message


def test_description_not_a_string():
    message = _error([{**_tool("read_csv"), "description": 42}])
    assert "'read_csv'" in message and "'description'" in message and "string" in message


def test_parameters_not_a_list():
    message = _error([{**_tool("read_csv"), "parameters": {"path": "string"}}])
    assert "'read_csv'" in message and "'parameters'" in message and "array" in message


def test_parameter_without_name():
    tool = _tool("read_csv")
    del tool["parameters"][1]["name"]
    message = _error([tool])
    assert "'read_csv'" in message and "parameters[1].name" in message


def test_required_not_bool():
    tool = _tool("read_csv")
    tool["parameters"][0]["required"] = "yes"
    message = _error([tool])
    assert "'read_csv'" in message and "parameters[0].required" in message and "boolean" in message


def test_duplicate_names():
    message = _error([_tool("read_csv"), _tool("other"), _tool("read_csv")])
    assert "'read_csv'" in message and "duplicate" in message


def test_dict_key_differs_from_name():
    message = _error({"read_csv": _tool("write_csv")})
    assert "'read_csv'" in message and "'write_csv'" in message and "'name'" in message


def test_dict_entry_not_an_object():
    message = _error({"read_csv": ["not", "an", "object"]})
    assert "'read_csv'" in message and "object" in message


@pytest.mark.parametrize("keywords", ["csv", [1, 2], ["csv", None]])
def test_usage_keywords_not_list_of_strings(keywords):
    diff = {**DIFF, "usage_keywords": keywords}
    message = _error([_tool("read_csv", differentiation=diff)])
    assert "'read_csv'" in message and "differentiation.usage_keywords" in message
    assert "array of strings" in message


def test_empty_registry():
    assert "no tools" in _error([])
    assert "no tools" in _error({})


@pytest.mark.parametrize("data, kind", [("tools", "string"), (3, "int"), (None, "null"), (True, "boolean")])
def test_top_level_must_be_object_or_list(data, kind):
    message = _error(data)
    assert "object or list" in message and kind in message


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "read_csv": {\n    "description": "x",,\n  }\n}\n')
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message and "column 24" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert "not found" in str(info.value) and str(path) in str(info.value)


# -- the bundled registry ---------------------------------------------------------------------------


def test_bundled_registry():
    reg = load_registry("bundled")
    assert len(reg) >= 60
    assert len({t.category for t in reg.tools}) >= 8
    with_diff = [t for t in reg.tools if t.differentiation]
    assert len(with_diff) * 3 >= len(reg)
    for tool in reg.tools:
        assert tool.parameters, tool.name
        assert tool.raw.get("returns"), tool.name
        assert tool.raw.get("errors"), tool.name
        assert tool.category != "uncategorized", tool.name
        texts = field_texts(tool)
        assert ("differentiation" in texts) == bool(tool.differentiation), tool.name


# -- field texts and weights ------------------------------------------------------------------------


def test_field_texts_and_weights_without_differentiation():
    tool = load_registry([_tool("read_csv")]).tools[0]
    texts = field_texts(tool)
    assert set(texts) == {"description", "parameters", "functionality"}
    assert all(isinstance(v, str) and v.strip() for v in texts.values())
    assert "read csv" in texts["description"] and tool.description in texts["description"]
    assert "path" in texts["parameters"] and "limit" in texts["parameters"]
    assert "file operations" in texts["functionality"] and "the result" in texts["functionality"]
    weights = field_weights(texts)
    assert weights == {"description": 0.4, "parameters": 0.3, "functionality": 0.3}
    assert sum(weights.values()) == pytest.approx(1.0)
    assert set(weights) <= set(FIELDS)


def test_field_texts_and_weights_with_differentiation():
    tool = load_registry([_tool("read_csv", differentiation=DIFF)]).tools[0]
    texts = field_texts(tool)
    assert set(texts) == {"description", "parameters", "functionality", "differentiation"}
    diff_text = texts["differentiation"]
    for piece in ("the only tool that reads csv", "streams rows", "spreadsheet", "load a sales export"):
        assert piece in diff_text
    weights = field_weights(texts)
    assert weights == {"description": 0.25, "parameters": 0.2, "functionality": 0.25, "differentiation": 0.3}
    assert sum(weights.values()) == pytest.approx(1.0)


def test_tool_without_parameters_still_has_a_parameters_text():
    tool = load_registry([_without(_tool("ping"), "parameters")]).tools[0]
    assert tool.parameters == []
    assert "no parameters" in field_texts(tool)["parameters"]


def test_protocol_is_json_schema():
    tool = load_registry([_tool("read_csv", differentiation=DIFF)]).tools[0]
    assert isinstance(tool, Tool)
    protocol = tool.protocol()
    assert protocol["name"] == "read_csv"
    assert protocol["description"] == tool.description
    schema = protocol["inputSchema"]
    assert schema["type"] == "object"
    assert schema["properties"] == {
        "path": {"type": "string", "description": "where"},
        "limit": {"type": "integer", "description": "how many", "default": 10},
    }
    assert schema["required"] == ["path"]
    assert protocol["returns"] == tool.raw["returns"]
    assert protocol["errors"] == tool.raw["errors"]
    json.dumps(protocol)  # serialisable as is


def test_protocol_of_tool_without_parameters():
    tool = load_registry([_without(_tool("ping"), "parameters")]).tools[0]
    assert tool.protocol()["inputSchema"] == {"type": "object", "properties": {}, "required": []}
