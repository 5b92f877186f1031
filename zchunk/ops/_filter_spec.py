"""What a filter is: its frozen spec, scipy's kernel for it, its parameter checks and halo.

:mod:`zchunk.ops.filters` checks a call with these functions and builds a :class:`Spec`; the
tasks (:mod:`zchunk.ops._filter_stream`) run a spec on a block or a region of a file, streamed
through the compiled kernels when the filter has them, else with the scipy kernel of its
:data:`REGISTRY` entry. Module docstring of :mod:`zchunk.ops.filters`: the semantics.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import ndimage

from zchunk._types import FILTERS, MODES
from zchunk.errors import OptionError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from zchunk.stack import Stack

__all__ = [
    "RANK_DTYPES",
    "REGISTRY",
    "SPATIAL",
    "Spec",
    "check_kernel",
    "check_memory",
    "check_params",
    "check_sigma",
    "check_size",
    "halo_pixels",
    "halo_radius",
]


SPATIAL = "zyx"
RANK_DTYPES = frozenset(np.dtype(t) for t in np.typecodes["AllInteger"] + "fd")


@dataclass(frozen=True, slots=True)
class Spec:
    """Everything a task needs to filter one block (small and picklable)."""

    name: str
    axes: tuple[int, ...]  # filtered axes, indices into the block, ascending
    sigma: tuple[float, ...]  # per block axis, 0 where not filtered (sigma filters)
    size: tuple[int, ...]  # per block axis, 1 where not filtered (size filters)
    mode: str
    cval: float
    truncate: float
    work: np.dtype[Any]
    out: np.dtype[Any] | None


# kernels: (block in the working dtype, spec) -> filtered block -------------------------------


def _gaussian(values: np.ndarray, spec: Spec) -> np.ndarray:
    out: np.ndarray = ndimage.gaussian_filter(
        values, spec.sigma, mode=spec.mode, cval=spec.cval, truncate=spec.truncate
    )
    return out


def _gaussian_gradient_magnitude(values: np.ndarray, spec: Spec) -> np.ndarray:
    out: np.ndarray = ndimage.gaussian_gradient_magnitude(
        values, spec.sigma, mode=spec.mode, cval=spec.cval, axes=spec.axes, truncate=spec.truncate
    )
    return out


def _edge_magnitude(values: np.ndarray, spec: Spec, *, smooth: tuple[int, ...]) -> np.ndarray:
    """Scipy's sobel/prewitt along each filtered axis, smoothing only along the filtered axes."""
    derivatives = []
    for axis in spec.axes:
        d = ndimage.correlate1d(values, [-1, 0, 1], axis, mode=spec.mode, cval=spec.cval)
        for other in spec.axes:
            if other != axis:
                ndimage.correlate1d(d, smooth, other, output=d, mode=spec.mode, cval=spec.cval)
        derivatives.append(d)
    magnitude: np.ndarray = functools.reduce(np.hypot, derivatives)
    return magnitude


def _laplace(values: np.ndarray, spec: Spec) -> np.ndarray:
    out: np.ndarray = ndimage.laplace(values, mode=spec.mode, cval=spec.cval, axes=spec.axes)
    return out


def _sized(func: Callable[..., np.ndarray]) -> Callable[[np.ndarray, Spec], np.ndarray]:
    def kernel(values: np.ndarray, spec: Spec) -> np.ndarray:
        return func(values, size=spec.size, mode=spec.mode, cval=spec.cval)

    return kernel


@dataclass(frozen=True, slots=True)
class _Filter:
    kernel: Callable[[np.ndarray, Spec], np.ndarray]
    param: Literal["sigma", "size"] | None
    rank: bool = False  # exact in any dtype: keeps the input dtype
    per_plane: bool = False  # default of per_plane=None
    extras: tuple[str, ...] = ("cval",)


REGISTRY: dict[str, _Filter] = {
    "gaussian": _Filter(_gaussian, "sigma", extras=("truncate", "cval")),
    "sobel": _Filter(functools.partial(_edge_magnitude, smooth=(1, 2, 1)), None, per_plane=True),
    "prewitt": _Filter(functools.partial(_edge_magnitude, smooth=(1, 1, 1)), None, per_plane=True),
    "laplace": _Filter(_laplace, None),
    "gaussian_gradient_magnitude": _Filter(
        _gaussian_gradient_magnitude, "sigma", extras=("truncate", "cval")
    ),
    "median": _Filter(_sized(ndimage.median_filter), "size", rank=True),
    "uniform": _Filter(_sized(ndimage.uniform_filter), "size"),
    "minimum": _Filter(_sized(ndimage.minimum_filter), "size", rank=True),
    "maximum": _Filter(_sized(ndimage.maximum_filter), "size", rank=True),
}
assert set(REGISTRY) == set(FILTERS)


