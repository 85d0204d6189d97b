"""Load and validate an MCP tool registry.

A registry is a JSON object keyed by tool name (``{"read_csv": {...}}``) or a list of tool
objects each with a ``name``. Every error names the tool and the field that is wrong, and
invalid JSON names its line and column. Fields we do not know are kept as they are.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RegistryError
from ..util.digests import sha256


@dataclass(frozen=True)
class Tool:
    """One tool, validated. ``raw`` is the tool's JSON object with every field it had."""

    name: str
    description: str
    category: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def parameters(self) -> list[dict[str, Any]]:
        return self.raw.get("parameters") or []

    @property
    def differentiation(self) -> dict[str, Any] | None:
        return self.raw.get("differentiation") or None

    def protocol(self) -> dict[str, Any]:
        """The tool's MCP protocol: name, description and a JSON-Schema ``inputSchema``."""
        return tool_protocol(self.raw)


def tool_protocol(raw: dict[str, Any]) -> dict[str, Any]:
    """The MCP protocol of a (validated) tool's JSON: name, description, ``inputSchema``."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in raw.get("parameters") or []:
        prop: dict[str, Any] = {"type": param.get("type", "string")}
        if param.get("description"):
            prop["description"] = param["description"]
        if "default" in param:
            prop["default"] = param["default"]
        properties[param["name"]] = prop
        if param.get("required"):
            required.append(param["name"])
    protocol: dict[str, Any] = {
        "name": raw["name"],
        "description": raw["description"],
        "inputSchema": {"type": "object", "properties": properties, "required": required},
    }
    for key in ("returns", "errors"):
        if raw.get(key):
            protocol[key] = raw[key]
    return protocol


@dataclass(frozen=True)
class Registry:
    """A validated registry: tools in a stable order, and a hash of its content."""

    tools: tuple[Tool, ...]
    content_hash: str
    source: str

    def __len__(self) -> int:
        return len(self.tools)

    def by_name(self) -> dict[str, Tool]:
        return {tool.name: tool for tool in self.tools}


BUNDLED_REGISTRY = "bundled"


def bundled_registry_path() -> Path:
    """The example registry shipped in the package (see ``registry/data/tools.json``)."""
    return Path(__file__).parent / "data" / "tools.json"


def load_registry(source: str | Path | list[Any] | dict[str, Any]) -> Registry:
    """Load a registry from a file path, ``"bundled"``, or already-parsed JSON data."""
    if isinstance(source, (list, dict)):
        return parse_registry(source, origin="<data>")
    if str(source) == BUNDLED_REGISTRY:
        source = bundled_registry_path()
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(f"registry file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"cannot read registry {path}: {exc}") from None
    repeated: list[tuple[str, dict[str, Any]]] = []  # (key, the object that repeats it)
    try:
        data = json.loads(text, object_pairs_hook=functools.partial(_note_repeated_keys, repeated))
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise RegistryError(f"{path}: invalid JSON: nested too deeply (a registry is a few levels deep)") from None
    if repeated:
        key, holder = repeated[0]
        what = "tool" if holder is data else "field"
        raise RegistryError(f"{path}: {what} {key!r} is given twice in one object (JSON would keep the last)")
    return parse_registry(data, origin=str(path))


def _note_repeated_keys(repeated: list[tuple[str, dict[str, Any]]], pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json``'s ``object_pairs_hook``: note each key given twice in one object.

    A plain ``json.loads`` keeps the last of them silently: an object-form registry that
    named a tool twice lost a tool, and a tool that repeated a field lost its first value.
    """
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            repeated.append((key, out))
        out[key] = value
    return out


