"""Benchmarks: optimizer step time (AdamW, 8-bit AdamW, galore-torch, our GaLore and GradNormLoRP), projector
refresh (exact vs randomized SVD), the weight-norm layer's forward/backward, and end-to-end training
throughput and memory. `python -m gnlorp.bench` (= `make bench`) runs them all with default settings; each is
also a module of its own (`python -m gnlorp.bench.<name> --help`). Results go to results/bench/<name>.json
and each prints its Markdown tables."""

BENCHMARKS = ("optimizer_step", "projector", "weightnorm", "end_to_end")
