"""zchunk on dask.distributed: local clusters, a scheduler and workers started as commands,
a worker killed mid-run, and the progress bar under a Client. Results must equal the threaded
ones bit for bit."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

distributed = pytest.importorskip("distributed")

import zarr
from distributed import Client, LocalCluster

import zchunk
from zchunk.cli import main
from zchunk.pipeline import WORKER_OVERHEAD, RunOptions, compute_context, run_filter, run_project
from zchunk.testing import write_tiff_stack

SHAPE = (12, 256, 96)
BUDGET = "256KiB"  # 15 bands of 18 rows (the last one 4): halos and ragged edges
CLUSTER = {"threads_per_worker": 1, "processes": True, "host": "127.0.0.1"}
# no dashboard, and the scheduler's HTTP server on a free port: 8787 may be taken
CLUSTER |= {"dashboard_address": None, "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"}}


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, **CLUSTER) as c:
        yield c


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "stack.tif"
    meta = {"axes": "ZYX", "spacing": 2.0, "unit": "um"}
    write_tiff_stack(str(path), SHAPE, "uint16", seed=5, imagej=True, metadata=meta)
    assert zchunk.open(str(path), memory_limit=BUDGET).data.numblocks[1] > 4
    return str(path)


def read(path):
    """Pixels of an output, with its dtype."""
    path = str(path)
    if path.endswith(".ome.zarr"):
        return zchunk.open(path).data.compute(scheduler="threads")
    if path.endswith(".zarr"):
        return zarr.open_array(path, mode="r")[...]
    return tifffile.imread(path)


QUIET = RunOptions(progress=False)


def assert_same_outputs(a, b):
    """Outputs `a` and `b` (dicts name -> path) hold identical pixels; TIFFs identical bytes."""
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = read(a[name]), read(b[name])
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
        if str(a[name]).endswith(".tif"):
            assert Path(a[name]).read_bytes() == Path(b[name]).read_bytes(), name


def _run(kind, source, out, scheduler, fmt, compression):
    options = RunOptions(
        memory_limit=BUDGET, workers=2, progress=False, compression=compression, scheduler=scheduler
    )
    if kind == "project":
        s = run_project(source, ["max", "median"], str(out), options, fmt=fmt)
    else:
        out = out.with_suffix(f".{fmt}")
        s = run_filter(source, "gaussian", str(out), options, params={"sigma": 1.5})
    return s


def _recorded(path: Path) -> bool:
    """Whether `path` is the record of a finished output that exists (``.<name>.zchunk-done``)."""
    name = path.name.removeprefix(".").removesuffix(".zchunk-done")
    return path.name.endswith(".zchunk-done") and (path.parent / name).exists()


@pytest.mark.parametrize("kind", ["project", "filter"])
@pytest.mark.parametrize(
    ("fmt", "compression"),
    [("zarr", None), ("ome.zarr", None), ("tif", None), ("tif", "zlib")],
    ids=["zarr", "ome-zarr", "tif", "tif-zlib"],
)
def test_cluster_equals_threads(cluster, source, tmp_path, kind, fmt, compression):
    threads = _run(kind, source, tmp_path / "threads", "threads", fmt, compression)
    remote = _run(kind, source, tmp_path / "cluster", cluster.scheduler_address, fmt, compression)
    assert remote["scheduler"] == cluster.scheduler_address
    assert threads["scheduler"] == "threads"
    assert_same_outputs(threads["outputs"], remote["outputs"])
    leftovers = [p for p in tmp_path.rglob("*") if ".zchunk-" in p.name and not _recorded(p)]
    assert not leftovers  # scratch arrays and temporaries are gone


def test_cli_against_cluster_address(cluster, source, tmp_path, capsys):
    address = cluster.scheduler_address
    for tag, extra in (("threads", []), ("cluster", ["--scheduler", address])):
        argv = ["project", source, "-m", "max", "-m", "median", "--memory-limit", BUDGET]
        assert main([*argv, "-o", str(tmp_path / tag), "--json", *extra]) == 0
        argv = ["filter", source, "gaussian", "--sigma", "1", "--memory-limit", BUDGET]
        assert (
            main([*argv, "-o", str(tmp_path / f"g-{tag}.tif"), "--compression", "zlib", *extra])
            == 0
        )
    summaries = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    assert [s["scheduler"] for s in summaries] == ["threads", address]
    assert_same_outputs(summaries[0]["outputs"], summaries[1]["outputs"])
    assert_same_outputs({"g": tmp_path / "g-threads.tif"}, {"g": tmp_path / "g-cluster.tif"})


def test_active_client_is_used(cluster, source, tmp_path):
    with Client(cluster.scheduler_address) as client:
        summary = run_project(
            source,
            ["max"],
            str(tmp_path / "m.zarr"),
            RunOptions(memory_limit=BUDGET, progress=False),
        )
        assert summary["scheduler"] == client.scheduler.address
        assert client.status == "running"  # used, not closed
        # an explicit local scheduler wins over the active client
        summary = run_project(
            source,
            ["max"],
            str(tmp_path / "t.zarr"),
            RunOptions(memory_limit=BUDGET, scheduler="threads", progress=False),
        )
        assert summary["scheduler"] == "threads"
    assert_same_outputs({"m": tmp_path / "m.zarr"}, {"m": tmp_path / "t.zarr"})


def test_enclosing_context_reaches_other_threads(cluster, source, tmp_path):
    summaries = []

    def run():
        summaries.append(run_project(source, ["max"], str(tmp_path / "m.zarr"), QUIET))

    with compute_context(cluster.scheduler_address):
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=60)
    assert [s["scheduler"] for s in summaries] == [cluster.scheduler_address]
    with compute_context("synchronous"):  # and a scheduler set in dask.config is kept
        summary = run_project(source, ["max"], str(tmp_path / "s.zarr"), QUIET)
    assert summary["scheduler"] == "synchronous"


def test_progress_bar_under_a_client(cluster, source, tmp_path, capsys):
    argv = [
        "project",
        source,
        "-m",
        "median",
        "-o",
        str(tmp_path / "med.tif"),
        "--memory-limit",
        BUDGET,
    ]
    assert main([*argv, "--scheduler", cluster.scheduler_address, "--progress"]) == 0
    err = capsys.readouterr().err
    assert "median of stack.tif" in err
    done_total = [w for w in err.split() if w.count("/") == 1 and w.replace("/", "").isdigit()]
    assert done_total, err
    done, total = map(int, done_total[-1].split("/"))
    assert done == total == _bands(source, BUDGET)  # every band read, projected and stored
    assert "MB/s" in err


def _bands(source, budget):
    """Blocks of a projection of `source` planned within `budget` (the blocks a writer stores)."""
    from zchunk.budget import Budget

    threads = 2  # the cluster's: 2 workers of 1 thread
    chunks = zchunk.open(source, memory_limit=Budget.parse(budget, threads)).data.chunks
    return len(chunks[-2]) * len(chunks[-1])


def test_demo_on_cluster(cluster, tmp_path, capsys, monkeypatch):
    from zchunk import demo

    monkeypatch.setitem(demo.SIZES, "small", (8, 64, 48))
    argv = ["demo", str(tmp_path / "d"), "--size", "small", "--no-progress"]
    assert main([*argv, "--scheduler", cluster.scheduler_address]) == 0
    assert "file and folder give identical projections" in capsys.readouterr().out


def test_processes_is_a_local_cluster_sized_by_workers_and_budget(source, tmp_path, capsys):
    with compute_context("processes", workers=2, memory_limit="1GiB") as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
        assert sorted(w["nthreads"] for w in info.values()) == [1, 1]
        assert {w["memory_limit"] for w in info.values()} == {2**29 + WORKER_OVERHEAD}
        assert int(zchunk.open(source).data.max().compute()) > 0  # runs on the cluster
        # a nested context reuses the cluster instead of starting another one
        with compute_context(progress=False) as inner:
            assert inner is client
    assert client.status == "closed"
    argv = ["project", source, "-m", "max", "--memory-limit", BUDGET, "--json", "--workers", "2"]
    assert main([*argv, "-o", str(tmp_path / "p.tif"), "--scheduler", "processes"]) == 0
    assert main([*argv, "-o", str(tmp_path / "t.tif")]) == 0
    summaries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["scheduler"] for s in summaries] == ["processes", "threads"]
    assert_same_outputs({"m": tmp_path / "p.tif"}, {"m": tmp_path / "t.tif"})


def test_scheduler_errors(source, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"nor a dask\.distributed scheduler address"):
        compute_context("procesess").__enter__()
    with pytest.raises(ValueError, match="both name a scheduler"):
        compute_context("threads", scheduler_file=str(tmp_path / "s.json")).__enter__()
    out = str(tmp_path / "m.tif")
    assert (
        main(["project", source, "-o", out, "--scheduler-file", str(tmp_path / "none.json")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["project", source, "-o", out, "--scheduler", "bogus"])
    assert exc.value.code == 2
    assert "not one of threads, processes, synchronous" in capsys.readouterr().err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main(["project", source, "-o", out, "--scheduler", f"tcp://127.0.0.1:{port}"]) == 2
    assert "cannot connect to the dask scheduler" in capsys.readouterr().err
    assert not os.path.exists(out)


# --- a scheduler and two workers started as commands, as on a cluster ---------------------------


@contextlib.contextmanager
def _processes():
    """Start commands in their own process groups; kill the groups at the end, whatever happens."""
    started = []

    def start(*args):
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(started):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _wait_for_file(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size):
        assert proc.poll() is None, "dask scheduler exited"
        assert time.monotonic() < deadline, "dask scheduler did not write its file"
        time.sleep(0.1)


def test_scheduler_and_workers_started_as_commands(source, tmp_path):
    file = tmp_path / "scheduler.json"
    common = ["--scheduler-file", str(file), "--no-dashboard"]
    with _processes() as start:
        scheduler = start(
            "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", *common
        )
        _wait_for_file(file, scheduler)
        for _ in range(2):
            start(
                "distributed.cli.dask_worker",
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-nanny",
                *common,
            )
        with Client(scheduler_file=str(file), set_as_default=False, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            address = client.scheduler.address
        # the zchunk command as a user runs it, in its own process, against the scheduler file
        out = tmp_path / "file"
        argv = ["project", source, "-m", "max", "-m", "median", "--memory-limit", BUDGET, "--json"]
        cmd = [sys.executable, "-m", "zchunk", *argv, "-o", str(out), "--scheduler-file", str(file)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["scheduler"] == address
        # and in this process against the address, compressed TIFF through the ordered writer
        argv = ["project", source, "-m", "max", "-m", "median", "--memory-limit", BUDGET]
        assert (
            main(
                [
                    *argv,
                    "-o",
                    str(tmp_path / "address"),
                    "--compression",
                    "zlib",
                    "--scheduler",
                    address,
                ]
            )
            == 0
        )
    assert main([*argv, "-o", str(tmp_path / "threads"), "--workers", "2"]) == 0
    expected = {m: tmp_path / "threads" / f"{m}.tif" for m in ("max", "median")}
    assert_same_outputs(expected, {m: out / f"{m}.tif" for m in ("max", "median")})
    np.testing.assert_array_equal(
        read(expected["median"]), read(tmp_path / "address" / "median.tif")
    )


# --- a worker killed during a run ---------------------------------------------------------------


def test_run_survives_a_killed_worker(source, tmp_path):
    log = tmp_path / "blocks.log"

    def slow(block):  # pickled by value: workers need not import this test module
        time.sleep(0.1)
        with open(log, "a") as fh:
            fh.write("x\n")
        return block

    stack = zchunk.open(source, memory_limit="64KiB")  # 64 bands of 4 rows
    nblocks = stack.data.npartitions
    slowed = stack.replace(data=stack.data.map_blocks(slow, dtype=stack.dtype))
    paths = {m: tmp_path / "killed" / f"{m}.zarr" for m in ("max", "median")}
    with (
        LocalCluster(n_workers=2, **CLUSTER) as cluster,
        compute_context(cluster.scheduler_address) as client,
    ):
        failure = []

        def run():
            try:
                zchunk.save_many(zchunk.project_many(slowed, ["max", "median"]), paths)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failure.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 60
        while not log.exists() or len(log.read_text().split()) < 6:
            assert worker.is_alive(), failure
            assert time.monotonic() < deadline
            time.sleep(0.02)
        victim = next(iter(cluster.workers.values()))
        os.kill(victim.process.process.pid, signal.SIGKILL)
        done_at_kill = len(log.read_text().split())
        worker.join(timeout=120)
        assert not worker.is_alive()
        assert not failure, failure
        assert done_at_kill < nblocks  # the kill did land mid-run
        client.wait_for_workers(2, timeout=30)  # the nanny restarted it
    assert len(log.read_text().split()) >= nblocks  # blocks lost with the worker were recomputed
    expected = {m: tmp_path / "ref" / f"{m}.zarr" for m in ("max", "median")}
    with compute_context("threads"):
        zchunk.save_many(zchunk.project_many(stack, ["max", "median"]), expected)
    assert_same_outputs(expected, paths)


def test_the_progress_bar_uses_no_private_hook_of_distributed():
    import inspect

    import zchunk.progress

    source = inspect.getsource(zchunk.progress)
    assert "_draw_bar" not in source
    assert "distributed.diagnostics" not in source


# A run on a cluster killed while its workers hold blocks: the workers write them later
STALE_WORKER = """
import os, sys, time
from zchunk.sinks import _resume
store = _resume._store_block
def _store_block(*args, **kwargs):  # on a worker: every block waits for the test's go
    open({ready!r}, "a").close()
    while not os.path.exists({go!r}):
        time.sleep(0.01)
    try:
        return store(*args, **kwargs)
    finally:
        open({done!r}, "a").close()
