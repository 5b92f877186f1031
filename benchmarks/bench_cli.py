"""How long does a whole ``zchunk`` command take, start-up included, against ImageJ?

    python benchmarks/bench_cli.py                 # the demo's stack (100 x 1024 x 1024 uint16)
    python benchmarks/bench_cli.py --smoke         # a small stack, 3 runs

Users loop zchunk over many small stacks from the shell, so the process is what counts: every
case is a fresh process, timed from outside (median of `--repeat` runs after one warm-up run,
so the page cache is warm and numba's kernels are compiled and cached, as after ``make
install``). The input is written before any clock starts, as ``zchunk demo`` writes it (an
ImageJ hyperstack with calibration). When ``imagej`` is on PATH, ImageJ's own load + Z Project
of the same file runs beside (``xvfb-run -a imagej -b macro.ijm``: Debian's imagej, JVM start included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

#: Wall-time targets of issue 14 (seconds, median), for the demo's stack.
TARGETS = {"version": 0.2, "info": 0.5, "project max": 0.8, "project median": 1.2}

MACRO = """
setBatchMode(true);
open("{src}");
run("Z Project...", "projection=[{method}]");
saveAs("Tiff", "{out}");
close("*");
"""


def demo_stack(shape: tuple[int, ...]) -> Path:
    """The demo's sample stack (written once, before any clock)."""
    from zchunk.sample import write_tiff_stack

    path = h.data_dir() / f"cli-demo-{'x'.join(map(str, shape))}.tif"
    if not path.exists():
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        write_tiff_stack(
            str(tmp),
            shape,
            "uint16",
            seed=7,
            imagej=True,
            resolution=(5.0, 5.0),
            metadata={"axes": "ZYX", "spacing": 1.0, "unit": "um"},
        )
        os.replace(tmp, path)
    return path


def time_process(
    cmd: list[str], repeat: int, timeout: float, output: Path | None = None
) -> dict[str, float]:
    """Run `cmd` once unmeasured, then `repeat` times; return wall min/median and CPU seconds.

    (No peak memory here: a spawned child's ``ru_maxrss`` counts pages of this process.)
    With `output`, success is that file written by the run (Debian's imagej wrapper exits 1
    even when the macro ran); otherwise exit status 0.
    """
    walls, cpus = [], []
    with tempfile.NamedTemporaryFile(prefix="bench-cli-err-") as err:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, err.name, os.O_WRONLY | os.O_TRUNC, 0),
        ]
        for i in range(repeat + 1):
            if output is not None:
                output.unlink(missing_ok=True)
            t0 = time.perf_counter()
            pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=actions)
            _, status, usage = os.wait4(pid, 0)
            wall = time.perf_counter() - t0
            code = os.waitstatus_to_exitcode(status)
            if (code != 0) if output is None else not output.exists():
                tail = Path(err.name).read_text(errors="replace")[-1000:]
                msg = f"{' '.join(cmd)} failed (exit {code}): {tail}"
                raise RuntimeError(msg)
            if wall > timeout:
                msg = f"{' '.join(cmd)} took {wall:.1f} s, over {timeout} s"
                raise RuntimeError(msg)
            if i:  # the first run warms the page cache and numba's on-disk cache
                walls.append(wall)
                cpus.append(usage.ru_utime + usage.ru_stime)
    return {
        "wall_s_min": round(min(walls), 3),
        "wall_s_median": round(statistics.median(walls), 3),
        "cpu_s_median": round(statistics.median(cpus), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[100, 1024, 1024])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="a small stack and 3 runs")
    ap.add_argument("--no-imagej", action="store_true", help="time zchunk only")
    args = ap.parse_args()
    shape = (16, 256, 256) if args.smoke else tuple(args.shape)
    repeat = 3 if args.smoke else args.repeat
    src = demo_stack(shape)
    zchunk = [sys.executable, "-m", "zchunk"]
    exe = Path(sys.executable).with_name("zchunk")
    if exe.exists():  # the installed entry point, as users run it
        zchunk = [str(exe)]
    out = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    cases = {
        "version": [*zchunk, "--version"],
        "info": [*zchunk, "info", str(src)],
        "project max": [*zchunk, "project", str(src), "-m", "max", "-o", str(out / "max.tif")],
        "project median": [
            *zchunk,
            "project",
            str(src),
            "-m",
            "median",
            "-o",
            str(out / "median.tif"),
        ],
    }
    for name in ("project max", "project median"):
        cases[name].append("--overwrite")
    outputs: dict[str, Path] = {}
    # --smoke checks the script in CI: no JVM and no X server there
    imagej = None if (args.no_imagej or args.smoke) else shutil.which("imagej")
    xvfb = shutil.which("xvfb-run")
    if imagej and xvfb:
        for method, label in (("Max Intensity", "max"), ("Median", "median")):
            macro = out / f"{label}.ijm"
            target = out / f"ij-{label}.tif"
            macro.write_text(MACRO.format(src=src, method=method, out=target))
            cases[f"ImageJ {label}"] = ["timeout", "120", xvfb, "-a", imagej, "-b", str(macro)]
            outputs[f"ImageJ {label}"] = target
    rows = []
    for name, cmd in cases.items():
        timed = time_process(cmd, repeat, timeout=120, output=outputs.get(name))
        target = TARGETS.get(name) if tuple(shape) == (100, 1024, 1024) else None
        record = h.emit(
            {
                "name": name,
                "command": " ".join(Path(c).name if c == cmd[0] else c for c in cmd),
                "shape": list(shape),
                "runs": repeat,
                **timed,
                "target_s": target,
                "machine": h.machine(),
            }
        )
        rows.append(record)
    shutil.rmtree(out, ignore_errors=True)
    if args.no_imagej or args.smoke:
        print("\nImageJ: not run (--no-imagej or --smoke).")
    elif not (imagej and xvfb):
        print("\nImageJ: not run (`imagej` or `xvfb-run` is not on PATH).")
    print()
    print(
        h.markdown_table(rows, ["name", "wall_s_median", "wall_s_min", "cpu_s_median", "target_s"])
    )
    missed = [r["name"] for r in rows if r["target_s"] and r["wall_s_median"] > r["target_s"]]
    if missed:
        print(f"\nover target: {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
