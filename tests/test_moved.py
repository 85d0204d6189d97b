"""The module paths of embedshare 0.1 that the redesign moved still import (with a warning),
and give the same objects as the new paths: user code written against 0.1 keeps running."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

# What each old module exported that users could reach (every public name it defined).
OLD_NAMES = {
    "embedshare.latency": "Histogram percentiles",
    "embedshare.lazylog": "LazyLogger",
    "embedshare.progress": "Progress LogProgress task_progress",
    "embedshare.pss": "pss_bytes",
    "embedshare.pool.bare": "bare_worker",
    "embedshare.pool.memory": "MB ProcessMemory measure BareInterpreter",
    "embedshare.pool.demo": "DemoResult run_demo",
    "embedshare.pool.workload": "common_queries make_tasks run_task attach_own_manager",
    "embedshare.ray.worker": "in_ray_worker RayEmbeddingManager deployment_registry check_deployment_registry",
    "embedshare.service.client": "POLICIES MAX_REQUEST_TEXTS MAX_REQUEST_CHARS SharedEmbeddingManager "
    "check_served_registry",
    "embedshare.service.connection": "ServiceUnavailable ForeignServiceError ServiceConnection",
    "embedshare.service.peercred": "peer_credentials",
    "embedshare.service.protocol": "VERSION HEADER MAX_FRAME MAX_TEXTS_PER_REQUEST OPS ProtocolError "
    "pack frame_length unpack reply_id check_request "
    "request_texts error_reply",
    "embedshare.service.state": "ENV_ADDRESS ENV_STORE ENV_ON_FAILURE ENV_TOKEN TCP_SCHEME MIN_TOKEN_CHARS "
    "ServiceConfig AlreadyRunning acquire_service_lock service_lock_held "
    "StateFileError read_state mark_stopped stopped_on_purpose "
    "parse_tcp_address read_token_file",
    "embedshare.service.http_address": "parse_http_address is_loopback normalise_http_address http_token "
    "ENV_HTTP_TOKEN",
    "embedshare.service.tokens": "TokenInputError is_token_input decode_token_input",
}
NEEDS_HTTP = {"embedshare.service.tokens"}


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_an_old_module_path_imports_with_a_warning_and_gives_the_new_objects(old):
    if old in NEEDS_HTTP:
        pytest.importorskip("starlette", reason="the HTTP endpoint needs pip install 'embedshare[http]'")
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved in embedshare 0.2"):
        module = importlib.import_module(old)
    for name in OLD_NAMES[old].split():
        value = getattr(module, name)
        assert any(
            getattr(importlib.import_module(home), name, None) is value
            for home in importlib.import_module("embedshare._moved").MOVED[old]
        ), (old, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing_of_that_name'"):
        getattr(module, "nothing_of_that_name")  # noqa: B009 - the attribute access is the test


def test_a_from_import_of_an_old_path_works_in_a_fresh_interpreter():
    code = (
        "from embedshare.service.client import SharedEmbeddingManager\n"
        "from embedshare.access import SharedEmbeddingManager as New\n"
        "assert SharedEmbeddingManager is New\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "moved in embedshare 0.2" in result.stderr  # it warns...
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr  # ...and works
