"""The local schedulers of compute_context: no needless imports, the right labels."""

import subprocess
import sys

import dask
import dask.array as da

from zchunk.scheduler import compute_context, scheduler_label

FRESH = """
import sys
import dask.array as da
from zchunk.scheduler import compute_context
with compute_context({scheduler!r}):
    assert int(da.ones(10, chunks=5).sum().compute()) == 10
print("distributed" in sys.modules)
"""


def test_local_schedulers_do_not_import_distributed():
    # dask given a scheduler's *name* imports distributed to look for a client (0.15 s)
    for scheduler in ("threads", "synchronous", None):
        code = FRESH.format(scheduler=scheduler)
        out = subprocess.run(
            [sys.executable, "-c", code], check=False, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "False", scheduler


def test_labels_name_the_local_scheduler():
    for scheduler in ("threads", "synchronous"):
        with compute_context(scheduler):
            assert scheduler_label(None, None) == scheduler
            assert int(da.arange(6, chunks=2).sum().compute()) == 15
    with dask.config.set(scheduler="synchronous"):
        assert scheduler_label(None, None) == "synchronous"
