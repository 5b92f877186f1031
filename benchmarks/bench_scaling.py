"""How does zchunk scale with workers, on threads and on dask.distributed worker processes?

One generated uint16 stack (default 120 x 2048 x 2048 = 1.0 GB, one uncompressed multi-page TIFF,
seed 1, warm page cache) is projected along z with ``max`` and with ``median`` by
``zchunk.pipeline.run_project`` (TIFF output, default memory budget), as ``zchunk project`` runs it,
on:

- ``threads``: dask's threaded scheduler with 1, 2, ... worker threads (``--workers``);
- ``processes``: a ``distributed.LocalCluster`` of 1, 2, ... worker processes of one thread each,
  the memory budget shared between them (``--scheduler processes --workers N``).

Worker counts go from 1 to the number of cores (at least 1 and 2). Every case runs in its own
child process; for ``processes`` the cluster is started before the clock (``startup_s``, which
``zchunk project --scheduler processes`` pays once per command, is reported apart), then every
case runs one untimed projection of a tiny stack (``warmup_s``: fresh worker processes import
zchunk and load the compiled kernels), and the workers' peak RSS is read from them at the end. Every result is checked against the first
case's (crc32 of the result bytes): a mismatch stops the run. ``others_cpu`` is the CPU (in
cores) that other processes took during a case: contention, not zchunk.

    python benchmarks/bench_scaling.py --repeat 3
    python benchmarks/bench_scaling.py --shape 250 2048 2048 --workers 1 2
    python benchmarks/bench_scaling.py --smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

SCHEDULERS = ("threads", "processes")
METHODS = ("max", "median")


make_input = h.uncompressed_stack


def _digest(paths: dict[str, str]) -> dict[str, int]:
    import zlib

    import numpy as np
    import tifffile

    out = {}
    for name, path in paths.items():
        a = np.ascontiguousarray(tifffile.imread(path))
        out[name] = zlib.crc32(a.astype(a.dtype.newbyteorder("="), copy=False).data)
    return out


def _worker_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# children -----------------------------------------------------------------------------------


def case_run(p: dict[str, Any]) -> dict[str, Any]:
    from zchunk.pipeline import RunOptions, compute_context, run_project

    QUIET = RunOptions(progress=False)
    folder = tempfile.mkdtemp(prefix="bench-scaling-", dir=p["tmp_dir"])
    try:
        t0 = time.perf_counter()
        with compute_context(p["scheduler"], workers=p["workers"]) as client:
            startup = time.perf_counter() - t0
            # untimed: workers import zchunk and load the compiled kernels on their first task
            t0 = time.perf_counter()
            run_project(p["tiny"], [p["method"]], os.path.join(folder, "warmup"), QUIET)
            warmup = time.perf_counter() - t0
            wall, summary = h.timed(lambda: run_project(p["path"], [p["method"]], folder, QUIET))
            worker_rss = []
            if client is not None:
                worker_rss = sorted(client.run(_worker_peak_rss_mb).values())
        results = _digest(summary["outputs"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "wall_s": wall,
        "startup_s": round(startup, 3),
        "warmup_s": round(warmup, 3),
        "results": results,
        "worker_peak_rss_mb": [round(r, 1) for r in worker_rss],
    }


def case_prepare(p: dict[str, Any]) -> dict[str, Any]:
    """Write the input (before any clock) and fill numba's cache with a tiny untimed run."""
    from zchunk.pipeline import RunOptions, run_project

    path = make_input(tuple(p["shape"]))
    tiny = make_input((6, 64, 64))
    folder = tempfile.mkdtemp(prefix="bench-scaling-", dir=p["tmp_dir"])
    try:
        run_project(str(tiny), list(METHODS), folder, RunOptions(progress=False))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"wall_s": 0.0, "path": str(path), "tiny": str(tiny)}


CASES = {"run": case_run, "prepare": case_prepare}


