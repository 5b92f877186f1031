"""The README's five-minute tutorial runs as written (on a small sample)."""

import re
import shlex
from pathlib import Path

import pytest

from zchunk.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language):
    text = README.read_text()
    start = text.index("## Five minutes")
    section = text[start : text.index("\n## ", start + 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


@pytest.fixture
def demo_folder(tmp_path, monkeypatch):
    from zchunk import demo

    monkeypatch.setitem(demo.SIZES, "small", (10, 96, 80))
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "zchunk-demo", "--size", "small", "--quiet", "--no-progress"]) == 0
    return tmp_path


def test_tutorial_commands_run_as_written(demo_folder, capsys):
    lines = [line.split(" #")[0].strip() for line in _blocks("sh")[0].splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith("zchunk ")]
    assert len(commands) >= 12
    for argv in commands:
        code = main(argv[1:])
        out = capsys.readouterr()
        assert code == 0, (argv, out.err)
    assert (demo_folder / "results" / "preview.png").exists()
    assert (demo_folder / "results" / "blurred.ome.zarr" / "2").exists()  # two pyramid levels


def test_tutorial_python_runs_as_written(demo_folder):
    code = _blocks("python")[0]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["c"].equal
    assert sorted(namespace["many"]) == ["max", "median", "std"]
