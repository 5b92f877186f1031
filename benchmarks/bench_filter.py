"""A 3-D Gaussian on a stack bigger than the budget: zchunk against dask-image, time and memory.

One generated uint16 stack (default 250 x 2048 x 2048 = 2.1 GB, the file of bench_read.py's
"uncompressed" layout) is filtered with ``gaussian(sigma=2)`` in 3-D and written

- by zchunk to zarr (``zchunk filter SRC gaussian --sigma 2 -o OUT.zarr``) and to an uncompressed
  TIFF (``-o OUT.tif``), float32 output, the default memory budget;
- by dask-image as its users write it: ``dask_image.imread.imread`` (one chunk per page),
  ``dask_image.ndfilters.gaussian_filter(x.astype(float32), 2)``, ``x.to_zarr(OUT)``.

Each case runs in a child process (peak RSS from the OS); warm page cache. A sampled interior
block of every output is checked against scipy on the same sub-volume.

    python benchmarks/bench_filter.py --repeat 3
    python benchmarks/bench_filter.py --smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

SIGMA = 2.0


make_input = h.uncompressed_stack


def _check(src: str, read_block, seed: int) -> None:
    """Compare a random interior block of the output with scipy on a haloed sub-volume."""
    import numpy as np
    import tifffile
    from scipy import ndimage

    halo = int(4 * SIGMA + 0.5)
    with tifffile.TiffFile(src) as tif:
        _, ny, nx = tif.series[0].shape
    rng = np.random.default_rng(seed)
    y0 = int(rng.integers(halo, ny - 24 - halo))
    x0 = int(rng.integers(halo, nx - 24 - halo))
    stack = tifffile.memmap(src, mode="r")
    sub = np.asarray(stack[:, y0 - halo : y0 + 24 + halo, x0 - halo : x0 + 24 + halo])
    expected = ndimage.gaussian_filter(sub.astype(np.float32), SIGMA)[:, halo:-halo, halo:-halo]
    got = read_block(y0, x0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def case_zchunk(p: dict[str, Any]) -> dict[str, Any]:
    import tifffile
    import zarr

    from zchunk.pipeline import run_filter

    folder = tempfile.mkdtemp(prefix="bench-filter-", dir=p["tmp_dir"])
    out = os.path.join(folder, f"g.{p['format']}")
    try:
        wall, summary = h.timed(
            lambda: run_filter(p["path"], "gaussian", out, params={"sigma": SIGMA}, progress=False)
        )
        if p["format"] == "zarr":
            arr = zarr.open_array(out, mode="r")
        else:
            arr = tifffile.memmap(out, mode="r")
        _check(p["path"], lambda y, x: arr[:, y : y + 24, x : x + 24], seed=1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"wall_s": wall, "bytes_read": summary["bytes_read"], "scheduler": "threads"}


def case_daskimage(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import zarr
    from dask_image import imread, ndfilters

    folder = tempfile.mkdtemp(prefix="bench-filter-di-", dir=p["tmp_dir"])
    out = os.path.join(folder, "g.zarr")
    try:

        def run() -> None:
            x = imread.imread(p["path"])
            g = ndfilters.gaussian_filter(x.astype(np.float32), SIGMA)
            g.to_zarr(out)

        wall, _ = h.timed(run)
        arr = zarr.open_array(out, mode="r")
        _check(p["path"], lambda y, x: arr[:, y : y + 24, x : x + 24], seed=1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"wall_s": wall, "scheduler": "threads"}


CASES = {"zchunk": case_zchunk, "daskimage": case_daskimage}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[250, 2048, 2048])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], choices=["daskimage"])
    ap.add_argument("--smoke", action="store_true", help="tiny stack, one repeat")
    args = ap.parse_args()
    if args.smoke:
        args.shape, args.repeat = [16, 128, 96], 1
    from zchunk.chunking import default_memory_limit

    shape = tuple(args.shape)
    path = make_input(shape)
    script = str(Path(__file__).resolve())
    base = {"path": str(path), "tmp_dir": str(h.data_dir())}
    nbytes = int(shape[0]) * shape[1] * shape[2] * 2
    h.raw_read([path])  # warm the page cache
    budget_mb = default_memory_limit() / 2**20
    rows = []
    cases = [("zchunk", "zarr"), ("zchunk", "tif")]
    if "daskimage" not in args.skip:
        cases.append(("daskimage", "zarr"))
    for case, fmt in cases:
        r = h.repeat_child(script, case, {**base, "format": fmt}, args.repeat)
        rows.append(
            h.emit(
                {
                    "name": f"gaussian3d_{case}_{fmt}",
                    "shape": list(shape),
                    "sigma": SIGMA,
                    "input_MB": round(nbytes / 1e6),
                    "wall_s_median": r["wall_s_median"],
                    "wall_s_min": r["wall_s_min"],
                    "MB_per_s": round(nbytes / r["wall_s_median"] / 1e6, 1),
                    "peak_rss_mb": r["peak_rss_mb"],
                    "rss_vs_budget_plus_300": round(r["peak_rss_mb"] / (budget_mb + 300), 3),
                    "machine": h.machine(),
                    "versions": h.versions(),
                }
            )
        )
    print()
    print(h.markdown_table(rows, ["name", "input_MB", "wall_s_median", "MB_per_s", "peak_rss_mb"]))
    print(f"\nbudget {budget_mb:.0f} MiB: target zchunk peak RSS <= {budget_mb + 300:.0f} MiB")


if __name__ == "__main__":
    if not h.child_main(CASES):
        main()
