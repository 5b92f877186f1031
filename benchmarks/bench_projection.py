"""How fast, and in how much memory, does zchunk compute max and median z-projections?

One generated uint16 stack (default 250 x 2048 x 2048 = 2.1 GB, one uncompressed multi-page TIFF,
the same file as bench_read.py's "uncompressed" layout, seed 1) is projected along z by:

- zchunk: ``zchunk.pipeline.run_project(path, methods, folder, RunOptions(overwrite=True))`` with the default
  memory budget and TIFF outputs, as ``zchunk project`` runs it: ``max``, ``median``, and
  ``max+median`` from one read (``project_many`` + ``save_many``);
- numpy: ``tifffile.imread`` then ``np.max``/``np.median(axis=0)`` (the time includes the read);
- dask-image: ``dask_image.imread.imread`` (one chunk per page), ``x.max(axis=0)`` and
  ``da.median(x, axis=0)`` (dask rechunks z to one chunk itself), threaded scheduler;
- the raw sequential read of the same file (the read limit), warm and cold.

Every case runs in its own child process (peak RSS from the OS), warm page cache unless marked
cold (cold: the file is evicted with posix_fadvise DONTNEED before each run). Every result is
checked against numpy's (crc32 of the result bytes, dtype and shape): a mismatch stops the run.
On a shared machine: each case first waits (``--wait-idle``) for the CPUs to be idle, then runs
``--warmup`` untimed times (in a VM, memory untouched for a while is slow to fault in again:
a fresh 2 GiB allocation took 2.2 s instead of 0.3 s here), and reports ``others_cpu_share``, the
CPU other processes took while it ran. Peak RSS of a child starts at the parent's peak, so the
parent stays small (inputs are written in a child) and ``rss_floor_mb`` gives that floor.
The median kernel alone is benchmarked by bench_kernel.py (``--kernel`` runs it afterwards).

    python benchmarks/bench_projection.py --repeat 3
    python benchmarks/bench_projection.py --skip numpy daskimage --repeat 5
    python benchmarks/bench_projection.py --smoke
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

MIB = 2**20
RSS_SLACK_MB = 300  # target: zchunk peak RSS <= memory budget + 300 MB
TARGETS = {
    "vs_numpy": 30.0,
    "vs_daskimage": 8.0,
    "median_vs_max": 0.5,
    "less_memory": 5.0,  # peer peak RSS / zchunk peak RSS (median)
    "max_vs_warm_read": 0.8,  # max throughput / warm raw read rate
    "max_vs_cold_read": 1 / 1.1,  # max time <= 1.1 x the cold raw read
}
PEERS = ("numpy", "daskimage")
COLD_REPEAT = 5  # at least: the cold disk is the noisiest measurement


make_input = h.uncompressed_stack


def _digest(arrays: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """crc32 of each result's bytes (C order, native byte order), with dtype and shape."""
    import zlib

    import numpy as np

    out = {}
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        a = a.astype(a.dtype.newbyteorder("="), copy=False)
        out[name] = {"crc32": zlib.crc32(a.data), "dtype": str(a.dtype), "shape": list(a.shape)}
    return out


def _widened(a: Any) -> Any:
    """float32 results as float64 (exact), to compare with numpy's float64 values."""
    import numpy as np

    return a.astype(np.float64) if a.dtype == np.float32 else a


def _threads() -> int:
    import dask

    return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


# children -----------------------------------------------------------------------------------


#: What ``import zchunk`` loaded before its imports became lazy (582ec8b): imported before the
#: clock starts, so that the clock times open + compute + write as it did then; the cost of
#: starting a whole ``zchunk project`` command, imports included, is bench_cli.py's question.
EAGER = (
    "dask.array", "numba", "scipy.ndimage", "zarr", "zchunk.io", "zchunk.ops.filters",
    "zchunk.ops.projection", "zchunk.ops._kernels", "zchunk.pipeline", "zchunk.sinks",
)  # fmt: skip


