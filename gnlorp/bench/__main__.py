"""Run the benchmark suite: `python -m gnlorp.bench [--only NAME ...] [shared flags]`.

Each benchmark runs with its own defaults (each under about 5 minutes on a 2-core CPU with 1 thread);
shared flags (--threads, --device, --out-dir, --no-write, --seed) are passed on to every one of them, and
anything after `--` is passed on verbatim (e.g. `-- --repeats 9`, accepted by all four).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from . import BENCHMARKS


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="python -m gnlorp.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    shared = []
    for flag, value in (("--threads", args.threads), ("--device", args.device), ("--out-dir", args.out_dir),
                        ("--seed", args.seed)):
        if value is not None:
            shared += [flag, str(value)]
    if args.no_write:
        shared.append("--no-write")
    times = {}
    for name in args.only:
        print(f"\n## {name}\n", flush=True)
        t0 = time.perf_counter()
        module = importlib.import_module(f"gnlorp.bench.{name}")
        module.main(shared + extra)
        times[name] = time.perf_counter() - t0
    print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {sum(times.values()):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
