"""Small helpers every layer may use: digests, lazy logging, latency histograms, PSS, progress,
single-flight. Nothing here imports the rest of embedshare."""
