"""--resume after a run that finished: kept only if it is this run's output (issue 13).

A finished output carries a record of the settings it was made with (``.<name>.zchunk-done``,
bound to the output's inode, size and mtime). ``--resume`` with the same settings is a no-op
with exit 0; with other settings, or on an output with no record or changed since, it is
refused (exit 2, one line naming the difference) unless ``--overwrite``. Real CLI processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile

import zchunk
from zchunk.cli import main
from zchunk.testing import LATE_LOCK, blobs

if TYPE_CHECKING:
    from pathlib import Path

QUIET = ["--quiet", "--memory-limit", "64MiB"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "src.tif"
    tifffile.imwrite(path, blobs((6, 80, 48), "uint16", seed=7), photometric="minisblack")
    return path


def cli(*argv: object) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "zchunk", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stderr


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file of an output (and its record) with inode, mtime and bytes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    files += [path.with_name(f".{path.name}.zchunk-done")]
    return {
        str(p): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in files if p.exists()
    }


def run(*argv: object) -> int:
    """Run the CLI in this process (for the runs that set a test up)."""
    return main([str(a) for a in argv])


def read(path: Path) -> np.ndarray:
    return np.asarray(zchunk.open(path).data.compute())


def gaussian(src: Path, sigma: float) -> np.ndarray:
    return np.asarray(zchunk.filter(zchunk.open(src), "gaussian", sigma=sigma).data.compute())


KINDS = {
    "tif": ("out.tif", []),
    "tif-zlib": ("out.tif", ["--compression", "zlib"]),
    "ome-tif": ("out.ome.tif", []),
    "zarr": ("out.zarr", []),
    "ome-zarr": ("out.ome.zarr", ["--pyramid", "1"]),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", list(KINDS))
def test_resume_with_another_sigma_is_refused_not_kept(src, tmp_path, kind):
    name, extra = KINDS[kind]
    out = tmp_path / name

    def argv(sigma: str, *more: str) -> list[str]:
        return ["filter", src, "gaussian", "--sigma", sigma, "-o", out, *extra, *QUIET, *more]

    assert run(*argv("1")) == 0
    before = snapshot(out)
    code, err = cli(*argv("3", "--resume"))
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    assert "not this run's finished output" in err
    assert "filter.sigma [1.0,1.0,1.0] vs [3.0,3.0,3.0]" in err  # names what differs
    assert snapshot(out) == before  # untouched
    # the same settings: a no-op, exit 0 (scripts that always resume)
    assert cli(*argv("1", "--resume")) == (0, "")
    assert snapshot(out) == before
    # --overwrite writes it again, with sigma 3
    code, err = cli(*argv("3", "--resume", "--overwrite"))
    assert code == 0, err
    np.testing.assert_allclose(read(out), gaussian(src, 3), rtol=1e-6)
    assert cli(*argv("3", "--resume")) == (0, "")


@pytest.mark.timeout(300)
def test_multi_method_folder_resume_with_another_prefilter_is_refused(src, tmp_path):
    out = tmp_path / "proj"

    def argv(sigma: str, *more: str) -> list[str]:
        return [
            "project",
            src,
            "-m",
            "max",
            "-m",
            "min",
            "--gaussian",
            sigma,
            "-o",
            out,
            *QUIET,
            *more,
        ]

    assert run(*argv("1")) == 0
    before = {n: snapshot(out / n) for n in ("max.tif", "min.tif")}
    code, err = cli(*argv("2", "--resume"))
    assert code == 2, err
    assert "sigma [1.0,1.0,1.0] vs [2.0,2.0,2.0]" in err
    assert {n: snapshot(out / n) for n in before} == before
    assert cli(*argv("1", "--resume")) == (0, "")
    assert {n: snapshot(out / n) for n in before} == before
    assert cli(*argv("2", "--resume", "--overwrite"))[0] == 0
    np.testing.assert_allclose(read(out / "max.tif"), gaussian(src, 2).max(axis=0), rtol=1e-6)


@pytest.mark.timeout(300)
def test_convert_resume_with_other_calibration_is_refused(src, tmp_path):
    out = tmp_path / "c.ome.zarr"
    assert main(["convert", str(src), str(out), "--scale", "2,0.5,0.5", *QUIET]) == 0
    before = snapshot(out)
    code, err = cli("convert", src, out, "--scale", "2,0.25,0.25", "--resume", *QUIET)
    assert code == 2, err
    assert "calibration and metadata differs" in err
    assert "zchunk.scale [2.0,0.5,0.5] vs [2.0,0.25,0.25]" in err
    assert snapshot(out) == before
    assert cli("convert", src, out, "--scale", "2,0.5,0.5", "--resume", *QUIET) == (0, "")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["out.tif", "out.zarr"])
def test_an_output_without_a_record_cannot_be_verified(src, tmp_path, name):
    # made by another program (or an older zchunk): same shape and dtype, newer than the input
    out = tmp_path / name
    argv = ["filter", src, "gaussian", "--sigma", "1", "-o", out, *QUIET]
    assert run(*argv) == 0
    want = read(out)
    out.with_name(f".{name}.zchunk-done").unlink()
    if name.endswith(".tif"):
        tifffile.imwrite(out, np.zeros_like(want), photometric="minisblack")
    before = snapshot(out)
    code, err = cli(*argv, "--resume")
    assert code == 2, err
    assert "cannot be verified" in err
    assert snapshot(out) == before
    assert cli(*argv, "--resume", "--overwrite")[0] == 0
    np.testing.assert_array_equal(read(out), want)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["replaced", "rewritten"])
def test_an_output_changed_after_the_run_is_not_trusted(src, tmp_path, how):
    out, other = tmp_path / "out.tif", tmp_path / "other.tif"
    argv = ["filter", src, "gaussian", "--sigma", "1", *QUIET]
    assert run(*argv, "-o", out) == 0
    assert run("filter", src, "gaussian", "--sigma", "3", *QUIET, "-o", other) == 0
    if how == "replaced":  # another file moved onto the name (its own record left behind)
        os.replace(other, out)
    else:  # rewritten in place: same inode, other bytes
        shutil.copyfile(other, out)
    code, err = cli(*argv, "-o", out, "--resume")
    assert code == 2, err
    assert "changed or replaced after zchunk wrote it" in err


def run_killed(patch: str, argv: list[object]) -> None:
    """Run the CLI in a process that `patch` makes SIGKILL itself (``die()``)."""
    code = "import os, signal, sys\ndef die():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    code += textwrap.dedent(patch) + "\nfrom zchunk.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


# the commit of a finished output: its record is written (atomically), then it is renamed
BEFORE_RECORD = """
from zchunk.sinks import _done
_done._write_json_atomically = lambda path, value: die()
"""
BETWEEN_RECORD_AND_RENAME = """
from zchunk.sinks import _done
_done._commit = lambda *args, **kwargs: die()
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("kind", "moment", "old"),
    [
        ("tif", "before-record", False),
        ("tif", "between-record-and-rename", True),
        ("tif-zlib", "before-record", True),
        ("tif-zlib", "between-record-and-rename", False),
        ("tif-zlib", "between-record-and-rename", True),
        ("zarr", "before-record", False),
        ("zarr", "between-record-and-rename", True),
    ],
)
def test_kill_during_the_commit_then_resume(src, tmp_path, kind, moment, old):
    name, extra = KINDS[kind]
    out, ref = tmp_path / name, tmp_path / "ref" / name
    argv = ["filter", src, "gaussian", "--sigma", "3", *extra, *QUIET]
    assert run(*argv, "-o", ref) == 0
    if old:  # an --overwrite run over a finished sigma-1 output is killed while committing
        assert run("filter", src, "gaussian", "--sigma", "1", *extra, *QUIET, "-o", out) == 0
        old_pixels = read(out)
    patch = BEFORE_RECORD if moment == "before-record" else BETWEEN_RECORD_AND_RENAME
    run_killed(patch, [*argv, "-o", out, *(["--overwrite"] if old else [])])
    code, err = cli(*argv, "-o", out, "--resume")
    if old:  # the old output is not this run's: refused, untouched
        assert code == 2, err
        if moment == "between-record-and-rename":  # says what happened and what to do
            assert "a run replacing it (with --overwrite) was interrupted" in err
            assert err.rstrip().endswith(
                "run that run again with resume=True, overwrite=True (--resume --overwrite)"
            )
        np.testing.assert_array_equal(read(out), old_pixels)
        code, err = cli(*argv, "-o", out, "--resume", "--overwrite")
    assert code == 0, err
    np.testing.assert_array_equal(read(out), read(ref))
    assert cli(*argv, "-o", out, "--resume") == (0, "")  # finished now, with its record
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == [f".{name}.zchunk-done"]


