"""A client that asks a service for another model gets ``ModelMismatchError`` (a ValueError,
exported from embedshare) whose one message names both models and the fix; the CLI says it in
one line. Never the other model's vectors."""

from __future__ import annotations

import subprocess
import sys

import pytest

import embedshare
from embedshare import ModelMismatchError, SharedEmbeddingManager, get_embedding_manager


@pytest.fixture
def service(make_service):
    return make_service(registry=None, export_env=False)


def test_the_python_api_raises_a_named_error_with_the_fix(service):
    with pytest.raises(ModelMismatchError) as refused:
        get_embedding_manager(model="hash:32", store=service.layout.root)
    message = str(refused.value)
    assert isinstance(refused.value, ValueError) and embedshare.ModelMismatchError is ModelMismatchError
    assert "'hash:64:v1'" in message and "'hash:32:v1'" in message
    store = service.layout.root
    assert (
        f"embedshare stop --store {store}`, then `embedshare serve --store {store} --model hash:32 --detach`" in message
    )
    assert "embedshare serve --store OTHER-STORE --model hash:32 --detach" in message


def test_a_shared_manager_raises_it_too(service):
    with pytest.raises(ModelMismatchError, match="give no model"):
        SharedEmbeddingManager(service.address, model="hash:16")


def test_the_cli_says_it_in_one_line(service):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedshare.cli",
            "embed",
            "--store",
            str(service.layout.root),
            "--model",
            "hash:32",
            "a",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this service embeds with 'hash:64:v1'"), done.stderr
    assert "--model hash:32 --detach" in lines[0]


def test_the_langchain_adapter_raises_it_for_a_manager_of_another_model(service):
    pytest.importorskip("langchain_core")
    from embedshare.integrations.langchain import EmbedshareEmbeddings

    get_embedding_manager(store=service.layout.root)  # this process's manager: the service's model
    with pytest.raises(ModelMismatchError, match="pass manager="):
        EmbedshareEmbeddings(model="hash:32")
