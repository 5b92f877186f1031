"""The Writer protocol: a new block-addressed format is its own steps, write() does the rest."""

import zlib
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import pytest

from zchunk.errors import OutputExistsError
from zchunk.sinks import FORMATS, SUFFIXES, WRITERS
from zchunk.sinks._write import write
from zchunk.stack import Stack
from zchunk.testing import blobs


class NpyTarget:
    """Blocks stored into a memory map; what they hold, read back for the resume check."""

    def __init__(self, array):
        self.array = array
        self.shape, self.dtype = array.shape, array.dtype

    def __setitem__(self, region, block):
        self.array[region] = block
        self.array.flush()

    def stored_digest(self, region):
        data = np.ascontiguousarray(self.array[region])
        return data.nbytes, zlib.crc32(memoryview(data).cast("B"))


@dataclass(frozen=True)
class NpyWriter:
    """A .npy file filled block by block through a memory map."""

    format: str = "npy"
    folder: bool = False
    compressed: bool = False

    def settings(self, data):
        return {}, {}

    def create(self, partial, data):
        return NpyTarget(np.lib.format.open_memmap(partial, "w+", data.dtype, data.shape))

    def reopen(self, partial, data):
        return NpyTarget(np.load(partial, mmap_mode="r+"))

    def finish(self, partial, data):
        pass


class Interrupt:
    def __init__(self, after):
        self.after, self.calls = after, 0

    def __call__(self, block):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return block


def test_a_new_format_is_its_own_steps_and_resumes(tmp_path):
    a = blobs((4, 30, 20), "uint16", seed=2)
    stack = Stack(da.from_array(a, chunks=(4, 5, 20)))  # 6 blocks
    out = tmp_path / "a.npy"
    cut = Interrupt(after=4)
    broken = stack.replace(data=stack.data.map_blocks(cut, dtype=a.dtype))
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        write(NpyWriter(), broken, out, overwrite=False, resume=False)
    assert not out.exists()  # only the partial output, under its temporary name
    cut.after, cut.calls = 99, 0  # the same graph, no longer interrupted
    written = write(NpyWriter(), broken, out, overwrite=False, resume=True)
    assert 0 < cut.calls < 6  # the blocks stored before the interrupt are not computed again
    np.testing.assert_array_equal(np.load(written), a)
    with pytest.raises(OutputExistsError):
        write(NpyWriter(), stack, out, overwrite=False, resume=False)


def test_formats_and_suffixes_come_from_the_writers_registry():
    assert {name: f.suffixes[0] for name, f in WRITERS.items()} == FORMATS
    assert sorted(SUFFIXES) == sorted(s for f in WRITERS.values() for s in f.suffixes)
    assert all(callable(f.load()) for f in WRITERS.values())
