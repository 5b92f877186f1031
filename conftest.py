import dask.array as da
import numpy as np
import pytest

from zchunk.stack import Stack


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace.update(np=np, da=da, Stack=Stack)


def pytest_report_header(config):
    import dask
    import numba
    import tifffile
    import zarr

    return (
        f"numpy {np.__version__}, dask {dask.__version__}, zarr {zarr.__version__}, "
        f"tifffile {tifffile.__version__}, numba {numba.__version__}"
    )