# a compressed TIFF is exported from a scratch array, which is deleted after the rename
AFTER_RENAME = """
from zchunk.sinks import _resume
_resume.PartialWrite.discard = lambda self: die()
"""
DURING_SCRATCH_DELETION = """
import shutil
from zchunk.sinks import _stale
def abandon(partial):  # the deletion of the scratch array cut short: its record went first
    shutil.rmtree(partial / ".zchunk-record")
    die()
_stale.abandon = abandon
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("moment", ["after-rename", "during-scratch-deletion"])
def test_kill_after_a_compressed_tiff_is_renamed_then_resume(src, tmp_path, moment):
    # the output is finished and recorded; what is left is the scratch array, stale
    out = tmp_path / "out.tif"
    argv = ["filter", src, "gaussian", "--sigma", "3", "--compression", "zlib", *QUIET, "-o", out]
    patch = AFTER_RENAME if moment == "after-rename" else DURING_SCRATCH_DELETION
    run_killed(patch, argv)
    assert out.with_name(".out.tif.zchunk-partial").is_dir()
    before = snapshot(out)
    assert cli(*argv, "--resume") == (0, "")  # finished: kept as it is, the scratch deleted
    assert snapshot(out) == before
    np.testing.assert_allclose(read(out), gaussian(src, 3), rtol=1e-6)
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == [".out.tif.zchunk-done"]


# Ctrl-C while the output is committed: held at a moment of the commit until the test says go
HOLD = """
import os, signal, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started as a background job
from zchunk.sinks import _done
def hold():
    open(os.environ["ZCHUNK_TEST_READY"], "w").close()
    while not os.path.exists(os.environ["ZCHUNK_TEST_GO"]):
        time.sleep(0.01)
