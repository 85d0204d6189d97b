"""embedshare.ray.get_node_manager builds its manager from the module that defines it, with the
options it was given, and without a warning (it runs on every call of a user's)."""

import warnings


def test_get_node_manager_builds_the_ray_manager_without_a_warning(monkeypatch):
    import embedshare.ray
    import embedshare.ray.source as source

    monkeypatch.setattr(source, "RayEmbeddingManager", lambda **options: options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert embedshare.ray.get_node_manager("hash:8") == {"model": "hash:8", "on_failure": None}
