"""Memory is set by the budget, not by the data: measured from the OS in child processes."""

import os
import subprocess
import sys
import textwrap

import pytest

from zchunk.testing import write_tiff_stack

BUDGET_MB = 64
SLACK_MB = 96  # allocator and thread-pool noise above the budget


_REPORT = """
with open("/proc/self/status") as f:
    print([line.split()[1] for line in f if line.startswith("VmHWM:")][0])
"""


def _peak_rss_mb(code: str) -> float:
    """Run `code` in a fresh interpreter; return its peak RSS (MiB) as the OS measured it.

    The child reads its own high-water mark (VmHWM) at the end: wait4's ru_maxrss would
    include the size of this (large) pytest process at fork time.
    """
    script = textwrap.dedent(code) + _REPORT
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1]) / 1024


@pytest.fixture(scope="module")
def big_stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("mem") / "stack.tif"
    write_tiff_stack(str(path), (64, 1024, 2048), "uint16", seed=3)  # 256 MiB, 4x the budget
    return str(path)


@pytest.fixture(scope="module")
def baseline_mb(tmp_path_factory):
    """Peak RSS of the same work on a tiny stack: interpreter, imports, compiled kernels."""
    small = tmp_path_factory.mktemp("small") / "small.tif"
    write_tiff_stack(str(small), (8, 64, 64), "uint16")
    out = tmp_path_factory.mktemp("small-out")
    return max(
        _peak_rss_mb(_project_code(str(small), out / "p")),
        _peak_rss_mb(_filter_code(str(small), out / "g.zarr")),
    )


def _project_code(src, out):
    return f"""
        from zchunk.pipeline import RunOptions, run_project
        run_project({src!r}, ["max", "median"], {str(out)!r},
                    RunOptions(memory_limit="{BUDGET_MB}MiB", progress=False))
    """


def _filter_code(src, out, name="gaussian", params='{"sigma": 2}'):
    return f"""
        from zchunk.pipeline import RunOptions, run_filter
        run_filter({src!r}, {name!r}, {str(out)!r},
                   RunOptions(memory_limit="{BUDGET_MB}MiB", progress=False), params={params})
    """


def test_projection_memory_is_bounded(big_stack, baseline_mb, tmp_path):
    peak = _peak_rss_mb(_project_code(big_stack, tmp_path / "proj"))
    assert peak <= baseline_mb + BUDGET_MB + SLACK_MB, (peak, baseline_mb)
    assert sorted(os.listdir(tmp_path / "proj")) == [
        ".max.tif.zchunk-done",
        ".median.tif.zchunk-done",
        "max.tif",
        "median.tif",
    ]


def test_filter_to_zarr_memory_is_bounded(big_stack, baseline_mb, tmp_path):
    peak = _peak_rss_mb(_filter_code(big_stack, tmp_path / "g.zarr"))
    assert peak <= baseline_mb + BUDGET_MB + SLACK_MB, (peak, baseline_mb)


@pytest.fixture(scope="module")
def big_stack_uint8(tmp_path_factory):
    path = tmp_path_factory.mktemp("mem8") / "stack8.tif"
    write_tiff_stack(str(path), (64, 2048, 2048), "uint8", seed=3)  # 256 MiB, 4x the budget
    return str(path)


@pytest.mark.parametrize(("name", "params"), [("gaussian", '{"sigma": 2}'), ("sobel", "{}")])
def test_a_float32_filter_of_8_bit_data_stays_in_the_budget(
    big_stack_uint8, baseline_mb, tmp_path, name, params
):
    """Its float32 output is 4x the input's bytes: the planner counts it (Purpose.widening)."""
    peak = _peak_rss_mb(_filter_code(big_stack_uint8, tmp_path / "g.zarr", name, params))
    assert peak <= baseline_mb + BUDGET_MB + SLACK_MB, (peak, baseline_mb)


def test_the_check_can_fail(big_stack, baseline_mb):
    """Loading the whole stack does break the bound: the test above measures something."""
    imports = _peak_rss_mb("import tifffile")
    peak = _peak_rss_mb(f"import tifffile; a = tifffile.imread({big_stack!r}); print(a.max())")
    # above its own imports, as the tests above are above theirs (baseline_mb), the whole
    # stack (256 MiB) takes more than the bound allows: a run that loaded it would fail them
    assert peak - imports > BUDGET_MB + SLACK_MB, (peak, imports, baseline_mb)
