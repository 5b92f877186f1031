"""RunOptions: the options project, filter and convert share, parsed once at the CLI's edge."""

import dataclasses
import inspect

import pytest

from zchunk import pipeline
from zchunk._options import RunOptions
from zchunk.cli import main
from zchunk.errors import OptionError

FLAGS = [
    "--axes", "zyx", "--scale", "1,0.5,0.5", "--pattern", "z(?P<z>[0-9]+)",
    "--allow-incomplete", "--memory-limit", "3GiB", "--workers", "3",
    "--scheduler", "synchronous", "--no-progress", "--overwrite", "--resume",
    "--compression", "zlib", "--pyramid", "2", "--ngff-version", "0.4",
]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("run_project", ["project", "in.tif", "-m", "max", "-o", "out.zarr"]),
        ("run_filter", ["filter", "in.tif", "gaussian", "--sigma", "1", "-o", "out.zarr"]),
        ("run_convert", ["convert", "in.tif", "out.zarr"]),
    ],
)
def test_every_shared_flag_reaches_the_options(monkeypatch, command, argv):
    seen = []

    def fake(*args, **kwargs):
        seen.append(next(a for a in args if isinstance(a, RunOptions)))
        return {"outputs": {}, "wall_s": 1.0, "MB_per_s": 1.0, "peak_rss_mb": 1.0}

    monkeypatch.setattr(pipeline, command, fake)
    assert main([*argv, *FLAGS, "--quiet"]) == 0
    (options,) = seen
    default = RunOptions()
    unset = [
        f.name
        for f in dataclasses.fields(RunOptions)
        if getattr(options, f.name) == getattr(default, f.name)
    ]
    assert unset == ["scheduler_file"]  # every field came from its flag (one scheduler flag)
    assert options.budget().bytes == 3 * 2**30
    assert options.budget().workers == 3
    assert dict(options.scale) == {"z": 1.0, "y": 0.5, "x": 0.5}
    at = FLAGS.index("--scheduler")
    file_flags = [*FLAGS[:at], "--scheduler-file", "s.json", *FLAGS[at + 2 :]]
    assert main([*argv, *file_flags, "--quiet"]) == 0
    assert (seen[-1].scheduler, seen[-1].scheduler_file) == (None, "s.json")


def test_the_jobs_take_the_options_not_the_keyword_list():
    shared = {f.name for f in dataclasses.fields(RunOptions)}
    for job in (pipeline.run_project, pipeline.run_filter, pipeline.run_convert):
        params = set(inspect.signature(job).parameters)
        assert "options" in params, job.__name__
        assert not params & shared, job.__name__


def test_options_are_frozen_and_a_bad_budget_is_an_option_error():
    options = RunOptions(memory_limit="lots")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.overwrite = True  # type: ignore[misc]
    with pytest.raises(OptionError, match="lots"):
        options.budget()
    assert RunOptions(ngff_version="0.4").save_options()["ngff_version"] == "0.4"
    assert "pyramid" not in RunOptions().save_options()


def test_python_open_then_filter_plans_the_chunks_the_cli_plans(tmp_path):
    """zchunk.open + zchunk.filter and the CLI's filter job plan the same chunks: one Budget."""
    import tifffile

    import zchunk
    from zchunk.testing import blobs

    path = str(tmp_path / "s.tif")
    tifffile.imwrite(path, blobs((9, 200, 96), "uint16", seed=3))
    options = RunOptions(memory_limit="400KB", workers=2, scheduler="synchronous")
    with pipeline._Run(options) as run:
        _, cli = run.open(path, ("gaussian", {"sigma": 1.5}), whole="z")
    opened = zchunk.open(path, memory_limit=options.budget())
    python = zchunk.filter(opened, "gaussian", sigma=1.5)
    assert cli.data.numblocks[1] > 1
    assert python.data.chunks == cli.data.chunks
    assert opened.data.chunks != cli.data.chunks  # the filter re-plans: it is not the default
