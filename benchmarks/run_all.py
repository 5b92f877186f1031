"""Run every benchmark and write benchmarks/RESULTS.md.

    python benchmarks/run_all.py                 # full sizes (about an hour, ~80 GB of disk)
    python benchmarks/run_all.py --smoke         # a few minutes: checks every script still works
    python benchmarks/run_all.py --only read projection --out /tmp/RESULTS.md

Each script prints JSON lines (kept in benchmarks/_data/results-<name>.jsonl) and a markdown
table with ratios measured in the same run; RESULTS.md collects the tables with the command,
the machine and the versions. ``make bench`` runs this; CI runs ``--smoke``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

HERE = Path(__file__).resolve().parent

#: (name, question, full arguments); every script also takes --smoke.
BENCHMARKS = [
    (
        "kernel",
        "How fast are the median kernel and the separable pass (one thread)?",
        ["--repeat", "5"],
    ),
    (
        "read",
        "How fast does zchunk read, against the raw read of the same bytes?",
        ["--shape", "250", "2048", "2048", "--repeat", "5"],
    ),
    (
        "projection",
        "Max and median projections against numpy and dask-image (4.2 GB, 500 planes)",
        ["--shape", "500", "2048", "2048", "--repeat", "3"],
    ),
    (
        "filter",
        "Filters to zarr against the raw read, dask-image and ImageJ, cold and warm",
        ["--shape", "100", "1024", "1024", "--repeat", "3"],
    ),
    ("scaling", "Throughput with 1 and 2 workers", []),
    (
        "offsets",
        "Cold reads of pixels at an odd offset (ImageJ's files) against page-aligned ones",
        ["--planes", "250", "--repeat", "3"],
    ),
    (
        "cli",
        "How long does a whole zchunk command take, start-up included, against ImageJ?",
        ["--repeat", "10"],
    ),
    (
        "out_of_core",
        "A stack larger than RAM with the default budget",
        ["--size", "32GB"],
    ),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks, not speed")
    ap.add_argument("--only", nargs="+", choices=[b[0] for b in BENCHMARKS], default=None)
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"), help="where to write the tables")
    args = ap.parse_args()
    chosen = [b for b in BENCHMARKS if args.only is None or b[0] in args.only]
    chosen = [b for b in chosen if (HERE / f"bench_{b[0]}.py").exists()]
    machine = h.machine()
    sections = []
    failed = []
    for name, question, full in chosen:
        script = HERE / f"bench_{name}.py"
        extra = ["--smoke"] if args.smoke else full
        cmd = [sys.executable, str(script), *extra]
        shown = f"python benchmarks/bench_{name}.py {' '.join(extra)}".strip()
        print(f"== {shown}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        lines = proc.stdout.splitlines()
        records = [line for line in lines if line.startswith("{")]
        table = "\n".join(line for line in lines if not line.startswith("{")).strip()
        (h.data_dir() / f"results-{name}.jsonl").write_text("\n".join(records) + "\n")
        print(table, flush=True)
        if proc.returncode != 0:
            failed.append(name)
            table += f"\n\n**failed** (exit {proc.returncode}):\n```\n{proc.stderr[-2000:]}\n```"
            print(proc.stderr[-2000:], file=sys.stderr)
        sections.append(f"## {question}\n\n`{shown}` ({wall:.0f} s)\n\n{table}\n")
    versions = h.versions()
    header = [
        "# zchunk benchmark results"
        + (" (smoke run: sizes too small to mean anything)" if args.smoke else ""),
        "",
        (
            f"Date {machine['date']}; {machine['cores']} cores, {machine['ram_gib']} GiB RAM; "
            f"{machine['platform']}."
        ),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        (
            "Every figure is a median of repeated runs in child processes; peak RSS is the "
            "child's own high-water mark from the OS (VmHWM). Ratios are measured in the same "
            "run. The raw JSON lines are in `benchmarks/_data/results-*.jsonl` on the machine "
            "that ran them."
        ),
        "",
    ]
    Path(args.out).write_text("\n".join(header) + "\n" + "\n".join(sections))
    print(f"wrote {args.out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
