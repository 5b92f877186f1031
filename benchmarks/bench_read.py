"""How fast does zchunk read, against the raw read of the same bytes?

For one generated uint16 stack stored four ways (uncompressed, striped zlib, tiled zstd, a folder
of single-page files), time two full passes over the stack and the raw sequential read of the
same files (16 MiB preads into one buffer), warm and cold (the script evicts only its own files
with posix_fadvise DONTNEED), in interleaved rounds, and count bytes read and segments decoded
against what is stored:

* "max": ``zchunk.project(stack, "max")``, the engine's own pass over every byte, as the
  projections read (plane by plane in tall bands, through one reused buffer; a max is the
  lightest reduction: a sum widens every pixel to 64 bits and costs more than the reading);
* "chunks": every chunk of ``stack.data`` materialised (one pixel of it kept), as a user's own
  ``map_blocks`` or a filter reads: each chunk is fresh memory, the whole z of a band.

    python benchmarks/bench_read.py --shape 250 2048 2048 --repeat 3
    python benchmarks/bench_read.py --smoke
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

LAYOUTS = {
    "uncompressed": {},
    "striped-zlib": {"compression": "zlib", "rowsperstrip": 64, "predictor": True},
    "tiled-zstd": {"compression": "zstd", "tile": (256, 256)},
    "folder": {},
}


def make_input(layout: str, shape: tuple[int, ...]) -> Path:
    from zchunk.testing import write_tiff_sequence, write_tiff_stack

    tag = "x".join(map(str, shape))
    path = h.data_dir() / f"read-{layout}-{tag}{'' if layout == 'folder' else '.tif'}"
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".tmp")
    if layout == "folder":
        write_tiff_sequence(str(tmp), shape, "uint16", seed=1)
    else:
        write_tiff_stack(str(tmp), shape, "uint16", seed=1, **LAYOUTS[layout])
    os.replace(tmp, path)
    return path


def case_pass(p: dict) -> dict:
    import dask

    import zchunk
    from zchunk.io import _tiff
    from zchunk.scheduler import compute_context

    s = zchunk.open(p["path"], memory_limit=p.get("memory_limit"))
    # the pass reads every chunk and keeps one pixel of each: the time is the reading
    touched = s.data.map_blocks(
        lambda b: b.reshape(-1)[:1].reshape((1,) * b.ndim).copy(),  # a copy frees the block
        chunks=tuple((1,) * n for n in s.data.numblocks),
    )
    _tiff.READ_STATS.reset()
    with compute_context("threads"):  # zchunk's threads, as the pipeline runs them
        wall, _ = h.timed(lambda: dask.compute(touched))
    layout = s.attrs["layout"]
    segments = s.shape[0] * layout["segments_per_plane"]
    return {
        "wall_s": wall,
        "stored_bytes": layout["stored_bytes"],
        "bytes_read": _tiff.READ_STATS.bytes_read,
        "segments_decoded": _tiff.READ_STATS.segments_decoded,
        "segments_stored": segments,
        "chunks": list(s.data.chunksize),
        "tasks": s.data.npartitions,
        "nbytes": int(s.data.nbytes),
    }


def case_max(p: dict) -> dict:
    import zchunk
    from zchunk.io import _tiff
    from zchunk.scheduler import compute_context

    s = zchunk.open(p["path"], memory_limit=p.get("memory_limit"))
    total = zchunk.project(s, "max").data
    _tiff.READ_STATS.reset()
    with compute_context("threads"):
        wall, _ = h.timed(total.compute)
    layout = s.attrs["layout"]
    return {
        "wall_s": wall,
        "stored_bytes": layout["stored_bytes"],
        "bytes_read": _tiff.READ_STATS.bytes_read,
        "segments_decoded": _tiff.READ_STATS.segments_decoded,
        "segments_stored": s.shape[0] * layout["segments_per_plane"],
        "tasks": total.npartitions,
        "nbytes": int(s.data.nbytes),
    }


def case_raw(p: dict) -> dict:
    r = h.raw_read([p["path"]])
    return {"wall_s": r["wall_s"], "bytes": r["bytes"]}


CASES = {"chunks": case_pass, "max": case_max, "raw": case_raw}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[250, 2048, 2048])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    ap.add_argument("--memory-limit", default=None)
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    ap.add_argument("--smoke", action="store_true", help="tiny stack, one repeat: checks it runs")
    args = ap.parse_args()
    if args.smoke:
        args.shape, args.repeat = [12, 256, 192], 1
    shape = tuple(args.shape)
    script = str(Path(__file__).resolve())
    rows = []
    for layout in args.layouts:
        path = make_input(layout, shape)
        params = {"path": str(path), "memory_limit": args.memory_limit}
        for cache in ["warm"] + ([] if args.no_cold else ["cold"]):
            before = functools.partial(h.drop_cache, [path]) if cache == "cold" else None
            if cache == "warm":
                h.raw_read([path])  # bring the files into the page cache
            runs = h.repeat_cases(script, ["raw", "max", "chunks"], params, args.repeat, before)
            raw, zc, chunks = runs["raw"], runs["max"], runs["chunks"]
            mbps = zc["nbytes"] / zc["wall_s_median"] / 1e6
            raw_mbps = raw["bytes"] / raw["wall_s_median"] / 1e6
            row = {
                "name": "read_pass",
                "layout": layout,
                "cache": cache,
                "shape": list(shape),
                "stored_MB": round(zc["stored_bytes"] / 1e6, 1),
                "raw_s": raw["wall_s_median"],
                "max_s": zc["wall_s_median"],
                "chunks_s": chunks["wall_s_median"],
                "max_MB_per_s": round(mbps, 1),
                "raw_MB_per_s": round(raw_mbps, 1),
                "max_rate_ratio": round(raw["wall_s_median"] / zc["wall_s_median"], 3),
                "chunks_rate_ratio": round(raw["wall_s_median"] / chunks["wall_s_median"], 3),
                "read_ratio": round(zc["bytes_read"] / zc["stored_bytes"], 3),
                "chunks_read_ratio": round(chunks["bytes_read"] / chunks["stored_bytes"], 3),
                "decode_ratio": (
                    round(zc["segments_decoded"] / zc["segments_stored"], 3)
                    if zc["segments_decoded"]
                    else None
                ),
                "chunks_decode_ratio": (
                    round(chunks["segments_decoded"] / chunks["segments_stored"], 3)
                    if chunks["segments_decoded"]
                    else None
                ),
                "peak_rss_mb": zc["peak_rss_mb"],
                "chunks_peak_rss_mb": chunks["peak_rss_mb"],
                "tasks": zc["tasks"],
                "chunks": chunks["chunks"],
                "runs_s": {k: v["wall_s_runs"] for k, v in runs.items()},
                "machine": h.machine(),
                "versions": h.versions(),
            }
            rows.append(h.emit(row))
    print()
    print(
        h.markdown_table(
            rows,
            [
                "layout",
                "cache",
                "stored_MB",
                "raw_s",
                "max_s",
                "max_rate_ratio",
                "chunks_s",
                "chunks_rate_ratio",
                "read_ratio",
                "decode_ratio",
                "chunks_decode_ratio",
                "peak_rss_mb",
                "chunks_peak_rss_mb",
            ],
        )
    )
    print(
        "\n*_rate_ratio = raw read time / pass time (1.0: the pass reads at the raw rate); "
        "max = zchunk.project(stack, 'max'), chunks = every chunk of stack.data materialised; "
        "read_ratio = bytes read / stored, decode_ratio = segments decoded / stored (max pass)"
    )


if __name__ == "__main__":
    if not h.child_main(CASES):
        main()