# parent -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--shape", type=int, nargs=3, default=[120, 2048, 2048], metavar=("Z", "Y", "X")
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="default: 1 .. cores")
    ap.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=SCHEDULERS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=120,
        metavar="S",
        help="before each case, wait up to S seconds for other processes to leave the CPUs idle",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny stack, one repeat: checks it runs")
    args = ap.parse_args()
    if args.smoke:
        args.shape, args.repeat, args.wait_idle = [16, 256, 256], 1, 0
    cores = len(os.sched_getaffinity(0))
    workers = args.workers or list(range(1, max(2, cores) + 1))
    shape = tuple(args.shape)
    script = str(Path(__file__).resolve())
    base = {"tmp_dir": str(h.data_dir())}
    prep = h.run_child(script, "prepare", {**base, "shape": list(shape)})
    path, base["tiny"] = prep["path"], prep["tiny"]
    input_bytes = shape[0] * shape[1] * shape[2] * 2
    common = {"shape": list(shape), "dtype": "uint16", "input_MB": round(input_bytes / 1e6, 1)}
    machine, versions = h.machine(), h.versions()
    from importlib.metadata import version

    versions["distributed"] = version("distributed")

    rows: list[dict[str, Any]] = []
    reference: dict[str, int] = {}
    for method in args.methods:
        for scheduler in args.schedulers:
            one = None
            for n in workers:
                h.raw_read([path])  # warm page cache, untimed
                waited = h.wait_idle(args.wait_idle) if args.wait_idle > 0 else 0.0
                params = {**base, "path": path, "method": method, "scheduler": scheduler}
                busy0, ours0, t0 = *h.cpu_seconds(), time.perf_counter()
                r = h.repeat_child(script, "run", {**params, "workers": n}, args.repeat)
                busy1, ours1, elapsed = *h.cpu_seconds(), time.perf_counter() - t0
                for name, crc in r["results"].items():
                    if reference.setdefault(name, crc) != crc:
                        msg = (
                            f"WRONG RESULT: {method} on {scheduler} x{n} differs from the first run"
                        )
                        raise SystemExit(msg)
                wall = r["wall_s_median"]
                one = one or wall
                row = {
                    "name": f"scaling_{method}",
                    "method": method,
                    "scheduler": scheduler,
                    "workers": n,
                    "params": {**common, "repeat": args.repeat},
                    "wall_s_min": r["wall_s_min"],
                    "wall_s_median": wall,
                    "wall_s_runs": r["wall_s_runs"],
                    "MB_per_s": round(input_bytes / wall / 1e6, 1),
                    "best_MB_per_s": round(input_bytes / r["wall_s_min"] / 1e6, 1),
                    "speedup": round(one / wall, 2),
                    "startup_s": r["startup_s"],
                    "warmup_s": r["warmup_s"],
                    "peak_rss_mb": r["peak_rss_mb"],
                    "worker_peak_rss_mb": r["worker_peak_rss_mb"],
                    "waited_idle_s": waited,
                    "others_cpu": round(max(0.0, (busy1 - busy0) - (ours1 - ours0)) / elapsed, 2),
                    "machine": machine,
                    "versions": versions,
                }
                rows.append(h.emit(row))
    print()
    table = [
        {**r, "worker_rss_mb": "+".join(f"{x:.0f}" for x in r["worker_peak_rss_mb"]) or "-"}
        for r in rows
    ]
    columns = ["method", "scheduler", "workers", "wall_s_median", "wall_s_min", "MB_per_s"]
    columns += ["best_MB_per_s", "speedup"]
    columns += ["startup_s", "warmup_s", "peak_rss_mb", "worker_rss_mb", "others_cpu"]
    print(h.markdown_table(table, columns))
    print(
        f"\n{shape[0]} x {shape[1]} x {shape[2]} uint16 ({input_bytes / 1e9:.2f} GB), warm cache, "
        f"{cores} cores; MB_per_s from the median wall, best_MB_per_s from the shortest; "
        "speedup = median wall with 1 worker / with N (same scheduler); "
        "startup_s (starting the LocalCluster) and warmup_s (first tasks on fresh workers) are "
        "not in wall; others_cpu = cores busy with other processes meanwhile"
    )


if __name__ == "__main__":
    if not h.child_main(CASES):
        main()
