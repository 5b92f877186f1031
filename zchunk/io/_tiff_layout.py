"""What a parsed TIFF source is: its files, every plane's segment table, and one task's block.

:mod:`zchunk.io._tiff_parse` builds a :class:`TiffLayout` from the headers, once, when a stack is
opened; the layout cuts a :class:`BlockSpec` (the segments of one dask task's block, small and
picklable) for every chunk, which :mod:`zchunk.io._tiff` reads. A :class:`FileId` is a file as
it was parsed, so a reader notices a file changed on disk since.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import tifffile

from zchunk.errors import InputChangedError

__all__ = ["BlockSpec", "FileId", "TiffLayout"]


@dataclass(frozen=True, slots=True)
class FileId:
    """A file as it was when its header was parsed: size, mtime, inode and ctime.

    The inode catches a file replaced by another (a rename over it); the ctime, which no
    user call can set back, catches a file rewritten in place with its size and mtime kept.
    """

    path: str
    size: int
    mtime_ns: int
    inode: int = 0
    ctime_ns: int = 0

    @classmethod
    def of(cls, path: str) -> FileId:
        """Identify `path` as it is now."""
        st = os.stat(path)
        return cls(os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    def check(self, fd: int) -> None:
        """Raise InputChangedError if the open file `fd` is not the file that was parsed."""
        st = os.fstat(fd)
        if st.st_size != self.size:
            what = f"size {self.size} -> {st.st_size} bytes"
        elif st.st_mtime_ns != self.mtime_ns:
            what = "modified, same size"
        elif st.st_ino != self.inode:
            what = "replaced by another file"
        elif st.st_ctime_ns != self.ctime_ns:
            what = "rewritten or its attributes changed, same size and modification time"
        else:
            return
        msg = f"{self.path} changed on disk after it was opened ({what}); open it again"
        raise InputChangedError(msg)


@dataclass(frozen=True, slots=True)
class TiffLayout:
    """Where every plane's stored segments are, and how to decode them.

    `offsets` and `bytecounts` have shape (planes, segments per plane); planes are in C order
    of the leading (non y/x) axes of the stack.
    """

    files: tuple[FileId, ...]
    plane_file: np.ndarray
    offsets: np.ndarray
    bytecounts: np.ndarray
    height: int
    width: int
    dtype: np.dtype[Any]  # with the file's byte order
    compression: int
    predictor: int
    segment_shape: tuple[int, int]  # rows, columns of one strip or tile
    tiled: bool
    bigtiff: bool
    kind: str  # imagej, ome, shaped, generic, folder
    jpegtables: bytes | None = None  # JPEGTables shared by every page (JPEG compression)

    @property
    def compressed(self) -> bool:
        """True unless the data are stored raw."""
        return self.compression != 1

    @property
    def segments_per_row(self) -> int:
        """Segments across the width (1 for strips)."""
        return math.ceil(self.width / self.segment_shape[1])

    @property
    def stored_bytes(self) -> int:
        """Bytes of pixel data stored in the file(s)."""
        return int(self.bytecounts.sum())

    def describe(self) -> dict[str, Any]:
        """Layout facts for ``zchunk info``."""
        name = tifffile.COMPRESSION(self.compression).name.lower()
        names = {"file_names": [os.path.basename(f.path) for f in self.files]}
        return {
            "format": "tiff",
            "kind": self.kind,
            "files": len(self.files),
            # the files of a dataset (multi-file OME-TIFF); a folder's are the folder's
            **(names if len(self.files) > 1 and self.kind != "folder" else {}),
            "compression": "none" if self.compression == 1 else name,
            "predictor": self.predictor,
            "tiled": self.tiled,
            "segment_shape": list(self.segment_shape),
            "segments_per_plane": int(self.offsets.shape[1]),
            "bigtiff": self.bigtiff,
            "byteorder": "big" if self.dtype.byteorder == ">" else "little",
            "stored_bytes": self.stored_bytes,
        }

    def block_spec(
        self, planes: np.ndarray, rows: slice, cols: slice, shape: tuple[int, ...]
    ) -> BlockSpec:
        """Return what a task needs to read `planes` (flat indices) x `rows` x `cols`.

        `shape` is the block's shape: the leading block shape, then rows and columns.
        """
        sh, sw = self.segment_shape
        per_row = self.segments_per_row
        seg_rows = range(rows.start // sh, (rows.stop - 1) // sh + 1)
        seg_cols = range(cols.start // sw, (cols.stop - 1) // sw + 1) if self.tiled else range(1)
        segs = np.array([r * per_row + c for r in seg_rows for c in seg_cols], dtype=np.int64)
        files = np.unique(self.plane_file[planes])
        return BlockSpec(
            files=tuple(self.files[i] for i in files),
            plane_file=np.searchsorted(files, self.plane_file[planes]).astype(np.int32),
            segments=segs,
            offsets=self.offsets[np.ix_(planes, segs)],
            bytecounts=self.bytecounts[np.ix_(planes, segs)],
            rows=(rows.start, rows.stop),
            cols=(cols.start, cols.stop),
            height=self.height,
            width=self.width,
            dtype=self.dtype,
            compressed=self.compressed,
            tiled=self.tiled,
            segment_shape=self.segment_shape,
            decoder_file=self.files[0],
            shape=shape,
            jpegtables=self.jpegtables,
        )


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """Everything one read task needs; small and picklable."""

    files: tuple[FileId, ...]
    plane_file: np.ndarray  # (planes,) index into files
    segments: np.ndarray  # (k,) segment indices within a page
    offsets: np.ndarray  # (planes, k)
    bytecounts: np.ndarray  # (planes, k)
    rows: tuple[int, int]
    cols: tuple[int, int]
    height: int
    width: int
    dtype: np.dtype[Any]
    compressed: bool
    tiled: bool
    segment_shape: tuple[int, int]
    decoder_file: FileId
    shape: tuple[int, ...]  # block shape
    jpegtables: bytes | None = None
