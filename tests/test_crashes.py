"""Crashes that must be one-line errors: exit 2, one line on stderr, nothing written."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import tifffile

from zchunk.cli import main
from zchunk.testing import blobs


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, blobs((6, 40, 30), "uint16", seed=2), photometric="minisblack")
    return path


def one_line_error(argv, capsys, *words):
    t0 = time.monotonic()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("zchunk: error: ")
    for word in words:
        assert word in lines[0]
    return time.monotonic() - t0


@pytest.mark.parametrize(
    ("params", "words"),
    [
        (["gaussian", "--sigma", "inf"], ["sigma=inf is invalid"]),
        (["gaussian", "--sigma", "nan"], ["sigma=nan is invalid"]),
        (["gaussian", "--sigma", "1e9"], ["too large", "kernel"]),
        (["median", "--size", "100000"], ["size=100000 is too large", "window"]),
        (["median", "--size", "3", "3", "101"], ["is too large"]),
    ],
)
def test_filter_parameters_beyond_the_data_are_refused_up_front(
    src, tmp_path, capsys, params, words
):
    seconds = one_line_error(
        ["filter", str(src), *params, "-o", str(tmp_path / "o.tif")], capsys, *words
    )
    assert seconds < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_a_scheduler_file_that_is_not_one_fails_at_once(src, tmp_path, capsys):
    garbage = tmp_path / "sched.json"
    garbage.write_text("this is not json")
    argv = ["project", str(src), "-o", str(tmp_path / "m.tif"), "--scheduler-file", str(garbage)]
    assert one_line_error(argv, capsys, "not a dask scheduler file") < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif", "sched.json"]


def test_a_refused_scheduler_address_fails_in_a_second(src, tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        "project",
        str(src),
        "-o",
        str(tmp_path / "m.tif"),
        "--scheduler",
        f"tcp://127.0.0.1:{port}",
    ]
    assert one_line_error(argv, capsys, "cannot connect", "refused") < 3


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: os.mkfifo(p), "named pipe"),
        (lambda p: os.symlink("/dev/zero", p), "a device (a symbolic link to /dev/zero)"),
        (lambda p: os.symlink(p, p), "loop of symbolic links"),
        (lambda p: os.symlink(p.with_name("gone.tif"), p), "which does not exist"),
    ],
)
def test_paths_that_are_not_files_say_what_they_are(tmp_path, capsys, make, words):
    path = tmp_path / "x.tif"
    make(path)
    one_line_error(["info", str(path)], capsys, words)
    one_line_error(["project", str(path), "-o", str(tmp_path / "m.tif")], capsys, words)


def test_closed_output_pipe_is_one_line(src):
    proc = subprocess.Popen(
        [sys.executable, "-m", "zchunk", "info", str(src)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader (`| head -1`) is gone before zchunk writes
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == 2, err
    assert err.strip().splitlines() == ["zchunk: error: the output pipe was closed before the end"]


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        if os.geteuid() == 0:
            pytest.skip(f"cannot mount a read-only tmpfs: {done.stderr.decode().strip()}")
        folder.chmod(0o555)  # not root: permissions are enough
    try:
        yield folder
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("name", ["m.tif", "m.zarr", "sub/m.tif"])
def test_read_only_output_folder_is_one_line(src, read_only_folder, capsys, name):
    out = read_only_folder / name
    one_line_error(["project", str(src), "-o", str(out)], capsys, "cannot write", "m.")
    assert list(read_only_folder.iterdir()) == []


HOLD_EVERY_BLOCK = """
import signal, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started as a background job
from zchunk.sinks import _resume
store = _resume._store_block
def _store_block(*args, **kwargs):
    done = store(*args, **kwargs)
    time.sleep(600)
    return done
_resume._store_block = _store_block
"""


@pytest.mark.timeout(120)
def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path):
    src = tmp_path / "src.tif"
    tifffile.imwrite(src, blobs((8, 3072, 64), "uint16", seed=1), photometric="minisblack")
    out = tmp_path / "o.zarr"
    argv = [sys.executable, "-m", "zchunk", "filter", str(src), "gaussian", "--sigma", "2",
            "--memory-limit", "100KB", "-o", str(out)]  # fmt: skip
    # every block, once stored and marked, holds its worker thread: the run cannot finish
    # before the Ctrl-C below however late it comes (under load it could: a flake)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_EVERY_BLOCK)
    paths = [str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    blocks = tmp_path / ".o.zarr.zchunk-partial" / ".zchunk-record" / "blocks"
    deadline = time.monotonic() + 60
    try:
        while not (blocks.is_dir() and os.listdir(blocks)):
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never left holding its blocks
        proc.communicate()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 130
    assert len(lines) == 1, err.decode()
    assert lines[0].startswith("zchunk: interrupted; the partial output")
    assert "--resume" in lines[0]
    assert main(["filter", str(src), "gaussian", "--sigma", "2", "--memory-limit", "100KB",
                 "-o", str(out), "--resume", "--quiet"]) == 0  # fmt: skip


@pytest.mark.parametrize("where", ["../a.zarr", "/etc", "", "missing"])
def test_ome_zarr_dataset_path_outside_the_image_is_refused(tmp_path, capsys, where):
    import json

    import zarr

    from zchunk.sinks import to_ome_zarr
    from zchunk.stack import Stack

    (tmp_path / "a.zarr").mkdir()
    out = to_ome_zarr(Stack(blobs((3, 8, 8), "uint8", seed=1)), tmp_path / "i.ome.zarr")
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"] = where
    (out / "zarr.json").write_text(json.dumps(meta))
    assert zarr.open_group(out).attrs  # still a zarr group
    one_line_error(["info", str(out)], capsys, "damaged OME-Zarr", repr(where))