def parse_registry(data: Any, origin: str = "<data>") -> Registry:
    """Validate parsed JSON and return a :class:`Registry`."""
    if isinstance(data, dict):
        entries = []
        for key, value in data.items():
            if not isinstance(value, dict):
                raise RegistryError(f"{origin}: tool {key!r}: must be an object, got {_kind(value)}")
            if "name" in value and value["name"] != key:
                raise RegistryError(
                    f"{origin}: tool {key!r}: field 'name' is {value['name']!r}, but the registry key is {key!r}"
                )
            entries.append({**value, "name": key})
    elif isinstance(data, list):
        entries = data
    else:
        raise RegistryError(f"{origin}: a registry must be a JSON object or list, got {_kind(data)}")
    if not entries:
        raise RegistryError(f"{origin}: the registry has no tools")

    tools: list[Tool] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        tool = _parse_tool(entry, position, origin)
        if tool.name in seen:
            raise RegistryError(f"{origin}: tool {tool.name!r}: duplicate name")
        seen.add(tool.name)
        tools.append(tool)

    canonical = json.dumps([t.raw for t in tools], sort_keys=True, ensure_ascii=False)
    content_hash = sha256(canonical.encode("utf-8")).hexdigest()
    return Registry(tools=tuple(tools), content_hash=content_hash, source=origin)


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _parse_tool(entry: Any, position: int, origin: str) -> Tool:
    if not isinstance(entry, dict):
        raise RegistryError(f"{origin}: tool #{position}: must be an object, got {_kind(entry)}")
    name = entry.get("name")
    label = f"tool {name!r}" if isinstance(name, str) and name else f"tool #{position}"

    def fail(field_name: str, problem: str) -> RegistryError:
        return RegistryError(f"{origin}: {label}: field {field_name!r} {problem}")

    if "name" not in entry:
        raise fail("name", "is missing")
    if not isinstance(name, str) or not name.strip():
        raise fail("name", f"must be a non-empty string, got {_kind(name)}")
    if "description" not in entry:
        raise fail("description", "is missing")
    if not isinstance(entry["description"], str) or not entry["description"].strip():
        raise fail("description", f"must be a non-empty string, got {_kind(entry['description'])}")

    metadata = entry.get("metadata", {})
    if not isinstance(metadata, dict):
        raise fail("metadata", f"must be an object, got {_kind(metadata)}")
    for key in ("category", "operation", "version"):
        if key in metadata and not isinstance(metadata[key], str):
            raise fail(f"metadata.{key}", f"must be a string, got {_kind(metadata[key])}")

    parameters = entry.get("parameters", [])
    if not isinstance(parameters, list):
        raise fail("parameters", f"must be an array, got {_kind(parameters)}")
    for i, param in enumerate(parameters):
        where = f"parameters[{i}]"
        if not isinstance(param, dict):
            raise fail(where, f"must be an object, got {_kind(param)}")
        if not isinstance(param.get("name"), str) or not param["name"]:
            raise fail(f"{where}.name", "must be a non-empty string")
        for key in ("type", "description"):
            if key in param and not isinstance(param[key], str):
                raise fail(f"{where}.{key}", f"must be a string, got {_kind(param[key])}")
        if "required" in param and not isinstance(param["required"], bool):
            raise fail(f"{where}.required", f"must be a boolean, got {_kind(param['required'])}")

    for key in ("returns", "errors", "aliases", "dependencies"):
        if key in entry and not isinstance(entry[key], list):
            raise fail(key, f"must be an array, got {_kind(entry[key])}")
    for i, err in enumerate(entry.get("errors", [])):
        if not isinstance(err, dict):
            raise fail(f"errors[{i}]", f"must be an object, got {_kind(err)}")
    for i, alias in enumerate(entry.get("aliases", [])):
        if not isinstance(alias, str):
            raise fail(f"aliases[{i}]", f"must be a string, got {_kind(alias)}")

    diff = entry.get("differentiation")
    if diff is not None:
        if not isinstance(diff, dict):
            raise fail("differentiation", f"must be an object, got {_kind(diff)}")
        for key in ("unique_purpose", "example_scenario"):
            if key in diff and not isinstance(diff[key], str):
                raise fail(f"differentiation.{key}", f"must be a string, got {_kind(diff[key])}")
        for key in ("key_differentiators", "usage_keywords", "avoid_keywords"):
            if key in diff and not (isinstance(diff[key], list) and all(isinstance(x, str) for x in diff[key])):
                raise fail(f"differentiation.{key}", "must be an array of strings")

    category = metadata.get("category") or entry.get("category") or "uncategorized"
    if not isinstance(category, str):
        raise fail("category", f"must be a string, got {_kind(category)}")
    return Tool(name=name, description=entry["description"], category=category, raw=dict(entry))
