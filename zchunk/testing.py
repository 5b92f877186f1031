"""Helpers for tests and benchmarks: synthetic stacks and the files that hold them.

Never imported by library code.
"""

from __future__ import annotations

from zchunk.sample import blobs, iter_blob_planes, write_tiff_sequence, write_tiff_stack

__all__ = ["blobs", "iter_blob_planes", "write_tiff_sequence", "write_tiff_stack"]
