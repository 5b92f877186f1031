"""The ``zchunk`` command line: the same words as the Python API.

Exit codes: 0 ok, 1 a comparison that differs, 2 a user error (printed as one line on stderr).
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from zchunk.errors import ZChunkError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from zchunk._options import RunOptions

__all__ = ["main"]

#: The thread pools of numpy's and scipy's BLAS (each wheel bundles an OpenBLAS that starts one
#: thread per core when it loads): zchunk's parallelism is dask's, one task per worker thread,
#: so a BLAS pool would only compete with it. One thread each, unless the user set them, as
#: dask.distributed does for its workers ("distributed.nanny.pre-spawn-environ").
SINGLE_THREADED = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="TIFF file, folder or glob of TIFFs, or .zarr / .ome.zarr")
    p.add_argument("--axes", help="axis letters overriding the metadata, e.g. czyx")
    p.add_argument(
        "--memory-limit",
        default=None,
        help="memory budget for all workers, e.g. 2GiB (default: 1 GiB or RAM/4)",
    )
    p.add_argument(
        "--scale",
        default=None,
        help="pixel sizes in um for inputs without calibration: z,y,x (e.g. 1,0.2,0.2)",
    )
    p.add_argument(
        "--pattern",
        default=None,
        help="a folder's axes from its file names: a regular expression with (name, index) "
        "group pairs or named groups t/c/z, e.g. 'T(?P<t>[0-9]+)_Z(?P<z>[0-9]+)' (default: "
        "tokens like t0001, Ch1, z005, Pos0)",
    )


def _scheduler(value: str) -> str:
    """Check a ``--scheduler`` value: a local scheduler's name or a scheduler address."""
    from zchunk.pipeline import SCHEDULERS, is_scheduler_address

    if value in SCHEDULERS or is_scheduler_address(value):
        return value
    msg = (
        f"{value!r} is not one of {', '.join(SCHEDULERS)} nor a dask scheduler address "
        "like tcp://10.0.0.5:8786"
    )
    raise argparse.ArgumentTypeError(msg)


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker threads, or processes with --scheduler processes (default: cores); "
        "a remote cluster has the workers it has",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        type=_scheduler,
        default=None,
        metavar="threads|processes|ADDRESS",
        help=(
            "threads (default), processes (a local dask.distributed cluster of --workers "
            "processes sharing --memory-limit), synchronous (debugging), or the address of a "
            "running dask scheduler, e.g. tcp://10.0.0.5:8786"
        ),
    )
    where.add_argument(
        "--scheduler-file",
        default=None,
        metavar="FILE",
        help="connect to the dask scheduler described in FILE (dask scheduler --scheduler-file)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _scale(args: argparse.Namespace) -> dict[str, float] | None:
    from zchunk.io import parse_scale

    return parse_scale(args.scale) if args.scale else None


def _add_write(p: argparse.ArgumentParser) -> None:
    """Options of commands that write outputs."""
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the partial output of an interrupted run with the same settings",
    )
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="read an input with missing blocks or chunks (they read as zeros)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument(
        "--pyramid",
        type=int,
        default=0,
        metavar="N",
        help="with an .ome.zarr output: N extra levels, y/x halved each (mean)",
    )
    p.add_argument(
        "--ngff-version",
        choices=["0.4", "0.5"],
        default=None,
        help="NGFF version of .ome.zarr outputs: 0.5 (default, zarr v3) or 0.4 (Fiji's readers)",
    )


def _cmd_info(args: argparse.Namespace) -> int:
    from zchunk.budget import Budget
    from zchunk.chunking import PROJECTION
    from zchunk.describe import describe_found, format_info
    from zchunk.io import OpenArgs, find

    budget = Budget.parse(args.memory_limit)
    opened = OpenArgs(
        args.source, args.axes, budget, args.allow_incomplete, _scale(args), args.pattern
    )
    found = find(opened, whole="z", purpose=PROJECTION)  # headers and plan: no dask array
    d = describe_found(found)
    print(json.dumps(d, indent=1, default=str) if args.json else format_info(d))
    return 0


