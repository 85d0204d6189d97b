"""The tests' OpenAI-compatible server: the one the benchmarks ship in the package.

A real HTTP server on loopback that speaks ``/v1/embeddings`` and can be scripted to fail
(429, 5xx, malformed JSON, wrong counts, NaN ...). Kept in one place, in
``embedshare.bench.fake_openai``, so the tests and the benchmarks run the same server.
"""

from embedshare.bench.fake_openai import FAULTS, FakeOpenAIServer  # noqa: F401
from embedshare.bench.fake_openai_answers import corrupt  # noqa: F401
