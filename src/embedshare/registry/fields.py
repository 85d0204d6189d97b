"""Turn a tool into the texts that get embedded, and the weights that combine them.

Each tool is embedded field by field so that a search can say *why* a tool matched
("description 0.71, parameters 0.52"). The fields and weights are the user's own
(design.md): description, parameters, functionality at 0.4/0.3/0.3, and with a
differentiation text 0.25/0.2/0.25/0.3.
"""

from __future__ import annotations

from .loader import Tool

FIELDS: tuple[str, ...] = ("description", "parameters", "functionality", "differentiation")
WEIGHTS_PLAIN = {"description": 0.4, "parameters": 0.3, "functionality": 0.3}
WEIGHTS_WITH_DIFFERENTIATION = {
    "description": 0.25,
    "parameters": 0.2,
    "functionality": 0.25,
    "differentiation": 0.3,
}


def _words(identifier: str) -> str:
    return identifier.replace("_", " ").replace("-", " ").strip()


def field_texts(tool: Tool) -> dict[str, str]:
    """The text of each field this tool has (differentiation only when present)."""
    raw = tool.raw
    metadata = raw.get("metadata") or {}
    texts = {"description": f"{_words(tool.name)}: {tool.description}"}

    params = [f"{p['name']} ({p.get('type', 'any')}): {p.get('description', '')}".strip() for p in tool.parameters]
    texts["parameters"] = (
        f"{_words(tool.name)} takes " + "; ".join(params) if params else f"{_words(tool.name)} takes no parameters"
    )

    parts = [f"{_words(tool.category)} {metadata.get('operation', '')}".strip()]
    if raw.get("aliases"):
        parts.append("also called " + ", ".join(raw["aliases"]))
    returns = [
        r.get("description", r.get("name", "")) if isinstance(r, dict) else str(r) for r in raw.get("returns", [])
    ]
    if any(returns):
        parts.append("returns " + "; ".join(r for r in returns if r))
    texts["functionality"] = ". ".join(parts)

    diff = tool.differentiation
    if diff:
        pieces = [diff.get("unique_purpose", "")]
        if diff.get("key_differentiators"):
            pieces.append("; ".join(diff["key_differentiators"]))
        if diff.get("usage_keywords"):
            pieces.append("use for " + ", ".join(diff["usage_keywords"]))
        if diff.get("example_scenario"):
            pieces.append("example: " + diff["example_scenario"])
        text = ". ".join(p for p in pieces if p)
        if text:
            texts["differentiation"] = text
    return texts


def field_weights(texts: dict[str, str]) -> dict[str, float]:
    """The weights for the fields a tool has."""
    return WEIGHTS_WITH_DIFFERENTIATION if "differentiation" in texts else WEIGHTS_PLAIN
