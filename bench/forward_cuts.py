"""How a batch is cut into forwards: padding-aware plan against the token budget alone (issue 20).

The model alone (``local``, this process), in interleaved rounds:

- **fit**: the time of one forward of ``rows x width`` tokens over a grid, and the least-squares
  fit ``time = a + b x rows x width``; ``a / b`` is what ``forward_plan.FORWARD_OVERHEAD_TOKENS``
  stands for (a forward's fixed cost in token-times);
- **cuts**: texts/s with ``forward_plan``'s cuts and with the budget-only cut (one forward per
  ``max_batch_tokens``, each padded to its longest text: the plan with an infinite overhead), on
  the backends bench's workers' short texts (15-18 tokens) and on texts of 3 to 40 random words,
  in batches of 64, 12 (what a forward carries at one text a request) and 4. Best of the rounds,
  which alternate which cut goes first: the machine is shared, and the fastest round is the one
  least disturbed.

    python bench/forward_cuts.py --rounds 4
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import numpy as np


def fit(embedder: Any) -> None:
    forward = embedder._forward
    rng, rows_widths, times = np.random.default_rng(0), [], []
    for width in (8, 16, 32, 64, 128, 256):
        for rows in (1, 2, 4, 8, 16, 32, 64):
            if rows * width > 2048:
                continue
            ids = rng.integers(1000, 20000, (rows, width))
            forward(ids, np.ones_like(ids))
            runs = []
            for _ in range(max(3, int(150 / (rows * width) ** 0.5))):
                began = time.perf_counter()
                forward(ids, np.ones_like(ids))
                runs.append(time.perf_counter() - began)
            rows_widths.append((rows, width))
            times.append(float(np.median(runs)))
            print(f"{rows:3d} x {width:3d} tokens: {1e3 * times[-1]:7.2f} ms", flush=True)
    tokens = np.array([r * w for r, w in rows_widths], dtype=float)
    measured = np.array(times)
    design = np.stack([np.ones_like(tokens), tokens], axis=1) / measured[:, None]  # relative error
    (a, b), *_ = np.linalg.lstsq(design, np.ones_like(measured), rcond=None)
    print(f"fit: {1e3 * a:.2f} ms a forward + {1e6 * b:.1f} us a token: overhead = {a / b:.0f} tokens")


def cuts(embedder: Any, rounds: int) -> None:
    from embedshare.bench.backend_worker import make_text
    from embedshare.bench.workload import MISS_WORDS
    from embedshare.embedders import forward_plan, onnx_local

    rng = np.random.default_rng(1)
    texts = {
        "short": [make_text(i, "r0a-3", "short") for i in range(64 * 16)],
        "mixed": [
            " ".join(MISS_WORDS[k] for k in rng.integers(0, len(MISS_WORDS), rng.integers(3, 41)))
            for _ in range(64 * 10)
        ],
    }
    cases = [(kind, batch) for kind in texts for batch in (64, 12, 4)]
    plans = {"plan": forward_plan.FORWARD_OVERHEAD_TOKENS, "budget only": 10**9}
    best: dict[tuple[str, int, str], float] = {}
    for round_ in range(rounds):
        for name, overhead in sorted(plans.items(), reverse=bool(round_ % 2)):  # alternate which goes first
            onnx_local.plan_forwards = functools.partial(forward_plan.plan_forwards, overhead=overhead)
            for kind, batch in cases:
                data = texts[kind][: max(batch * 40, 256)]
                began = time.perf_counter()
                for start in range(0, len(data), batch):
                    embedder.embed(data[start : start + batch])
                rate = len(data) / (time.perf_counter() - began)
                best[kind, batch, name] = max(best.get((kind, batch, name), 0.0), rate)
    print("| texts, batch | plan, texts/s | budget only | plan / budget only |\n|---|---|---|---|")
    for kind, batch in cases:
        planned, budget = best[kind, batch, "plan"], best[kind, batch, "budget only"]
        print(f"| {kind}, {batch} | {planned:.0f} | {budget:.0f} | {planned / budget:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-fit", action="store_true")
    args = parser.parse_args()
    from embedshare.embedders import create_embedder

    embedder = create_embedder("local")
    embedder.load()
    if not args.no_fit:
        fit(embedder)
    cuts(embedder, args.rounds)


if __name__ == "__main__":
    main()