"""
HOLD_AT = {
    "before-rename": """
commit = _done._commit
def _commit(*args, **kwargs):  # the record is written
    hold()
    commit(*args, **kwargs)
_done._commit = _commit
""",
    "after-rename": """
sync = _done.sync_tree
def sync_tree(path, *, recursive=True):  # the output is renamed, its folder not yet synced
    if not recursive:
        hold()
    sync(path, recursive=recursive)
_done.sync_tree = sync_tree
""",
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("moment", list(HOLD_AT))
@pytest.mark.parametrize("kind", ["tif", "tif-zlib", "zarr"])
def test_ctrl_c_during_the_commit_finishes_it_and_says_so(src, tmp_path, kind, moment):
    # the record and the rename are one step for Ctrl-C: the output is finished, exit 130
    name, extra = KINDS[kind]
    out, ref = tmp_path / name, tmp_path / "ref" / name
    argv = ["filter", src, "gaussian", "--sigma", "3", *extra, *QUIET]
    assert run(*argv, "-o", ref) == 0
    ready, go = tmp_path / "ready", tmp_path / "go"
    code = HOLD + HOLD_AT[moment] + "import sys\nfrom zchunk.cli import main\n"
    code += "sys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "ZCHUNK_TEST_READY": str(ready), "ZCHUNK_TEST_GO": str(go)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, [*argv, "-o", out])],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    go.touch()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert (
        err == f"zchunk: interrupted; the output {str(out)!r} was finished before it took effect\n"
    )
    np.testing.assert_array_equal(read(out), read(ref))
    assert cli(*argv, "-o", out, "--resume") == (0, "")  # finished, with its record
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == [f".{name}.zchunk-done"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["tif", "tif-zlib", "zarr"])
def test_resume_finds_its_output_finished_by_another_run_meanwhile(src, tmp_path, kind):
    # --resume found no output; before it took the lock, a run with the same settings
    # finished it: that is this run's finished output, kept (exit 0), not "already exists"
    name, extra = KINDS[kind]
    out = tmp_path / name
    argv = ["filter", src, "gaussian", "--sigma", "1", *extra, *QUIET, "-o", out]
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = {**os.environ, "ZCHUNK_TEST_READY": str(ready), "ZCHUNK_TEST_GO": str(go)}
    late = subprocess.Popen(
        [sys.executable, "-c", LATE_LOCK, *map(str, [*argv, "--resume"])],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert late.poll() is None, late.stderr.read() if late.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert cli(*argv) == (0, "")
    before = snapshot(out)
    go.touch()
    _, err = late.communicate(timeout=120)
    assert (late.returncode, err) == (0, "")
    assert snapshot(out) == before
