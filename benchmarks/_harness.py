"""Shared benchmark plumbing: child processes, OS-measured peak memory, cache control, output.

Every measured case runs in a fresh child process (``python SCRIPT --child CASE ARGS_JSON``): the
child times its own measured section and prints one JSON object; the parent reads the child's
peak RSS from the OS with ``os.wait4`` (mapped file pages count, as in ``top``). Repeats give
``wall_s`` min and median. Input data are written before any clock starts.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

ROOT = Path(__file__).resolve().parent


def data_dir() -> Path:
    """Folder for generated inputs: $ZCHUNK_BENCH_DATA or benchmarks/_data (git-ignored)."""
    path = Path(os.environ.get("ZCHUNK_BENCH_DATA", ROOT / "_data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def uncompressed_stack(shape: tuple[int, ...]) -> Path:
    """The generated uint16 stack (seed 1, one uncompressed TIFF) the benchmarks share.

    bench_read.py's "uncompressed" layout is the same file; it is written once, before any
    clock starts, and reused while it exists.
    """
    from zchunk.sample import write_tiff_stack

    tag = "x".join(map(str, shape))
    path = data_dir() / f"read-uncompressed-{tag}.tif"
    if not path.exists():
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        write_tiff_stack(str(tmp), shape, "uint16", seed=1)
        os.replace(tmp, path)
    return path


def versions() -> dict[str, str]:
    import dask
    import numba
    import numpy
    import tifffile
    import zarr

    import zchunk

    return {
        "python": platform.python_version(),
        "zchunk": zchunk.__version__,
        "numpy": numpy.__version__,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
        "tifffile": tifffile.__version__,
        "numba": numba.__version__,
    }


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def drop_cache(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Evict these files (and files inside these folders) from the page cache."""
    for root in paths:
        root = Path(root)
        files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else [root]
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def drop_page_cache(path: str | os.PathLike[str]) -> None:
    """Cold cache: drop every clean page as root (so no other file helps), else this file's."""
    if os.geteuid() == 0:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    else:
        drop_cache([path])


def raw_read(paths: Iterable[str | os.PathLike[str]], block: int = 16 * 2**20) -> dict[str, float]:
    """Read files sequentially with large preads; the disk/page-cache limit for these bytes."""
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                offset = 0
                while n := os.preadv(fd, [view], offset):
                    offset += n
                total += offset
            finally:
                os.close(fd)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "bytes": total, "MB_per_s": total / wall / 1e6}


def run_child(
    script: str, case: str, params: dict[str, Any], *, timeout: float = 3600
) -> dict[str, Any]:
    """Run one case of `script` in a child process; return its JSON plus peak_rss_mb."""
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(
            [sys.executable, script, "--child", case, json.dumps(params)],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
        t0 = time.perf_counter()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr = proc.stderr.read() if proc.stderr else ""
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0 or elapsed > timeout:
            msg = f"{case} failed with exit code {proc.returncode}:\n{stderr[-3000:]}"
            raise RuntimeError(msg)
        out.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1])
    # The child's own high-water mark (VmHWM), as the child read it from the OS at exit.
    # wait4's ru_maxrss would be at least the parent's size when it forked the child.
    result["peak_rss_mb"] = result.pop("vmhwm_mb", round(usage.ru_maxrss / 1024, 1))
    return result


def child_main(cases: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
    """If this process is a child (``--child CASE PARAMS``), run the case, print JSON, return True."""
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        params = json.loads(sys.argv[3])
        result = cases[sys.argv[2]](params)
        result.setdefault("vmhwm_mb", vmhwm_mb())
        print(json.dumps(result), flush=True)
        return True
    return False


def vmhwm_mb() -> float:
    """This process's peak resident memory (VmHWM) in MiB, as Linux counts it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    msg = "no VmHWM in /proc/self/status"
    raise RuntimeError(msg)


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds busy on the whole machine, and those of this process and its reaped children.

    Their difference over a case is the CPU that other processes (or the hypervisor: steal) took
    while it ran: the benchmarks' own check for contention from work that is not a benchmark.
    """
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def wait_idle(limit_s: float, *, cores: float = 0.15, window_s: float = 1.0) -> float:
    """Wait (up to `limit_s`) until the machine is idle: under `cores` busy over `window_s`."""
    waited = 0.0
    while waited < limit_s:
        b0, _ = cpu_seconds()
        time.sleep(window_s)
        waited += window_s
        if (cpu_seconds()[0] - b0) / window_s < cores:
            break
    return waited


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = func()
    return time.perf_counter() - t0, value


def repeat_child(
    script: str,
    case: str,
    params: dict[str, Any],
    repeat: int,
    before: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run a case `repeat` times; wall_s min/median and the largest peak RSS."""
    return repeat_cases(script, [case], params, repeat, before)[case]


def repeat_cases(
    script: str,
    cases: list[str],
    params: dict[str, Any],
    repeat: int,
    before: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run `cases` in turn, `repeat` rounds (interleaved: a noisy spell hits all of them).

    Returns, per case, its last JSON with wall_s min/median/runs and the largest peak RSS.
    """
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    for _ in range(repeat):
        for case in cases:
            if before is not None:
                before()
            runs[case].append(run_child(script, case, params))
    summary = {}
    for case, done in runs.items():
        walls = [r["wall_s"] for r in done]
        out = dict(done[-1])
        out["wall_s_min"] = round(min(walls), 4)
        out["wall_s_median"] = round(statistics.median(walls), 4)
        out["wall_s_runs"] = [round(w, 4) for w in walls]
        out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in done)
        out.pop("wall_s", None)
        summary[case] = out
    return summary


def emit(record: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(record), flush=True)
    return record


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
