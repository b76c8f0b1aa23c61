"""Benchmarks: optimizer step time (AdamW, 8-bit AdamW, galore-torch, our GaLore and GradNormLoRP), projector
refresh (exact vs randomized SVD), the weight-norm layer's forward/backward, end-to-end training
throughput and memory, and the C4 loader's throughput against training's. `python -m gnlorp.bench`
(= `make bench`) runs them all with default settings; each is also a module of its own (`python -m gnlorp.bench.<name> --help`). Results go to results/bench/<name>.json
and each prints its Markdown tables."""

BENCHMARKS = ("optimizer_step", "projector", "weightnorm", "end_to_end", "loader")