def case_zchunk(p: dict[str, Any]) -> dict[str, Any]:
    import importlib
    import shutil
    import tempfile

    import tifffile

    import zchunk
    from zchunk.budget import default_memory_limit
    from zchunk.pipeline import RunOptions, run_project

    for module in EAGER:
        importlib.import_module(module)
    folder = tempfile.mkdtemp(prefix="bench-projection-", dir=p["tmp_dir"])
    try:
        wall, summary = h.timed(
            lambda: run_project(
                p["path"], p["methods"], folder, RunOptions(overwrite=True, progress=False)
            )
        )
        # TIFF outputs hold float32 (ImageJ reads no float64), exact for the median of
        # 16-bit data; widening to float64 is exact too, so numpy's values must match
        results = {m: _widened(tifffile.imread(path)) for m, path in summary["outputs"].items()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    s = zchunk.open(p["path"])  # the plan run_project used (same default budget)
    return {
        "wall_s": wall,
        "results": _digest(results),
        "bytes_read": summary["bytes_read"],
        "chunks": list(s.data.chunksize),
        "tasks": int(s.data.npartitions),
        "memory_limit_mb": round(default_memory_limit() / MIB, 1),
        "scheduler": "threads",
        "threads": _threads(),
    }


def case_numpy(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import tifffile

    func = {"max": np.max, "median": np.median}[p["method"]]
    wall, result = h.timed(lambda: func(tifffile.imread(p["path"]), axis=0))
    return {
        "wall_s": wall,
        "results": _digest({p["method"]: result}),
        "scheduler": "none",
        "threads": 1,
    }


def case_daskimage(p: dict[str, Any]) -> dict[str, Any]:
    import dask.array as da
    from dask_image.imread import imread

    def run() -> Any:
        x = imread(p["path"])  # one chunk per page
        y = x.max(axis=0) if p["method"] == "max" else da.median(x, axis=0)
        return y.compute(scheduler="threads")

    wall, result = h.timed(run)
    x = imread(p["path"])
    layers = da.median(x, axis=0).dask.layers  # the graph dask builds: rechunk + median
    return {
        "wall_s": wall,
        "results": _digest({p["method"]: result}),
        "chunks": list(x.chunksize),
        "tasks": int(x.npartitions),
        "rechunk_in_median": any("rechunk" in str(k) for k in layers),
        "scheduler": "threads",
        "threads": _threads(),
    }


def case_prepare(p: dict[str, Any]) -> dict[str, Any]:
    """Write the inputs and collect versions here, not in the parent (see `rss_floor`)."""
    paths = {k: str(make_input(tuple(v))) for k, v in p["shapes"].items()}
    return {"wall_s": 0.0, "paths": paths, "versions": _versions()}


def case_noop(p: dict[str, Any]) -> dict[str, Any]:
    return {"wall_s": 0.0}


def case_raw(p: dict[str, Any]) -> dict[str, Any]:
    r = h.raw_read([p["path"]])
    return {"wall_s": r["wall_s"], "bytes": r["bytes"], "scheduler": "none", "threads": 1}


def case_reference(p: dict[str, Any]) -> dict[str, Any]:
    """numpy's max and median, band by band through a memmap (untimed; when numpy is skipped)."""
    import numpy as np
    import tifffile

    a = tifffile.memmap(p["path"], mode="r")
    out = {"max": np.empty(a.shape[1:], a.dtype), "median": np.empty(a.shape[1:], np.float64)}
    for y0 in range(0, a.shape[1], 64):
        band = np.asarray(a[:, y0 : y0 + 64])
        out["max"][y0 : y0 + 64] = np.max(band, axis=0)
        out["median"][y0 : y0 + 64] = np.median(band, axis=0)
    return {"wall_s": 0.0, "results": _digest(out)}


CASES = {
    "zchunk": case_zchunk,
    "numpy": case_numpy,
    "daskimage": case_daskimage,
    "raw": case_raw,
    "reference": case_reference,
    "prepare": case_prepare,
    "noop": case_noop,
}


# parent -------------------------------------------------------------------------------------


def _check(record: dict[str, Any], reference: dict[str, dict[str, Any]]) -> None:
    """Stop the run if a measured result differs from numpy's."""
    for method, got in record.get("results", {}).items():
        want = reference.get(method)
        if want is None:
            continue
        if got != want:
            msg = (
                f"WRONG RESULT: {record['name']} {method} = {got}, numpy gives {want}; "
                "the benchmark stops here (a wrong result is not worth timing)"
            )
            raise SystemExit(msg)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {**h.versions(), "dask-image": version("dask-image"), "pims": version("pims")}
    try:  # when installed, dask imports it on the first compute of every process (~0.1-0.2 s)
        out["distributed"] = version("distributed")
    except PackageNotFoundError:
        out["distributed"] = "not installed"
    git = ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"]
    run = subprocess.run(git, capture_output=True, text=True, check=False)
    out["zchunk_git"] = run.stdout.strip() or "unknown"
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def _met(value: float | None, ok: bool) -> str:
    return "n/a" if value is None else ("yes" if ok else "**NO**")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--shape", type=int, nargs=3, default=[250, 2048, 2048], metavar=("Z", "Y", "X")
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip", nargs="+", default=[], choices=PEERS, help="peers to leave out")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    ap.add_argument("--kernel", action="store_true", help="then run bench_kernel.py (the kernel)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="N",
        help="untimed runs of each case before the timed ones (fresh memory is slow to fault in)",
    )
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
        args.shape, args.repeat, args.wait_idle, args.warmup = [20, 256, 256], 1, 0, 0
    shape = tuple(args.shape)
    script = str(Path(__file__).resolve())
    # Inputs are written (before any clock starts) and heavy modules imported in a child: a
    # child's ru_maxrss starts at its parent's peak RSS (exec records the old mm's high-water
    # mark), so the parent stays small and the floor it puts under every case is measured.
    tiny = (6, 64, 64)  # for an untimed run that fills numba's on-disk cache
    prep = h.run_child(script, "prepare", {"shapes": {"main": shape, "tiny": tiny}})
    path, versions = Path(prep["paths"]["main"]), prep["versions"]
    h.raw_read([path])  # the parent's own peak: its read buffer included
    rss_floor = h.run_child(script, "noop", {})["peak_rss_mb"]
    input_bytes = int(shape[0] * shape[1] * shape[2] * 2)
    base = {"path": str(path), "tmp_dir": str(h.data_dir())}
    common = {
        "shape": list(shape),
        "dtype": "uint16",
        "input_MB": round(input_bytes / 1e6, 1),
        "repeat": args.repeat,
        "file": path.name,
    }
    machine = h.machine()
    cold = functools.partial(h.drop_cache, [path])
    tiny_params = {**base, "path": prep["paths"]["tiny"], "methods": ["max", "median"]}
    h.run_child(script, "zchunk", tiny_params)  # untimed: no measured run compiles the kernels

    plan: list[tuple[str, str, dict[str, Any], str]] = []  # name, child case, params, cache
    if "numpy" not in args.skip:  # numpy first: its results are the reference for the others
        plan += [(f"numpy_{m}", "numpy", {"method": m}, "warm") for m in ("max", "median")]
    plan += [
        ("raw_read", "raw", {}, "warm"),
        ("zchunk_max", "zchunk", {"methods": ["max"]}, "warm"),
        ("zchunk_median", "zchunk", {"methods": ["median"]}, "warm"),
        ("zchunk_max_median", "zchunk", {"methods": ["max", "median"]}, "warm"),
    ]
    if "daskimage" not in args.skip:
        plan += [(f"daskimage_{m}", "daskimage", {"method": m}, "warm") for m in ("max", "median")]
    if not args.no_cold:
        plan += [
            ("raw_read", "raw", {}, "cold"),
            ("zchunk_max", "zchunk", {"methods": ["max"]}, "cold"),
        ]

    reference: dict[str, dict[str, Any]] = {}
    if "numpy" in args.skip:
        reference = h.run_child(script, "reference", base)["results"]
    # the cold cases run interleaved (raw, zchunk, raw, ...): the VM's disk swings by 2-4x
    # within minutes, and a ratio of two cases should see the same spells
    groups: list[list[tuple[str, str, dict[str, Any], str]]] = []
    for entry in plan:
        if entry[3] == "cold" and groups and groups[-1][0][3] == "cold":
            groups[-1].append(entry)
        else:
            groups.append([entry])
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for group in groups:
        cache = group[0][3]
        params = {**base, **{k: v for entry in group for k, v in entry[2].items()}}
        cases = [case for _, case, _, _ in group]
        before = cold if cache == "cold" else None
        waited = h.wait_idle(args.wait_idle) if args.wait_idle > 0 else 0.0
        if cache == "warm":
            h.raw_read([path])  # bring (back) the file into the page cache, untimed
        for _ in range(args.warmup):  # untimed: the first big allocations after a pause are slow
            for name, case, _, _ in group:
                if before is not None:
                    before()
                _check({"name": name, **h.run_child(script, case, params)}, reference)
        busy0, ours0, t0 = *h.cpu_seconds(), time.perf_counter()
        repeat = args.repeat if cache == "warm" else max(args.repeat, COLD_REPEAT)
        runs = h.repeat_cases(script, cases, params, repeat, before)
        busy1, ours1, elapsed = *h.cpu_seconds(), time.perf_counter() - t0
        others = max(0.0, (busy1 - busy0) - (ours1 - ours0))
        for name, case, own, _ in group:
            r = runs[case]
            record = {
                "name": name,
                "cache": cache,
                "params": {**common, **own},
                "wall_s_min": r["wall_s_min"],
                "wall_s_median": r["wall_s_median"],
                "wall_s_runs": r["wall_s_runs"],
                "peak_rss_mb": r["peak_rss_mb"],
                "rss_floor_mb": rss_floor,
                "MB_per_s": round(input_bytes / r["wall_s_median"] / 1e6, 1),
                # CPU taken by other processes during this group's runs, as a share of the machine
                "others_cpu_s": round(others, 2),
                "others_cpu_share": round(others / elapsed / (os.cpu_count() or 1), 3),
                "idle_wait_s": waited,
                "warmup_runs": args.warmup,
                "interleaved_with": [n for n, _, _, _ in group if n != name],
                **{k: v for k, v in r.items() if not k.startswith(("wall_s", "peak_rss"))},
                "versions": versions,
                "machine": machine,
            }
            if case == "numpy":
                reference.update(record["results"])
            _check(record, reference)
            records[name, cache] = h.emit(record)

    report(records, args, rss_floor)
    if args.kernel:
        kernel = [sys.executable, str(Path(script).with_name("bench_kernel.py"))]
        print("\n## median kernel alone (bench_kernel.py)\n", flush=True)
        subprocess.run([*kernel, *(["--smoke"] if args.smoke else [])], check=True)


def report(
    records: dict[tuple[str, str], dict[str, Any]], args: argparse.Namespace, rss_floor: float
) -> None:
    rows = [
        {
            "case": name,
            "cache": cache,
            "wall_s_median": r["wall_s_median"],
            "wall_s_min": r["wall_s_min"],
            "MB_per_s": r["MB_per_s"],
            "peak_rss_mb": r["peak_rss_mb"],
            "threads": r["threads"],
            "others_cpu_%": round(100 * r["others_cpu_share"], 1),
        }
        for (name, cache), r in records.items()
    ]
    print()
    cols = ["case", "cache", "wall_s_median", "wall_s_min", "MB_per_s", "peak_rss_mb", "threads"]
    cols.append("others_cpu_%")
    print(h.markdown_table(rows, cols))

    def wall(name: str, cache: str = "warm") -> float | None:
        r = records.get((name, cache))
        return None if r is None else float(r["wall_s_median"])

    def rss(name: str) -> float | None:
        r = records.get((name, "warm"))
        return None if r is None else float(r["peak_rss_mb"])

    zc = [r for (n, _), r in records.items() if n.startswith("zchunk")]
    budget = zc[0]["memory_limit_mb"]
    worst_rss = max(r["peak_rss_mb"] for r in zc)
    vs_numpy = _ratio(wall("numpy_median"), wall("zchunk_median"))
    vs_dask = _ratio(wall("daskimage_median"), wall("zchunk_median"))
    med_max = _ratio(wall("zchunk_max"), wall("zchunk_median"))
    raw_warm = _ratio(wall("raw_read"), wall("zchunk_max"))
    raw_cold = _ratio(wall("raw_read", "cold"), wall("zchunk_max", "cold"))
    one_read = _ratio(
        (wall("zchunk_max") or 0) + (wall("zchunk_median") or 0), wall("zchunk_max_median")
    )
    ratios = [
        (
            "median speedup vs numpy",
            vs_numpy,
            f">= {TARGETS['vs_numpy']:g}x",
            _met(vs_numpy, (vs_numpy or 0) >= TARGETS["vs_numpy"]),
        ),
        (
            "median speedup vs dask-image",
            vs_dask,
            f">= {TARGETS['vs_daskimage']:g}x",
            _met(vs_dask, (vs_dask or 0) >= TARGETS["vs_daskimage"]),
        ),
        ("max speedup vs numpy", _ratio(wall("numpy_max"), wall("zchunk_max")), "-", "-"),
        ("max speedup vs dask-image", _ratio(wall("daskimage_max"), wall("zchunk_max")), "-", "-"),
        *(
            (
                f"memory ratio {label}/zchunk (median, peak RSS)",
                less,
                f">= {TARGETS['less_memory']:g}x",
                _met(less, (less or 0) >= TARGETS["less_memory"]),
            )
            for label, less in (
                ("numpy", _ratio(rss("numpy_median"), rss("zchunk_median"))),
                ("dask-image", _ratio(rss("daskimage_median"), rss("zchunk_median"))),
            )
        ),
        (
            "zchunk worst peak RSS (MB)",
            worst_rss,
            f"<= {budget:g} + {RSS_SLACK_MB}",
            _met(worst_rss, worst_rss <= budget + RSS_SLACK_MB),
        ),
        (
            "median/max throughput ratio",
            med_max,
            f">= {TARGETS['median_vs_max']:g}",
            _met(med_max, (med_max or 0) >= TARGETS["median_vs_max"]),
        ),
        ("max+median in one read vs two runs (speedup)", one_read, "-", "-"),
        (
            "max MB/s / raw read MB/s (warm)",
            raw_warm,
            f">= {TARGETS['max_vs_warm_read']:g}",
            _met(raw_warm, (raw_warm or 0) >= TARGETS["max_vs_warm_read"]),
        ),
        (
            "max MB/s / raw read MB/s (cold)",
            raw_cold,
            ">= 0.91 (time <= 1.1x)",
            _met(raw_cold, (raw_cold or 0) >= TARGETS["max_vs_cold_read"]),
        ),
    ]
    print()
    if args.smoke:
        print("(smoke run: a tiny input dominated by fixed costs; the ratios mean nothing)\n")
    print(
        h.markdown_table(
            [{"ratio": a, "value": b, "target": c, "met": d} for a, b, c, d in ratios],
            ["ratio", "value", "target", "met"],
        )
    )
    print(
        "\nAll ratios from this run. speedup = peer wall / zchunk wall (medians of "
        f"{args.repeat}); memory ratio = peer peak RSS / zchunk peak RSS; throughput = input MB / "
        f"wall, after {args.warmup} untimed warm-up run(s) per case. zchunk = run_project (open + compute + TIFF write), default budget "
        f"{budget:g} MiB; numpy = imread + reduce, one thread; dask-image = imread + reduce, "
        f"threads. Peak RSS from the OS; a bare python child measures {rss_floor:g} MB. "
        "others_cpu_% = CPU other processes took during a case's runs, in % of the machine "
        "(above a few %, that case's times are contended). "
        "The median kernel alone: benchmarks/bench_kernel.py (--kernel runs it)."
    )


if __name__ == "__main__":
    if not h.child_main(CASES):
        main()
