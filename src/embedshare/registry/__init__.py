"""Tool registries: loading, validation, and the per-field texts that get embedded."""

from ..errors import RegistryError
from .fields import FIELDS, field_texts, field_weights
from .loader import BUNDLED_REGISTRY, Registry, Tool, bundled_registry_path, load_registry, parse_registry

__all__ = [
    "BUNDLED_REGISTRY",
    "FIELDS",
    "Registry",
    "RegistryError",
    "Tool",
    "bundled_registry_path",
    "field_texts",
    "field_weights",
    "load_registry",
    "parse_registry",
]
