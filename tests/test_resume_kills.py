"""Kills at the awkward moments of a run (real processes, SIGKILL), then --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

from zchunk.cli import main
from zchunk.testing import blobs

METHODS = ["-m", "max", "-m", "median", "-m", "std"]
OUTPUTS = ["max.tif", "median.tif", "std.tif"]
#: every output with its record of the settings it was made with
RECORDED = [f".{n}.zchunk-done" for n in OUTPUTS] + OUTPUTS


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src.tif"
    tifffile.imwrite(path, blobs((5, 96, 64), "uint16", seed=4), photometric="minisblack")
    return path


def run_killed(patch: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI with `argv` in a process that `patch` makes SIGKILL itself (``die()``)."""
    code = textwrap.dedent(
        """
        import os, signal, sys
        def die():
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    code += textwrap.dedent(patch) + "\nfrom zchunk.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc


def files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.timeout(120)
def test_multi_method_resume_keeps_finished_outputs_and_finishes_the_rest(src, tmp_path):
    ref = tmp_path / "ref"
    assert main(["project", str(src), *METHODS, "-o", str(ref), "--quiet"]) == 0
    out = tmp_path / "out"
    argv = ["project", str(src), *METHODS, "-o", str(out), "--quiet"]
    # killed right after out/max.tif is written, before median and std
    run_killed(
        """
        import zchunk.sinks
        real = zchunk.sinks.save
        def save(stack, path, **kw):
            done = real(stack, path, **kw)
            if done.name == "max.tif":
                die()
            return done
        zchunk.sinks.save = save
        """,
        argv,
    )
    assert (out / "max.tif").is_file()
    kept = os.stat(out / "max.tif")
    assert main([*argv, "--resume"]) == 0
    assert files(out) == files(ref) == RECORDED
    for name in OUTPUTS:
        np.testing.assert_array_equal(tifffile.imread(out / name), tifffile.imread(ref / name))
    assert os.stat(out / "max.tif").st_ino == kept.st_ino  # kept, not written again
    # --resume after a finished run: nothing to do, exit 0, nothing touched
    before = {n: os.stat(out / n).st_mtime_ns for n in files(out)}
    assert main([*argv, "--resume"]) == 0
    assert main([*argv, "--resume", "--overwrite"]) == 0
    assert {n: os.stat(out / n).st_mtime_ns for n in files(out)} == before
    assert files(tmp_path) == ["out", "ref", "src.tif"]


@pytest.mark.timeout(120)
def test_multi_method_resume_with_overwrite_keeps_the_work(src, tmp_path):
    out = tmp_path / "out"
    argv = ["project", str(src), *METHODS, "-o", str(out), "--quiet"]
    run_killed(
        """
        import zchunk.sinks
        real = zchunk.sinks.save
        def save(stack, path, **kw):
            done = real(stack, path, **kw)
            if done.name == "median.tif":
                die()
            return done
        zchunk.sinks.save = save
        """,
        argv,
    )
    kept = {n: os.stat(out / n).st_ino for n in ("max.tif", "median.tif")}
    assert main([*argv, "--resume", "--overwrite"]) == 0
    assert {n: os.stat(out / n).st_ino for n in kept} == kept
    assert files(out) == RECORDED


def test_resume_after_a_finished_run_is_a_no_op(src, tmp_path):
    out = tmp_path / "g.zarr"
    argv = ["filter", str(src), "gaussian", "--sigma", "1", "-o", str(out), "--quiet"]
    assert main(argv) == 0
    before = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*"))
    assert main([*argv, "--resume"]) == 0
    assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def test_resume_refuses_a_finished_output_of_another_run(src, tmp_path, capsys):
    out = tmp_path / "p.tif"
    assert main(["project", str(src), "-m", "max", "-o", str(out), "--quiet"]) == 0
    # another method: another dtype (float64), so not this run's finished output
    assert main(["project", str(src), "-m", "mean", "-o", str(out), "--resume"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # the input changed after the output was written
    os.utime(src)
    assert main(["project", str(src), "-m", "max", "-o", str(out), "--resume"]) == 2
    assert "changed after" in capsys.readouterr().err
    assert main(["project", str(src), "-m", "max", "-o", str(out), "--resume", "--overwrite"]) == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["out.tif", "out.zarr"])
def test_kill_while_laying_out_starts_over_on_resume(src, tmp_path, name):
    ref = tmp_path / "ref" / name
    argv = ["filter", str(src), "gaussian", "--sigma", "1", "--quiet", "-o"]
    assert main([*argv, str(ref)]) == 0
    out = tmp_path / "run" / name
    patch = (
        """
        import tifffile
        real = tifffile.imwrite
        def imwrite(path, *a, **kw):
            real(path, *a, **kw)
            with open(path, "r+b") as f:
                f.truncate(50)  # the header is not all on disk yet
            die()
        tifffile.imwrite = imwrite
        """
        if name.endswith(".tif")
        else """
        import zarr
        real = zarr.create_array
        def create_array(store, **kw):
            real(store, **kw)
            os.remove(os.path.join(store, "zarr.json"))  # not all on disk yet
            die()
        zarr.create_array = create_array
        """
    )
    run_killed(patch, [*argv, str(out)])
    assert out.with_name(f".{name}.zchunk-partial").exists()
    assert main([*argv, str(out), "--resume"]) == 0
    if name.endswith(".tif"):
        np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(ref))
    else:
        import zarr

        np.testing.assert_array_equal(zarr.open_array(out)[:], zarr.open_array(ref)[:])
    assert files(out.parent) == [f".{name}.zchunk-done", name]


@pytest.mark.timeout(120)
def test_kill_while_writing_compressed_pages_leaves_nothing_after_resume(src, tmp_path):
    out = tmp_path / "out.tif"
    argv = ["filter", str(src), "gaussian", "--sigma", "1", "--compression", "zlib", "--quiet"]
    run_killed(
        """
        from zchunk.sinks import _tiff
        real = _tiff._pages
        def pages(array, shape):
            for i, page in enumerate(real(array, shape)):
                if i == 2:
                    die()
                yield page
        _tiff._pages = pages
        """,
        [*argv, "-o", str(out)],
    )
    assert [n for n in files(tmp_path) if ".out.tif.zchunk-tmp-" in n]  # the page file
    assert main([*argv, "-o", str(out), "--resume"]) == 0
    assert files(tmp_path) == [".out.tif.zchunk-done", "out.tif", "src.tif"]
    assert tifffile.imread(out).shape == (5, 96, 64)


@pytest.mark.timeout(120)
def test_kill_after_the_final_rename_then_resume_cleans_up(src, tmp_path):
    # found by test_adversarial: a TIFF renamed onto its name, killed before its record was
    # removed; --resume finds it finished and must leave nothing else behind
    out = tmp_path / "out.tif"
    argv = ["filter", str(src), "gaussian", "--sigma", "1", "--quiet", "-o", str(out)]
    run_killed(
        """
        from zchunk.sinks import _resume
        real = _resume.remove_path
        def remove_path(path):
            if str(path).endswith(".zchunk-record") and os.path.exists(sys.argv[-1]):
                die()
            real(path)
        _resume.remove_path = remove_path
        """,
        argv,
    )
    assert files(tmp_path) == [".out.tif.zchunk-done", ".out.tif.zchunk-lock",
                               ".out.tif.zchunk-partial.zchunk-record", "out.tif", "src.tif"]  # fmt: skip
    assert main([*argv, "--resume"]) == 0
    assert files(tmp_path) == [".out.tif.zchunk-done", "out.tif", "src.tif"]
