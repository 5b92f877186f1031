"""``zchunk demo``: make a realistic sample and run the whole pipeline on it.

The sample is a z-stack of fluorescent blobs with shot and read noise, written as one ImageJ
multi-page TIFF and as a folder of single-page TIFFs (``z1.tif`` ... not zero-padded, so natural
sorting matters). The demo then does what the README tutorial does: count the images and the
x/y size, make max and median projections of both copies, and check with ``compare`` that the
file and the folder give the same projections.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from zchunk.sample import write_tiff_stack

__all__ = ["SIZES", "run_demo"]

#: Sample shapes (z, y, x), uint16: about 50 MB and 200 MB per copy.
SIZES = {"small": (48, 512, 512), "medium": (100, 1024, 1024)}


def _write_planes(stack_path: Path, folder: Path) -> None:
    """Copy every plane of `stack_path` to its own file, atomically as a folder."""
    import tifffile

    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffFile(stack_path) as tif:
        for i, page in enumerate(tif.pages):
            tifffile.imwrite(tmp / f"z{i + 1}.tif", page.asarray())
    os.replace(tmp, folder)


def run_demo(
    folder: str, *, progress: bool | None = None, quiet: bool = False, size: str = "medium"
) -> int:
    """Write the sample, describe it, project it, and compare file against folder.

    Returns the exit code: 0 when the file and the folder give identical projections.
    """
    import zchunk
    from zchunk.describe import format_info
    from zchunk.pipeline import RunOptions, run_project

    def say(text: str = "") -> None:
        if not quiet:
            print(text, flush=True)

    shape = SIZES[size]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stack_path = out / "embryo.tif"
    planes_path = out / "embryo-planes"
    t0 = time.perf_counter()
    if not stack_path.exists():
        say(f"writing a sample z-stack {shape} uint16 to {stack_path} ...")
        tmp = out / f".embryo.tif.tmp-{os.getpid()}"
        write_tiff_stack(
            str(tmp),
            shape,
            "uint16",
            seed=7,
            imagej=True,
            resolution=(1 / 0.2, 1 / 0.2),
            metadata={"axes": "ZYX", "spacing": 1.0, "unit": "um"},
        )
        os.replace(tmp, stack_path)
    if not planes_path.exists():
        say(f"writing the same planes as single-page files in {planes_path}/ ...")
        _write_planes(stack_path, planes_path)
    say(f"sample ready ({time.perf_counter() - t0:.1f} s)\n")

    results = {}
    for source, tag in ((stack_path, "file"), (planes_path, "folder")):
        say(f"$ zchunk info {source}")
        say(format_info(zchunk.info(zchunk.open(str(source)))) + "\n")
        target = out / f"projections-{tag}"
        say(f"$ zchunk project {source} -m max -m median -o {target} --overwrite")
        summary = run_project(
            str(source),
            ["max", "median"],
            str(target),
            RunOptions(overwrite=True, progress=progress),
        )
        say(
            f"  {summary['wall_s']:.2f} s ({summary['MB_per_s']:.0f} MB/s), "
            f"peak memory {summary['peak_rss_mb']:.0f} MiB"
        )
        results[tag] = summary["outputs"]
        say()

    ok = True
    for method in ("max", "median"):
        a, b = results["file"][method], results["folder"][method]
        say(f"$ zchunk compare {a} {b}")
        c = zchunk.compare(zchunk.open(a), zchunk.open(b))
        say(f"  max abs difference {c.max_abs_diff:g}, {c.differing} pixels differ")
        ok = ok and c.equal
    from zchunk.preview import preview

    shown = [zchunk.open(results["file"][m]) for m in ("max", "median")]
    png = preview(
        [*shown, zchunk.open(str(stack_path))],
        out / "preview.png",
        titles=["max projection", "median projection", "embryo.tif"],
        overwrite=True,
    )
    say(f"\n$ zchunk preview {results['file']['max']} {results['file']['median']} ... -o {png}")
    mip = zchunk.open(results["file"]["max"]).data.compute()
    say(
        f"\nmax projection: {mip.shape[1]} x {mip.shape[0]} pixels, "
        f"values {int(mip.min())}..{int(mip.max())}, mean {float(np.mean(mip)):.0f}"
    )
    say(f"everything is in {out.resolve()}")
    say("file and folder give identical projections" if ok else "MISMATCH between file and folder")
    return 0 if ok else 1
