"""``embedshare bench``: the seed's designs and embedshare measured side by side in one run.

- ``designs``: one class a design (per-process, Option C, Option A, hybrid, embedshare): start,
  the worker's manager, stop, the processes to measure; what their workers load is
  ``counting`` (the baselines' model counters), ``dict_sources`` (designs 3 and 4's Manager
  dict) and ``probes`` (hits, misses, the worker's report),
- ``case``: one design, model and worker count, run in a fresh interpreter,
- ``runner``: every case, then the index-size sweep (``sweep``); ``targets`` decides design.md's
  targets; ``report`` writes the outputs,
- ``fake_openai``: a local OpenAI-compatible server with added latency (the simulated API; the
  tests' ``FakeOpenAIServer`` is it plus scripted faults).

Nothing is imported here: workers load only the module they run.
"""