def _print_summary(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        for note in summary.get("notes", ()):
            print(f"zchunk: note: {note}", file=sys.stderr)
        for name, path in summary["outputs"].items():
            print(f"{name}: {path}")
        print(
            f"{summary['wall_s']:.1f} s, {summary['MB_per_s']:.0f} MB/s, "
            f"peak memory {summary['peak_rss_mb']:.0f} MiB"
        )


def _run_options(args: argparse.Namespace) -> RunOptions:
    """Return the options of ``project``, ``filter`` and ``convert``, from their flags."""
    from zchunk._options import RunOptions

    return RunOptions(
        axes=args.axes,
        scale=_scale(args),
        pattern=args.pattern,
        allow_incomplete=args.allow_incomplete,
        memory_limit=args.memory_limit,
        workers=args.workers,
        scheduler=args.scheduler,
        scheduler_file=args.scheduler_file,
        progress=False if args.quiet else args.progress,
        overwrite=args.overwrite,
        resume=args.resume,
        compression=args.compression,
        pyramid=args.pyramid,
        ngff_version=args.ngff_version,
    )


def _cmd_project(args: argparse.Namespace) -> int:
    from zchunk.pipeline import run_project

    prefilter = None
    if args.gaussian is not None:
        prefilter = ("gaussian", {"sigma": args.gaussian, "per_plane": args.per_plane})
    summary = run_project(
        args.source,
        args.method or ["max"],
        args.output,
        _run_options(args),
        axis=args.axis,
        q=args.q,
        like=args.like,
        dtype=args.dtype,
        fmt=args.format,
        prefilter=prefilter,
    )
    _print_summary(args, summary)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from zchunk.pipeline import run_convert

    _print_summary(args, run_convert(args.source, args.output, _run_options(args)))
    return 0


def _filter_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.sigma is not None:
        params["sigma"] = args.sigma[0] if len(args.sigma) == 1 else tuple(args.sigma)
    if args.size is not None:
        params["size"] = args.size[0] if len(args.size) == 1 else tuple(args.size)
    if args.per_plane is not None:
        params["per_plane"] = args.per_plane
    if args.mode is not None:
        params["mode"] = args.mode
    if getattr(args, "dtype", None) is not None:
        params["dtype"] = args.dtype
    return params


def _cmd_filter(args: argparse.Namespace) -> int:
    from zchunk.pipeline import run_filter

    options = _run_options(args)
    summary = run_filter(args.source, args.name, args.output, options, params=_filter_params(args))
    _print_summary(args, summary)
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    import zchunk
    from zchunk.budget import Budget
    from zchunk.preview import preview

    budget = Budget.parse(args.memory_limit)
    stacks = [zchunk.open(s, memory_limit=budget) for s in args.inputs]
    out = preview(stacks, args.output, planes=args.planes, overwrite=args.overwrite)
    if not args.quiet:
        print(f"preview: {out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import zchunk
    from zchunk.budget import Budget

    budget = Budget.parse(args.memory_limit)
    a = zchunk.open(args.a, memory_limit=budget)
    b = zchunk.open(args.b, memory_limit=budget)
    result = zchunk.compare(a, b, atol=args.atol)
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, **result.as_dict()}))
    elif not args.quiet:
        print(f"A: {args.a}  shape {result.shape_a}  {result.dtype_a}")
        print(f"B: {args.b}  shape {result.shape_b}  {result.dtype_b}")
        if result.max_abs_diff is None:
            print("different shapes")
        else:
            print(f"max abs difference {result.max_abs_diff:g}")
            print(f"pixels differing by more than {args.atol:g}: {result.differing}")
        print("EQUAL" if result.equal else "DIFFERENT")
    return 0 if result.equal else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from zchunk.demo import run_demo
    from zchunk.pipeline import compute_context

    # every computation of the demo runs on the scheduler chosen here
    with compute_context(args.scheduler, scheduler_file=args.scheduler_file, workers=args.workers):
        return run_demo(args.dir, progress=args.progress, quiet=args.quiet, size=args.size)