_resume._store_block = _store_block
from zchunk.cli import main
sys.exit(main(sys.argv[1:]))
"""
HELD_COMMIT = """
import os, sys, time
from zchunk.sinks import _resume
commit = _resume.PartialWrite.commit
def held(self, **kwargs):  # every block written, the commit waits for the test's go
    open(os.environ["ZCHUNK_TEST_READY"], "w").close()
    while not os.path.exists(os.environ["ZCHUNK_TEST_GO"]):
        time.sleep(0.01)
    commit(self, **kwargs)
_resume.PartialWrite.commit = held
from zchunk.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc is None or proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


@pytest.mark.timeout(300)
def test_blocks_of_a_killed_run_never_land_in_the_next_runs_output(cluster, source, tmp_path):
    # run A on a cluster is killed while two workers hold blocks; run B replaces its partial
    # output (--overwrite, other settings) and, before B commits, A's workers write: B's output
    # must be B's alone (the workers see the output's lock is no longer A's run's)
    out, ref = tmp_path / "out.tif", tmp_path / "ref" / "out.tif"
    common = ["--memory-limit", BUDGET, "--quiet"]
    b_argv = ["filter", source, "uniform", "--size", "3", *common, "--workers", "1"]
    assert main([*b_argv, "-o", str(ref)]) == 0
    a_ready, a_go, a_done = (str(tmp_path / n) for n in ("a_ready", "a_go", "a_done"))
    code = STALE_WORKER.format(ready=a_ready, go=a_go, done=a_done)
    a_argv = ["filter", source, "gaussian", "--sigma", "1", *common, "-o", str(out)]
    a_argv += ["--scheduler", cluster.scheduler_address]
    a = subprocess.Popen([sys.executable, "-c", code, *a_argv], stderr=subprocess.PIPE)
    _wait_for(a_ready, a)
    time.sleep(0.5)  # both workers hold a block
    a.kill()
    a.communicate(timeout=60)
    b_ready, b_go = tmp_path / "b_ready", tmp_path / "b_go"
    env = {**os.environ, "ZCHUNK_TEST_READY": str(b_ready), "ZCHUNK_TEST_GO": str(b_go)}
    b = subprocess.Popen(
        [sys.executable, "-c", HELD_COMMIT, *b_argv, "-o", str(out), "--overwrite"],
        env=env,
        stderr=subprocess.PIPE,
    )
    _wait_for(b_ready, b)
    Path(a_go).touch()  # A's workers write now, into B's partial output if they may
    _wait_for(a_done, None)
    time.sleep(1.0)  # the other worker too
    b_go.touch()
    _, err = b.communicate(timeout=120)
    assert b.returncode == 0, err
    np.testing.assert_array_equal(read(out), read(ref))
