"""Throughput of the median kernel against ``np.median(block, axis=0)``, on one thread.

Also the in-plane pass of the separable filters: zchunk's numba ``correlate_yx`` against
OpenCV's ``cv2.sepFilter2D`` (when ``opencv-python-headless`` is installed; it is not a
dependency) and ``scipy.ndimage.gaussian_filter``, float32, 17 taps (a gaussian of sigma 2),
one thread, interleaved rounds.

Usage::

    python benchmarks/bench_kernel.py --z 31 100 301 --size 512 --repeat 5
    python benchmarks/bench_kernel.py --smoke

Prints one JSON line per (dtype, z) case, then a markdown table. Data come from
``zchunk.testing.blobs`` before any clock starts; each timing is the median of `--repeat` runs, after
one untimed run (numba compilation or cache load, first-touch of the output).
"""

from __future__ import annotations

import os

# one thread everywhere: np.median is single-threaded, the numba kernels are serial by design
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import statistics
import time
from typing import TYPE_CHECKING

import numpy as np

from zchunk.ops._kernels import median
from zchunk.testing import blobs

if TYPE_CHECKING:
    from collections.abc import Callable


def _median_seconds(func: Callable[[], object], repeat: int) -> float:
    func()  # untimed: compilation / cache load
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(dtype: str, z: int, size: int, repeat: int) -> dict[str, object]:
    block = blobs((z, size, size), dtype, seed=0)
    ours, expected = median(block), np.median(block, axis=0)
    if ours.dtype != expected.dtype or not np.array_equal(ours, expected):
        msg = f"median differs from numpy for {dtype} z={z}"
        raise AssertionError(msg)
    t_ours = _median_seconds(lambda: median(block), repeat)
    t_numpy = _median_seconds(lambda: np.median(block, axis=0), repeat)
    mb = block.nbytes / 1e6
    return {
        "name": "kernel_median",
        "dtype": dtype,
        "z": z,
        "pixels": size * size,
        "zchunk_s_median": round(t_ours, 6),
        "numpy_s_median": round(t_numpy, 6),
        "speedup": round(t_numpy / t_ours, 2),
        "zchunk_MB_per_s": round(mb / t_ours, 1),
        "numpy_MB_per_s": round(mb / t_numpy, 1),
        "repeat": repeat,
        "threads": 1,
        "numpy": np.__version__,
    }


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        (
            "| dtype | z | pixels | zchunk median (ms) | numpy median (ms) | speedup "
            "| zchunk MB/s | numpy MB/s |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        zs, ns = float(str(r["zchunk_s_median"])), float(str(r["numpy_s_median"]))
        lines.append(
            f"| {r['dtype']} | {r['z']} | {r['pixels']} | {zs * 1e3:.2f} | {ns * 1e3:.1f} "
            f"| {r['speedup']}x | {r['zchunk_MB_per_s']} | {r['numpy_MB_per_s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--z", type=int, nargs="+", default=[31, 100, 301], help="stack depths")
    parser.add_argument("--size", type=int, default=512, help="y = x size of the block")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case")
    parser.add_argument("--dtype", nargs="+", default=["uint8", "uint16"], help="input dtypes")
    parser.add_argument("--smoke", action="store_true", help="tiny, fast run (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.z, args.size, args.repeat = [4, 7], 64, 2
    rows = []
    for dtype in args.dtype:
        for z in args.z:
            row = run_case(dtype, z, args.size, args.repeat)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print()
    print(markdown(rows))
    print()
    print(separable_pass(args.repeat, (64, 96) if args.smoke else (512, 2048)))
    return 0


def separable_pass(repeat: int, shape: tuple[int, int]) -> str:
    """Mpixel/s of the y+x gaussian pass of one float32 plane: numba, OpenCV, scipy."""
    from scipy import ndimage

    from zchunk.ops._filter_kernels import MODE_CODES, correlate_yx
    from zchunk.ops._separable import gaussian_weights

    plane = blobs((1, *shape), np.float32, seed=3)[0]
    w = np.asarray(gaussian_weights(2.0, 0, 4.0), dtype=np.float32)
    out = np.empty_like(plane)
    reflect = MODE_CODES["reflect"]
    cases: dict[str, Callable[[], object]] = {
        "zchunk numba correlate_yx": lambda: correlate_yx(plane, w, 8, w, 8, reflect, 0.0, out),
        "scipy gaussian_filter (float32)": lambda: ndimage.gaussian_filter(plane, 2, output=out),
    }
    try:
        import cv2

        cv2.setNumThreads(1)
        cases["OpenCV sepFilter2D"] = lambda: cv2.sepFilter2D(
            plane, cv2.CV_32F, w, w, dst=out, borderType=cv2.BORDER_REFLECT
        )
    except ImportError:
        cases["OpenCV sepFilter2D"] = None  # type: ignore[assignment]
    times: dict[str, list[float]] = {k: [] for k, f in cases.items() if f is not None}
    for _ in range(3):  # rounds, interleaved
        for name, spent in times.items():
            spent.append(_median_seconds(cases[name], repeat))
    lines = [f"Separable pass, {shape[0]} x {shape[1]} float32, 17 x 17 taps, one thread:", ""]
    lines += ["| implementation | Mpixel/s (median of 3 rounds) |", "|---|---:|"]
    for name, t in times.items():
        lines.append(f"| {name} | {plane.size / statistics.median(t) / 1e6:.0f} |")
    if cases["OpenCV sepFilter2D"] is None:
        lines.append("| OpenCV sepFilter2D | not installed (pip install opencv-python-headless) |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
