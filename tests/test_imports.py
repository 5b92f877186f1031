"""Start-up: each command imports only what it uses (``zchunk --version`` nothing heavy)."""

import os
import subprocess
import sys

import pytest
import tifffile

from zchunk.testing import blobs

HEAVY = (
    "dask",
    "numpy",
    "zarr",
    "tifffile",
    "scipy",
    "numba",
    "distributed",
    "psutil",
    "rich",
    "ome_zarr_models",
    "pydantic",
)

RUN = """
import sys
from zchunk.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(" ".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _imported(argv):
    code = RUN.format(argv=argv, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split("\n")[-2].split())


def test_version_and_help_import_nothing_heavy():
    assert _imported(["--version"]) == set()
    assert _imported(["project", "--help"]) == set()


def test_import_zchunk_is_light_and_its_names_load_on_use():
    code = (
        "import sys, zchunk; light = not {'dask', 'numpy', 'zarr'} & set(sys.modules); "
        "zchunk.open; zchunk.compare; print(light, 'dask' in sys.modules, callable(zchunk.compare))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "True", "True"]


@pytest.fixture
def tiff(tmp_path):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, blobs((5, 64, 48), "uint16"))
    return str(path)


def test_info_and_max_load_no_zarr_numba_or_scipy_filters(tiff, tmp_path):
    for argv in (["info", tiff], ["project", tiff, "-m", "max", "-o", str(tmp_path / "m.tif")]):
        assert not _imported(argv) & {"zarr", "numba", "distributed"}, argv
    assert not _imported(["info", tiff]) & {"dask", "scipy"}  # sizes printed without dask
    assert "numba" in _imported(["project", tiff, "-m", "median", "-o", str(tmp_path / "d.tif")])


def test_info_of_the_cli_is_zchunk_info_without_dask_array(tiff):
    import json

    code = (
        f"import sys, json; from zchunk.cli import main; main(['info', {tiff!r}, '--json']); "
        "print('dask.array' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    *lines, imported = out.stdout.strip().split("\n")
    assert imported == "False"
    import zchunk

    assert json.loads("\n".join(lines)) == json.loads(json.dumps(zchunk.info(zchunk.open(tiff))))


def _zchunk_imports(path):
    """The zchunk modules a source file imports, at module level or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zchunk"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("zchunk"))
    return found


def test_io_modules_import_each_other_one_way():
    from pathlib import Path

    import zchunk.io

    folder = Path(zchunk.io.__file__).parent
    graph = {
        f"zchunk.io.{p.stem}": _zchunk_imports(p) for p in folder.glob("_*.py")
    }  # the package __init__ (the public entry) may import any of them
    seen, stack = set(), []

    def visit(module):
        assert module not in stack, " -> ".join([*stack, module])
        if module in seen or module not in graph:
            return
        stack.append(module)
        for dep in graph[module]:
            visit(dep)
        stack.pop()
        seen.add(module)

    for module in graph:
        visit(module)


THREADS = """
import os, sys
sys.argv = ["zchunk", "info", {tiff!r}]
from zchunk.cli import main
main()
print(os.environ.get("OPENBLAS_NUM_THREADS", "unset"), len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="BLAS starts no pool on one core")
def test_the_command_starts_no_blas_thread_pool(tiff):
    """numpy's OpenBLAS would start a thread per core; zchunk's workers are dask's."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    code = THREADS.format(tiff=tiff)
    run = [sys.executable, "-c", code]
    out = subprocess.run(run, check=True, capture_output=True, text=True, env=env)
    assert out.stdout.split()[-2:] == ["1", "1"]  # one thread: the main one
    env["OPENBLAS_NUM_THREADS"] = "2"  # the user's setting is kept
    out = subprocess.run(run, check=True, capture_output=True, text=True, env=env)
    assert out.stdout.split()[-2:] == ["2", "2"]


def test_ops_modules_import_each_other_one_way():
    # filters.py <-> _filter_stream.py was a real circle (the stream called back into filters)
    from pathlib import Path

    import zchunk.ops

    folder = Path(zchunk.ops.__file__).parent
    graph = {f"zchunk.ops.{p.stem}": _zchunk_imports(p) for p in folder.glob("[!_]*.py")}
    graph |= {f"zchunk.ops.{p.stem}": _zchunk_imports(p) for p in folder.glob("_[!_]*.py")}
    order: list[str] = []

    def visit(module, path):
        assert module not in path, " -> ".join([*path, module])
        if module in order or module not in graph:
            return
        for dep in graph[module]:
            visit(dep, [*path, module])
        order.append(module)

    for module in sorted(graph):
        visit(module, [])
    assert {"zchunk.ops.filters", "zchunk.ops._filter_stream"} <= set(order)
    assert not any(m.startswith(("zchunk.io", "zchunk.sinks")) for d in graph.values() for m in d)


def test_zchunk_modules_import_each_other_one_way():
    """No import circle anywhere, typing-only imports included (stack.py <-> _source.py was one).

    A package's __init__ (its public entry, which may import what it hands on) is left out.
    """
    from pathlib import Path

    import zchunk

    root = Path(zchunk.__file__).parent
    graph = {}
    for path in root.rglob("*.py"):
        if path.name != "__init__.py":
            parts = path.relative_to(root.parent).with_suffix("").parts
            graph[".".join(parts)] = _zchunk_imports(path)
    assert {"zchunk.stack", "zchunk.io._tiff", "zchunk.ops.projection"} <= set(graph)
    done: set[str] = set()

    def visit(module, path):
        assert module not in path, " -> ".join([*path, module])
        if module in done or module not in graph:
            return
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