# validation -----------------------------------------------------------------------------------


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _per_axis(name: str, param: str, value: Any, letters: str) -> tuple[Any, ...]:
    """Spread a scalar over the filtered axes, or check a sequence has one value per axis."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.ndim == 0 else tuple(value.tolist())
    if not isinstance(value, (tuple, list)):
        return (value,) * len(letters)
    values = tuple(value)
    if len(values) != len(letters):
        msg = (
            f"{param}={value!r} has {len(values)} values but {name} filters {len(letters)} "
            f"axes ({', '.join(letters)}): give one value for all or one per axis"
        )
        raise OptionError(msg)
    return values


def check_sigma(name: str, sigma: Any, letters: str) -> tuple[float, ...]:
    sigmas = _per_axis(name, "sigma", sigma, letters)
    everywhere = name == "gaussian_gradient_magnitude"  # a derivative needs smoothing
    if all(_is_real(s) and math.isfinite(float(s)) and float(s) >= 0 for s in sigmas):
        positive = [float(s) > 0 for s in sigmas]
        if all(positive) or (any(positive) and not everywhere):
            return tuple(float(s) for s in sigmas)
    if everywhere:
        need = "a positive number of pixels along every filtered axis"
    elif isinstance(sigma, (tuple, list, np.ndarray)) and len(sigmas) > 1:
        need = "numbers of pixels >= 0, at least one > 0"
    else:
        need = "a positive number of pixels"
    msg = f"sigma={sigma!r} is invalid for {name}: give {need}, e.g. sigma=2"
    raise OptionError(msg)


def check_size(name: str, size: Any, letters: str) -> tuple[int, ...]:
    sizes = _per_axis(name, "size", size, letters)
    if all(_is_int(s) and int(s) >= 1 for s in sizes):
        return tuple(int(s) for s in sizes)
    msg = (
        f"size={size!r} is invalid for {name}: give a positive whole number of pixels, e.g. size=3"
    )
    raise OptionError(msg)


def check_kernel(
    name: str,
    stack: Stack,
    letters: str,
    sigmas: tuple[float, ...],
    sizes: tuple[int, ...],
    truncate: float,
) -> None:
    """Refuse a kernel larger than the data, before anything is allocated.

    A Gaussian's 1-D weights (float64, 2 * truncate * sigma + 1 of them) must not outweigh the
    stack; a rank or uniform window must not hold more pixels than the stack, nor be wider
    than twice an axis (beyond that the reflected image repeats).
    """
    shape = {a: int(stack.data.shape[stack.axis(a)]) for a in letters}
    data = max(int(stack.data.nbytes), 1 << 20)
    if sigmas:
        width = max(2 * int(truncate * s + 0.5) + 1 for s in sigmas)
        if 8 * width > data:
            msg = (
                f"sigma={max(sigmas):g} is too large for {name} on a stack of shape "
                f"{tuple(stack.data.shape)}: its kernel ({width} pixels) outweighs the data; "
                "use a sigma below the image size"
            )
            raise OptionError(msg)
    if sizes:
        wide = [a for a, s in zip(letters, sizes, strict=True) if s > 2 * shape[a] + 1]
        if wide or math.prod(sizes) > int(stack.data.size):
            msg = (
                f"size={sizes if len(set(sizes)) > 1 else sizes[0]} is too large for {name} on "
                f"a stack of shape {tuple(stack.data.shape)}: the window holds more pixels "
                "than the image; use a size below the image size"
            )
            raise OptionError(msg)


def check_memory(spec: Spec, shape: tuple[int, ...], budget: int, workers: int) -> None:
    """Refuse a filter whose smallest task cannot fit the memory budget, before anything runs.

    Whatever the chunks, a task filtering one output row holds a ring of ``min(2 rz + 1, Z)``
    planes (3-D; one per plane) of ``min(Y, 2 ry + 1)`` rows by ``min(X, 2 rx + 1)`` columns
    (r: the halo along each axis), in float32 or the input's type; `workers` tasks run at once.
    """
    radius = {a: halo_radius(spec, a) for a in spec.axes}
    three_d = len(spec.axes) == 3
    z, y, x = (spec.axes[0] if three_d else None), spec.axes[-2], spec.axes[-1]
    depth = min(2 * radius[z] + 1, shape[z]) if z is not None else 1
    rows, cols = min(shape[y], 2 * radius[y] + 1), min(shape[x], 2 * radius[x] + 1)
    need = depth * rows * cols * max(4, spec.work.itemsize)
    if need * workers <= budget:
        return
    from zchunk.budget import format_bytes

    param = f"sigma={max(spec.sigma):g}" if REGISTRY[spec.name].param == "sigma" else ""
    param = f"size={max(spec.size)}" if REGISTRY[spec.name].param == "size" else param
    msg = (
        f"{spec.name} {param}: each of {workers} worker(s) needs at least {format_bytes(need)} "
        f"({depth} plane(s) of {rows} x {cols} pixels), more than the memory budget of "
        f"{format_bytes(budget)} allows: use a smaller {param.split('=')[0] or 'kernel'} or "
        "a larger memory limit (--memory-limit)"
    )
    raise OptionError(msg)


def _takes(name: str, spec: _Filter) -> str:
    params = ([spec.param] if spec.param else []) + list(spec.extras)
    return f"{name} takes {', '.join(params)}"


def check_params(
    name: str, spec: _Filter, sigma: Any, size: Any, mode: str, params: dict[str, Any]
) -> tuple[float, float]:
    """Check the parameters a filter takes; return (cval, truncate)."""
    for param, value in (("sigma", sigma), ("size", size)):
        if value is not None and spec.param != param:
            msg = f"{name} does not take {param}={value!r}: {_takes(name, spec)}"
            raise OptionError(msg)
    if spec.param == "sigma" and sigma is None:
        msg = f"{name} needs sigma (in pixels), e.g. sigma=2"
        raise OptionError(msg)
    if spec.param == "size" and size is None:
        msg = f"{name} needs size (in pixels), e.g. size=3"
        raise OptionError(msg)
    for param, value in params.items():
        if param not in spec.extras:
            msg = f"{name} does not take {param}={value!r}: {_takes(name, spec)}"
            raise OptionError(msg)
    if mode not in MODES:
        msg = f"mode={mode!r} is not one of {', '.join(MODES)}"
        if mode in ("wrap", "grid-wrap"):
            msg += " (wrap needs the far edge of the image, which a chunk does not hold)"
        raise OptionError(msg)
    cval = params.get("cval", 0.0)
    if "cval" in params and mode != "constant":
        msg = f"cval={cval!r} is only used with mode='constant', not mode={mode!r}"
        raise OptionError(msg)
    if not (_is_real(cval) and not math.isnan(float(cval))):
        msg = f"cval={cval!r} must be a number (the value outside the image)"
        raise OptionError(msg)
    truncate = params.get("truncate", 4.0)
    if not (_is_real(truncate) and math.isfinite(float(truncate)) and float(truncate) > 0):
        msg = f"truncate={truncate!r} must be a positive number of sigmas, e.g. truncate=4"
        raise OptionError(msg)
    return float(cval), float(truncate)


# halos ----------------------------------------------------------------------------------------


def halo_radius(spec: Spec, axis: int) -> int:
    """Halo scipy needs along `axis` (0 where the filter does not reach)."""
    param = REGISTRY[spec.name].param
    if param == "sigma":
        return int(spec.truncate * spec.sigma[axis] + 0.5)  # scipy's kernel radius
    if param == "size":
        return spec.size[axis] // 2
    return 1 if axis in spec.axes else 0


def halo_pixels(
    name: str,
    *,
    sigma: float | Sequence[float] | None = None,
    size: int | Sequence[int] | None = None,
    truncate: float = 4.0,
    **_: Any,
) -> int:
    """Return the widest halo (pixels) filter `name` exchanges along y or x.

    Examples
    --------
    >>> halo_pixels("gaussian", sigma=2), halo_pixels("median", size=5), halo_pixels("sobel")
    (8, 2, 1)
    """
    param = REGISTRY[name].param if name in REGISTRY else None
    if param == "sigma" and sigma is not None:
        values = [sigma] if isinstance(sigma, (int, float)) else list(sigma)
        # values the checks refuse (nan, inf, text) have no halo: filter() says why
        ok = [float(v) for v in values if _is_real(v) and math.isfinite(float(v))]
        return max((int(truncate * v + 0.5) for v in ok if 0 <= v < 2**40), default=1)
    if param == "size" and size is not None:
        values = [size] if isinstance(size, int) else list(size)
        return max((int(v) // 2 for v in values if _is_int(v)), default=1)
    return 1
