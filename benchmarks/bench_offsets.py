"""Cold reads of pixels at an odd offset (ImageJ's files) against page-aligned ones, O_DIRECT on and off.

ImageJ writes a stack's pixels right after its header, at offsets such as 439 or 2495: not a
multiple of the pixel size, let alone of a page. zchunk's O_DIRECT plane streams
(``zchunk/io/_direct.py``) read such a plane from the page below it to the page above it and
copy it once into an aligned plane; pixel-aligned planes are used in place. This benchmark
writes the same uint16 stack twice as a plain BigTIFF (one strip per plane, pixels contiguous),
once with the pixels on a page boundary and once 1043 bytes (odd) past one, and times a cold max
projection (``zchunk.project(stack, "max")``, each run in a child process after the page cache
is dropped) of each file with O_DIRECT reads on and off, interleaved, with the raw sequential
read of the file as the floor. Every projection is checked against numpy's: plane z of the
files is plane ``z % 4`` of a pool of four, so the max is that of the pool.

    python benchmarks/bench_offsets.py --planes 250 --repeat 3     # 8.4 GB per file
    python benchmarks/bench_offsets.py --smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

ODD_OFFSET = 1043  # pixels this far past a page: odd, as ImageJ's (439, 2495, ...)
_TAGS = 9
_IFD_BYTES = 8 + _TAGS * 20 + 8


def _planes(ny: int, nx: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.integers(0, 4000, (ny, nx), dtype=np.uint16) for _ in range(4)]


def write_stack(path: Path, shape: tuple[int, int, int], offset: int) -> None:
    """Write a BigTIFF of `shape` uint16 whose pixels start at byte `offset`, plane after plane.

    Plane z is pool plane ``z % 4`` (so the max over z is the max of the pool planes). Written
    by hand: tifffile pads what it writes to even offsets.
    """
    nz, ny, nx = shape
    plane_bytes = ny * nx * 2
    first = 16
    if offset < first + nz * _IFD_BYTES:
        msg = f"offset {offset} is inside the {nz} IFDs"
        raise ValueError(msg)
    pool = _planes(ny, nx)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, first))
        for z in range(nz):
            here = first + z * _IFD_BYTES
            tags = [
                (256, 4, nx),
                (257, 4, ny),
                (258, 3, 16),
                (259, 3, 1),
                (262, 3, 1),
                (273, 16, offset + z * plane_bytes),
                (277, 3, 1),
                (278, 4, ny),
                (279, 16, plane_bytes),
            ]
            f.write(struct.pack("<Q", len(tags)))
            f.writelines(struct.pack("<HHQQ", code, kind, 1, value) for code, kind, value in tags)
            f.write(struct.pack("<Q", here + _IFD_BYTES if z < nz - 1 else 0))
        f.write(b"\0" * (offset - f.tell()))
        for z in range(nz):
            f.write(pool[z % 4].tobytes())
    os.replace(tmp, path)


def case_max(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    import zchunk
    from zchunk.io import _tiff

    _tiff.DIRECT_READS = p["direct"]
    used = []
    real = _tiff.DirectRanges

    def spy(*args: Any, **kwargs: Any) -> Any:
        used.append(1)
        return real(*args, **kwargs)

    _tiff.DirectRanges = spy  # type: ignore[assignment, misc]
    cpu0 = os.times()
    t0 = time.perf_counter()
    top = zchunk.project(zchunk.open(p["path"]), "max").data.compute()
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    nz, ny, nx = p["shape"]
    pool = _planes(ny, nx)
    expected = np.max(np.stack(pool[: min(4, nz)]), axis=0)
    assert np.array_equal(top, expected), "max projection differs from numpy's"
    return {
        "wall_s": wall,
        "user_s": cpu1.user - cpu0.user,
        "sys_s": cpu1.system - cpu0.system,
        "direct_streams": len(used),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--planes", type=int, default=250, help="planes of 4096 x 4096 uint16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--smoke", action="store_true", help="two small files, one round")
    args = ap.parse_args()
    shape = (args.planes, 4096, 4096)
    if args.smoke:
        shape, args.repeat = (6, 512, 1024), 1
    folder = h.data_dir() / "offsets"
    folder.mkdir(exist_ok=True)
    tag = "x".join(map(str, shape))
    page = 4096 * (1 + (16 + shape[0] * _IFD_BYTES) // 4096)  # the first page after the IFDs
    files = {
        "aligned": (folder / f"aligned-{tag}.tif", page),
        "odd": (folder / f"odd-{tag}.tif", page + ODD_OFFSET),
    }
    for path, offset in files.values():
        if not path.exists():
            write_stack(path, shape, offset)
    script = str(Path(__file__).resolve())
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for _ in range(args.repeat):
            for name, (path, offset) in files.items():
                h.drop_page_cache(path)
                raw = h.raw_read([path])
                runs.setdefault(f"raw read, {name}", []).append(raw)
                for direct in (True, False):
                    h.drop_page_cache(path)
                    params = {"path": str(path), "direct": direct, "shape": list(shape)}
                    r = h.run_child(script, "max", params)
                    r["offset"] = offset
                    label = f"max, {name}, O_DIRECT {'on' if direct else 'off'}"
                    runs.setdefault(label, []).append(r)
                    print(f"# {label}: {r['wall_s']:.2f} s", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            for path, _ in files.values():
                path.unlink(missing_ok=True)
    rows = []
    nbytes = shape[0] * shape[1] * shape[2] * 2
    for label, done in runs.items():
        wall = statistics.median(r["wall_s"] for r in done)
        row = {
            "name": label,
            "input_GB": round(nbytes / 1e9, 2),
            "wall_s_median": round(wall, 2),
            "wall_s_runs": [round(r["wall_s"], 2) for r in done],
            "MB_per_s": round(nbytes / wall / 1e6),
        }
        if "user_s" in done[0]:
            row["user_s"] = round(statistics.median(r["user_s"] for r in done), 2)
            row["sys_s"] = round(statistics.median(r["sys_s"] for r in done), 2)
            row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in done)
            row["direct_streams"] = done[0]["direct_streams"]
        rows.append(h.emit({**row, "machine": h.machine(), "versions": h.versions()}))
    print()
    columns = ["name", "input_GB", "wall_s_median", "MB_per_s", "user_s", "sys_s", "peak_rss_mb"]
    print(h.markdown_table(rows, [*columns, "direct_streams"]))


if __name__ == "__main__":
    if not h.child_main({"max": case_max}):
        main()
