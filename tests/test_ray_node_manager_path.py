"""embedshare.ray.get_node_manager builds its manager from the module that defines it now,
not through a 0.1 path (embedshare/_moved.py), which would warn on every call of a user's."""

import warnings


def test_get_node_manager_imports_no_moved_module(monkeypatch):
    import embedshare.ray
    import embedshare.ray.source as source

    monkeypatch.setattr(source, "RayEmbeddingManager", lambda **options: options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert embedshare.ray.get_node_manager("hash:8") == {"model": "hash:8", "on_failure": None}