def _parser() -> argparse.ArgumentParser:
    from zchunk import __version__

    parser = argparse.ArgumentParser(
        prog="zchunk",
        description="Project and filter microscopy image stacks bigger than memory.",
    )
    parser.add_argument("--version", action="version", version=f"zchunk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="describe a stack: images, x/y size, layout, chunk plan")
    _add_source(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="describe an input with missing blocks or chunks (a partial output) anyway",
    )
    p.set_defaults(func=_cmd_info)

    from zchunk._types import METHODS
    from zchunk.sinks import FORMATS

    p = sub.add_parser(
        "project",
        help="z (or t) projections: max, min, sum, mean, std, median, percentile",
        description=(
            "Project a stack along z (or t) with one or more methods, reading the input once. "
            "With one -m, OUT is the output file (format from its suffix: .tif, .ome.tif, "
            ".zarr, .ome.zarr); with several, OUT is a folder holding <method>.tif "
            "(or --format zarr...)."
        ),
    )
    _add_source(p)
    p.add_argument(
        "-m",
        "--method",
        action="append",
        choices=METHODS,
        help="projection method, repeatable (default: max)",
    )
    p.add_argument("-o", "--output", required=True, help="output file, or folder for several -m")
    p.add_argument("--axis", choices=["z", "t"], default="z", help="axis to reduce (default z)")
    p.add_argument("--q", type=float, default=None, help="percentile in 0..100 (-m percentile)")
    p.add_argument(
        "--like",
        choices=["numpy", "imagej"],
        default="numpy",
        help="numpy's dtypes (default) or ImageJ 1.54 Z Project, bit for bit",
    )
    p.add_argument("--dtype", default=None, help="cast results, rounded and clipped (e.g. uint16)")
    p.add_argument(
        "--format", choices=list(FORMATS), default=None, help="format of files in an OUT folder"
    )
    p.add_argument("--compression", default=None, help="TIFF compression: zlib, zstd, lzw...")
    p.add_argument(
        "--gaussian",
        type=float,
        default=None,
        metavar="SIGMA",
        help="Gaussian low-pass (sigma in pixels) before projecting, in the same pass",
    )
    p.add_argument(
        "--per-plane",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --gaussian: filter each plane in 2-D (ImageJ's stack mode)",
    )
    _add_write(p)
    _add_run(p)
    p.set_defaults(func=_cmd_project)

    from zchunk._types import FILTERS, MODES

    p = sub.add_parser(
        "filter",
        help="filter a whole volume: gaussian, sobel, median, ... streamed to TIFF or zarr",
        description=(
            "Filter a stack chunk by chunk (halos exchanged between y/x neighbours only) and "
            "write the filtered volume; the format follows OUT's suffix (.tif, .ome.tif, .zarr, "
            ".ome.zarr). Integer data are computed in float32; the output is float32 unless "
            "--dtype casts it (rounded and clipped). Rank filters keep the input type."
        ),
    )
    _add_source(p)
    p.add_argument("name", choices=FILTERS, help="the filter")
    p.add_argument(
        "--sigma", type=float, nargs="+", help="Gaussian sigma in pixels: one, or one per z y x"
    )
    p.add_argument("--size", type=int, nargs="+", help="window size in pixels: one, or per z y x")
    p.add_argument(
        "--per-plane",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="filter each plane in 2-D (default: 3-D, except sobel/prewitt)",
    )
    p.add_argument("--mode", choices=MODES, default=None, help="border handling (default reflect)")
    p.add_argument("--dtype", default=None, help="cast the output, rounded and clipped")
    p.add_argument("-o", "--output", required=True, help="output .tif, .ome.tif, .zarr, .ome.zarr")
    p.add_argument("--compression", default=None, help="TIFF compression: zlib, zstd, lzw...")
    _add_write(p)
    _add_run(p)
    p.set_defaults(func=_cmd_filter)

    p = sub.add_parser(
        "convert",
        help="convert any input to any output (OME-Zarr, zarr, OME-TIFF, ImageJ TIFF)",
        description=(
            "Write SOURCE to OUTPUT in the format OUTPUT's suffix names (.tif, .ome.tif, "
            ".zarr, .ome.zarr), block by block, pixels unchanged; axes, calibration and "
            "channel names and colours are kept. Resumable; --pyramid N adds levels to an "
            ".ome.zarr output."
        ),
    )
    _add_source(p)
    p.add_argument("output", help="output .tif, .ome.tif, .zarr or .ome.zarr")
    p.add_argument("--compression", default=None, help="TIFF compression: zlib, zstd, lzw...")
    _add_write(p)
    _add_run(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "compare",
        help="compare two images; exit 0 when equal within --atol, 1 when not",
        description=(
            "Compare two images (TIFF, zarr...) pixel by pixel, streamed. Prints both shapes and "
            "dtypes, the max absolute difference and the number of pixels differing by more "
            "than --atol. Exit code 0 when equal, 1 when different, 2 on error."
        ),
    )
    p.add_argument("a", help="first image")
    p.add_argument("b", help="second image")
    p.add_argument("--atol", type=float, default=0.0, help="tolerated absolute difference")
    p.add_argument("--memory-limit", default=None, help="memory budget, e.g. 2GiB")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="print nothing; use the exit code")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "preview",
        help="a PNG montage of projections (or of a few planes of volumes) to look at",
        description=(
            "Write a PNG: one panel per 2-D image (a projection), a few evenly spaced planes "
            "per volume; contrast stretched between the 0.5 and 99.5 percentiles, titled, with a "
            "scale bar when the pixel size is known. Only the pixels shown are read."
        ),
    )
    p.add_argument("inputs", nargs="+", help="images: projections (.tif, .zarr) or stacks")
    p.add_argument("-o", "--output", required=True, help="the PNG to write")
    p.add_argument("--planes", type=int, default=3, help="planes shown per volume (default 3)")
    p.add_argument("--memory-limit", default=None, help="memory budget, e.g. 2GiB")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_cmd_preview)

    p = sub.add_parser("demo", help="make a sample stack and run the pipeline on it")
    p.add_argument("dir", nargs="?", default="zchunk-demo", help="output folder")
    p.add_argument(
        "--size", choices=["small", "medium"], default="medium", help="sample size (default medium)"
    )
    _add_run(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    if argv is None:  # the process is zchunk's: before numpy or scipy load their BLAS
        for name in SINGLE_THREADED:
            os.environ.setdefault(name, "1")
    parser = _parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    from zchunk.errors import SPEAKING

    token = SPEAKING.set("cli")  # errors spell options as flags: --like numpy
    try:
        return func(args)
    except ZChunkError as exc:
        print(f"zchunk: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return _interrupted(exc, standalone=argv is None)
    except BrokenPipeError:  # e.g. `zchunk info X | head -1`: the reader left
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("zchunk: error: the output pipe was closed before the end", file=sys.stderr)
        return 2
    finally:
        SPEAKING.reset(token)


def _interrupted(exc: KeyboardInterrupt, *, standalone: bool) -> int:
    """Say in one line that the run was interrupted, and how to resume it; exit code 130."""
    notes = [n.removeprefix("zchunk: ") for n in getattr(exc, "__notes__", [])]
    kept = f"; {notes[0]}" if notes else ""  # the partial output kept, and --resume
    print(f"zchunk: interrupted{kept}", file=sys.stderr, flush=True)
    if standalone:  # end now: worker threads still running would print their own tracebacks
        sys.stdout.flush()
        os._exit(130)
    return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
