"""Synthetic, realistic image stacks for the demo, tests and benchmarks.

Data are seeded, so every call with the same arguments
gives the same pixels: fluorescent blobs (3-D Gaussians) on a slowly varying background, with
Poisson-like shot noise and Gaussian read noise, scaled to the dtype's useful range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

    from numpy.typing import DTypeLike

__all__ = ["blobs", "iter_blob_planes", "write_tiff_sequence", "write_tiff_stack"]


def _params(shape: tuple[int, ...], n_blobs: int | None, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = shape[-3:] if len(shape) >= 3 else (1, *shape[-2:])
    n = n_blobs if n_blobs is not None else max(4, min(200, (y * x) // 2000))
    return {
        "center": rng.uniform((0, 0, 0), (z, y, x), size=(n, 3)),
        "sigma": rng.uniform((0.8, 1.5, 1.5), (max(1.0, z / 8), 6.0, 6.0), size=(n, 3)),
        "amp": rng.uniform(0.3, 1.0, size=n),
    }


def _plane(iz: int, shape_yx: tuple[int, int], params: dict[str, np.ndarray], t: int) -> np.ndarray:
    """Noise-free intensity of one plane in [0, ~1] (float32)."""
    y, x = shape_yx
    yy = np.arange(y, dtype=np.float32)[:, None]
    xx = np.arange(x, dtype=np.float32)[None, :]
    out = 0.08 + 0.04 * np.sin(yy / max(y, 1) * 3.0 + 0.5) * np.cos(xx / max(x, 1) * 2.0)
    out = np.broadcast_to(out, (y, x)).astype(np.float32)
    drift = 0.7 * t
    for (cz, cy, cx), (sz, sy, sx), amp in zip(
        params["center"], params["sigma"], params["amp"], strict=True
    ):
        wz = np.exp(-0.5 * ((iz - cz) / sz) ** 2)
        if wz < 1e-3:
            continue
        y0, y1 = max(0, int(cy + drift - 4 * sy)), min(y, int(cy + drift + 4 * sy) + 1)
        x0, x1 = max(0, int(cx - 4 * sx)), min(x, int(cx + 4 * sx) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        gy = np.exp(-0.5 * ((yy[y0:y1] - cy - drift) / sy) ** 2)
        gx = np.exp(-0.5 * ((xx[:, x0:x1] - cx) / sx) ** 2)
        out[y0:y1, x0:x1] += np.float32(amp * wz) * gy * gx
    return out


def _to_dtype(signal: np.ndarray, dtype: np.dtype[Any], rng: np.random.Generator) -> np.ndarray:
    if dtype.kind == "f":
        peak = 1000.0
    else:
        peak = float(min(np.iinfo(dtype).max, 4000)) * (0.8 if dtype.itemsize == 1 else 1.0)
        peak = min(peak, 0.8 * np.iinfo(dtype).max)
    expected = signal * peak
    photons = expected + rng.standard_normal(signal.shape, dtype=np.float32) * np.sqrt(
        np.maximum(expected, 1.0)
    )
    noisy = photons + rng.standard_normal(signal.shape, dtype=np.float32) * (0.01 * peak)
    if dtype.kind == "f":
        return noisy.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.rint(noisy), info.min, info.max).astype(dtype)


def iter_blob_planes(
    shape: tuple[int, ...],
    dtype: DTypeLike = np.uint16,
    *,
    seed: int = 0,
    n_blobs: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield the (y, x) planes of :func:`blobs` one at a time, in C order of the leading axes.

    Memory stays at a few planes whatever the shape, so stacks larger than RAM can be written.
    """
    dt = np.dtype(dtype)
    lead = shape[:-2]
    params = _params(shape, n_blobs, seed)
    for flat, index in enumerate(np.ndindex(*lead) if lead else [()]):
        iz = index[-1] if len(shape) >= 3 else 0
        t = index[0] if len(shape) >= 4 else 0
        rng = np.random.default_rng((seed, flat))
        yield _to_dtype(_plane(iz, (shape[-2], shape[-1]), params, t), dt, rng)


def blobs(
    shape: tuple[int, ...],
    dtype: DTypeLike = np.uint16,
    *,
    seed: int = 0,
    n_blobs: int | None = None,
) -> np.ndarray:
    """Return a noisy stack of fluorescent blobs.

    Parameters
    ----------
    shape : tuple of int
        (..., z, y, x); the leading axes (t, c...) repeat the z-stack with a slow drift.
    dtype : dtype
        uint8, uint16, float32...; integers are rounded and clipped.
    seed : int
        Seed of the blob layout and of the noise.

    Examples
    --------
    >>> a = blobs((5, 32, 48), "uint16", seed=1)
    >>> a.shape, a.dtype, bool(a.max() > 3 * np.median(a))
    ((5, 32, 48), dtype('uint16'), True)
    """
    planes = list(iter_blob_planes(shape, dtype, seed=seed, n_blobs=n_blobs))
    return np.stack(planes).reshape(shape)


def write_tiff_stack(
    path: str,
    shape: tuple[int, ...],
    dtype: DTypeLike = np.uint16,
    *,
    seed: int = 0,
    **kwargs: Any,
) -> str:
    """Write :func:`blobs` as one multi-page TIFF, plane by plane (memory: one plane).

    `kwargs` go to ``tifffile.TiffWriter.write`` (``compression``, ``rowsperstrip``, ``tile``,
    ``imagej``-style ``metadata``, ``resolution``...); ``bigtiff`` and ``imagej`` go to the
    writer.
    """
    import tifffile

    writer_keys = {"bigtiff", "imagej", "ome", "byteorder"}
    wargs = {k: kwargs.pop(k) for k in list(kwargs) if k in writer_keys}
    if "bigtiff" not in wargs:
        wargs["bigtiff"] = np.prod(shape) * np.dtype(dtype).itemsize > 2**32 - 2**25
    planes = iter_blob_planes(shape, dtype, seed=seed)
    if "tile" in kwargs:  # tifffile wants the tiles of each page, in order, from an iterator
        th, tw = kwargs["tile"]
        planes = (
            plane[y : y + th, x : x + tw]
            for plane in planes
            for y in range(0, shape[-2], th)
            for x in range(0, shape[-1], tw)
        )
    with tifffile.TiffWriter(path, **wargs) as tif:
        tif.write(planes, shape=shape, dtype=dtype, **kwargs)
    return path


def write_tiff_sequence(
    folder: str,
    shape: tuple[int, int, int],
    dtype: DTypeLike = np.uint16,
    *,
    seed: int = 0,
    prefix: str = "z",
    **kwargs: Any,
) -> list[str]:
    """Write :func:`blobs` as a folder of single-page TIFFs ``z1.tif``, ``z2.tif``...

    Names are not zero-padded on purpose: readers must sort them naturally.
    """
    import os

    import tifffile

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, plane in enumerate(iter_blob_planes(shape, dtype, seed=seed)):
        path = os.path.join(folder, f"{prefix}{i + 1}.tif")
        tifffile.imwrite(path, plane, **kwargs)
        paths.append(path)
    return paths
