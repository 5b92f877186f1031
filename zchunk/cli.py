"""The ``zchunk`` command line: the same words as the Python API.

Exit codes: 0 ok, 1 a comparison that differs, 2 a user error (printed as one line on stderr).
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from zchunk.errors import ZChunkError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["main"]


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="TIFF file, folder or glob of TIFFs, or .zarr / .ome.zarr")
    p.add_argument("--axes", help="axis letters overriding the metadata, e.g. czyx")
    p.add_argument(
        "--memory-limit",
        default=None,
        help="memory budget for all workers, e.g. 2GiB (default: 1 GiB or RAM/4)",
    )


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, help="worker threads (default: cores)")
    p.add_argument(
        "--scheduler",
        default="threads",
        choices=["threads", "processes", "synchronous"],
        help="dask scheduler (default: threads)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _cmd_info(args: argparse.Namespace) -> int:
    import zchunk
    from zchunk.describe import format_info

    stack = zchunk.open(args.source, axes=args.axes, memory_limit=args.memory_limit)
    d = zchunk.info(stack)
    print(json.dumps(d, indent=1, default=str) if args.json else format_info(d))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from zchunk.demo import run_demo

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
    p.set_defaults(func=_cmd_info)

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
    parser = _parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ZChunkError as exc:
        print(f"zchunk: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        if _is_user_value_error(exc):
            print(f"zchunk: error: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("zchunk: interrupted", file=sys.stderr)
        return 130


def _is_user_value_error(exc: Exception) -> bool:
    """Bad option values raise ValueError/TypeError from our own argument checks."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module: Any = tb.tb_frame.f_globals.get("__name__", "") if tb else ""
    return str(module).startswith("zchunk.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
