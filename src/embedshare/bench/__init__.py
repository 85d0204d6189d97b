"""``embedshare bench``: the seed's designs and embedshare measured side by side in one run.

- ``designs``: the designs as they run in a worker (per-process, Option C, Option A, hybrid),
- ``case``: one design, model and worker count, run in a fresh interpreter,
- ``runner``: every case, then the index-size sweep (``sweep``); ``report`` writes the outputs,
- ``fake_openai``: a local OpenAI-compatible server with added latency (the simulated API).

Nothing is imported here: workers load only the module they run.
"""
