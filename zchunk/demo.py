"""``zchunk demo``: make a realistic sample and run the pipeline on it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from zchunk.sample import write_tiff_sequence, write_tiff_stack

__all__ = ["run_demo"]

SIZES = {"small": (40, 256, 256), "medium": (120, 1024, 1024)}


def run_demo(
    folder: str, *, progress: bool | None = None, quiet: bool = False, size: str = "medium"
) -> int:
    """Write a sample z-stack as one TIFF and as a folder of TIFFs, then describe both.

    Returns the exit code (0).
    """
    import zchunk
    from zchunk.describe import format_info

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    shape = SIZES[size]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stack_path = out / "embryo.tif"
    seq_path = out / "embryo-planes"
    t0 = time.perf_counter()
    if not stack_path.exists():
        say(f"writing a sample stack {shape} uint16 to {stack_path} ...")
        write_tiff_stack(
            str(stack_path),
            shape,
            "uint16",
            seed=7,
            imagej=True,
            resolution=(1 / 0.2, 1 / 0.2),
            metadata={"axes": "ZYX", "spacing": 1.0, "unit": "um"},
        )
    if not seq_path.exists():
        say(f"writing the same stack as single-page files in {seq_path}/ ...")
        tmp = f"{seq_path}.tmp-{os.getpid()}"
        write_tiff_sequence(tmp, shape, "uint16", seed=7)
        os.replace(tmp, seq_path)
    say(f"sample ready in {time.perf_counter() - t0:.1f} s\n")
    for source in (stack_path, seq_path):
        say(f"$ zchunk info {source}")
        say(format_info(zchunk.info(zchunk.open(str(source)))) + "\n")
    _ = progress
    return 0
