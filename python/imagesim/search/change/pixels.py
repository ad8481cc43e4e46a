"""The pixel method of `imagesim change`: a radiometrically normalised difference of two chips.

Two acquisitions of a place differ everywhere — sun angle, haze, colour balance, their own JPEG encoding —
so a plain difference flags every chip. Per pair of acquisitions (one task: their chips of one cell):

1. both chips of every pair are decoded at 1/4 scale (libjpeg-turbo DCT scaling: 128 px for a 512 px
   chip, ~1.2 m pixels) — change worth finding is tens of metres across, and the scaling averages away
   JPEG noise and sub-pixel misregistration;
2. a pixel is compared only where both chips have data (the no-data rule of ``nodata-index``, grown by
   a pixel for the blurred border) and, when the ARD masks are there, outside both acquisitions' cloud
   and cloud-shadow polygons (grown by ``mask_buffer_m`` for soft cloud edges);
3. each acquisition's haze is removed by dark-object subtraction (per band, the ``haze_percentile`` of the
   compared pixels of the acquisition pair), and the after chip is matched to the before chip by a per-band
   gain (the median ratio over a sample of every chip's compared pixels: robust to the changed ones);
4. per pixel, after a ``smooth`` px box filter, the colour distortion ``min(|b|, |a|) · sin ∠(b, a)``
   (:func:`colour_distortion`; ``measure="angle"``: the spectral angle), scaled by its robust spread over
   the acquisition pair (1.4826 × MAD): blind to brightness, so a shadow that moved with the sun does not
   count, a new material does;
5. a grey-level opening (``opening`` px) removes change thinner than the window (building lean, shadow edges).

Per chip: ``changed_area`` (share of the compared pixels above ``threshold`` spreads after the opening) and
``pixel_change`` (the mean of the chip's most changed ``top_share`` of compared pixels: high when a compact
patch changed strongly, even when the patch is small).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from imagesim import _imagesim as _rs
from imagesim import grid

__all__ = ["PixelSettings", "PixelResult", "compare_pixels", "colour_distortion", "spectral_angle", "box_mean", "window_filter"]

DECODE_BATCH = 256


@dataclass(frozen=True)
class PixelSettings:
    size: int = 128  # pixels per side the chips are compared at (DCT-scaled decode)
    nodata_threshold: int = 4  # a pixel is no-data when every band is <= this (the nodata-index rule)
    mask_buffer_m: float = 15.0  # cloud/shadow polygons grown by this before masking (soft cloud edges)
    smooth: int = 3  # box filter side (px) over the residual
    threshold: float = 4.0  # scaled residual norm above which a pixel is changed
    opening: int = 5  # window (px) of the grey-level opening: change narrower than this is not counted
    top_share: float = 0.02  # pixel_change: mean over this share of the most changed compared pixels
    fit_sample: int = 1024  # pixels per chip pair the radiometric model is fitted on
    haze_percentile: float = 0.01  # dark-object subtraction: each band's haze is this percentile of the darkest pixels
    measure: str = "distortion"  # per pixel: "distortion" (colour distortion, DN) or "angle" (spectral angle)


@dataclass
class PixelResult:
    """Per pair of the task (same order): the scores, or why the pair could not be compared."""

    pixel_change: npt.NDArray[np.float64]
    changed_area: npt.NDArray[np.float64]
    compared_fraction: npt.NDArray[np.float64]
    errors: list[str | None]
    notes: list[str] = field(default_factory=list)
    transform: list[list[float]] | None = None  # the radiometric model: [before haze, after haze, after → before gain], per band


def box_mean(a: npt.NDArray[np.float32], w: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.float32]:
    """Weighted ``k`` × ``k`` box mean of ``a`` (…, H, W[, C]) with weights ``w`` (…, H, W); 0 where no weight."""
    if k <= 1:
        return a
    pad = k // 2

    def box(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        spatial = (x.ndim - 2, x.ndim - 1) if x.ndim == w.ndim else (x.ndim - 3, x.ndim - 2)
        widths = [(0, 0)] * x.ndim
        for ax in spatial:
            widths[ax] = (pad + 1, pad)
        c = np.pad(x, widths).cumsum(axis=spatial[0]).cumsum(axis=spatial[1])
        h, wd = x.shape[spatial[0]], x.shape[spatial[1]]
        sl = [slice(None)] * x.ndim

        def part(r: slice, q: slice) -> Any:
            s = list(sl)
            s[spatial[0]], s[spatial[1]] = r, q
            return c[tuple(s)]

        r1, r0 = slice(k, k + h), slice(0, h)
        c1, c0 = slice(k, k + wd), slice(0, wd)
        return part(r1, c1) - part(r0, c1) - part(r1, c0) + part(r0, c0)

    weighted = a * (w[..., None] if a.ndim == w.ndim + 1 else w)
    num = box(weighted.astype(np.float64))
    den = box(w.astype(np.float64))
    if a.ndim == w.ndim + 1:
        den = den[..., None]
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-9)
    return out.astype(np.float32)


def window_filter(a: npt.NDArray[np.float32], size: int, reduce: Any) -> npt.NDArray[np.float32]:
    """``reduce`` (np.min or np.max) over the ``size`` × ``size`` window around each pixel (edges padded
    with the neutral value: +inf for min, -inf for max)."""
    if size <= 1:
        return a
    pad = size // 2
    fill = np.inf if reduce is np.min else -np.inf
    padded = np.pad(a, pad, constant_values=fill)
    rows = reduce(np.lib.stride_tricks.sliding_window_view(padded, size, axis=0), axis=-1)
    return np.asarray(reduce(np.lib.stride_tricks.sliding_window_view(rows, size, axis=1), axis=-1), dtype=np.float32)


def colour_distortion(b: npt.NDArray[np.float32], a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """How far (DN) the darker of two colours lies from the line through zero and the other: the
    chromaticity distortion of shadow detection (Horprasert et al.), ``min(|b|, |a|) · sin(angle)``. Blind to
    brightness like the angle, and a dark pixel (a shadow, whose colour direction the haze estimate
    distorts most) weighs little."""
    nb = np.sqrt((b * b).sum(axis=-1))
    na = np.sqrt((a * a).sum(axis=-1))
    cos = np.clip((b * a).sum(axis=-1) / (nb * na + 1e-6), -1.0, 1.0)
    return (np.minimum(nb, na) * np.sqrt(1.0 - cos * cos)).astype(np.float32)


def spectral_angle(b: npt.NDArray[np.float32], a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The angle (radians) between the colour vectors of ``b`` and ``a`` (…, 3): blind to brightness, so a
    shadow that moved (a darker copy of the same ground) does not count, a new material does."""
    dot = (b * a).sum(axis=-1)
    norm = np.sqrt((b * b).sum(axis=-1) * (a * a).sum(axis=-1)) + 1e-6
    return np.arccos(np.clip(dot / norm, -1.0, 1.0)).astype(np.float32)


def fit_gain(before: npt.NDArray[np.float32], after: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Per band, the gain mapping haze-free ``after`` onto haze-free ``before`` (pixels × 3): the median
    ratio, robust to the changed pixels."""
    return np.median(before / after, axis=0).astype(np.float32)


def _decode(paths: Sequence[str], size: int) -> tuple[npt.NDArray[np.uint8], list[str | None]]:
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    problems: list[str | None] = []
    for i in range(0, len(paths), DECODE_BATCH):
        part = list(paths[i : i + DECODE_BATCH])
        problems += _rs.decode_batch(part, out[i : i + len(part)], threads=1)  # type: ignore[arg-type]
    return out, problems


def _nodata(px: npt.NDArray[np.uint8], threshold: int) -> npt.NDArray[np.bool_]:
    """No-data pixels (every band <= threshold), grown by one pixel: the scaled decode blurs the border."""
    bad: npt.NDArray[np.bool_] = np.asarray((px <= threshold).all(axis=-1))
    grown = bad.copy()
    grown[..., 1:, :] |= bad[..., :-1, :]
    grown[..., :-1, :] |= bad[..., 1:, :]
    grown[..., :, 1:] |= bad[..., :, :-1]
    grown[..., :, :-1] |= bad[..., :, 1:]
    return grown


def _masked(geom: Any, quadkeys: Sequence[str], size: int) -> npt.NDArray[np.bool_]:
    """Per chip, the pixels that ``geom`` (cell metres) touches."""
    import shapely

    from imagesim.imagery.coverage import grid_areas

    out = np.zeros((len(quadkeys), size, size), bool)
    if geom is None or geom.is_empty:
        return out
    for i, qk in enumerate(quadkeys):
        w, s, e, n = grid.bounds(qk)
        part = shapely.clip_by_rect(geom, w, s, e, n)
        if part.is_empty:
            continue
        cell = (e - w) / size
        # a tiny floor: rounding leaves ~1e-10 m² in squares the polygon does not reach
        out[i] = grid_areas(part, w, n, cell, size, size) > 1e-4 * cell * cell
    return out


def compare_pixels(
    root: str,
    quadkeys: Sequence[str],
    before_paths: Sequence[str],
    after_paths: Sequence[str],
    before_mask: Any = None,
    after_mask: Any = None,
    settings: PixelSettings | None = None,
) -> PixelResult:
    """Compare the chips of one acquisition pair (``before_paths[i]`` with ``after_paths[i]``, relative to
    ``root``, of ``quadkeys[i]``); ``before_mask``/``after_mask``: each acquisition's cloud ∪ cloud-shadow
    geometry in the cell's metres (None: no masks). A task of the runner: returns plain arrays."""
    import shapely

    st = settings or PixelSettings()
    n = len(quadkeys)
    full = [f"{root}/{p}" for p in before_paths], [f"{root}/{p}" for p in after_paths]
    before, b_problems = _decode(full[0], st.size)
    after, a_problems = _decode(full[1], st.size)
    errors: list[str | None] = [bp or ap for bp, ap in zip(b_problems, a_problems)]
    ok = np.array([e is None for e in errors])
    compared = ~_nodata(before, st.nodata_threshold) & ~_nodata(after, st.nodata_threshold) & ok[:, None, None]
    for geom in (before_mask, after_mask):
        if geom is not None and not geom.is_empty:
            grown = shapely.buffer(geom, st.mask_buffer_m) if st.mask_buffer_m > 0 else geom
            compared &= ~_masked(grown, quadkeys, st.size)

    nan = np.full(n, np.nan)
    frac = compared.reshape(n, -1).mean(axis=1)
    result = PixelResult(nan.copy(), nan.copy(), frac, errors)
    if not compared.any():
        return result

    # a sample of every chip's compared pixels: the radiometric model is fitted on it
    rng = np.random.default_rng(0)
    idx_chip, idx_pix = [], []
    flat = compared.reshape(n, -1)
    for i in np.flatnonzero(flat.any(axis=1)).tolist():
        pix = np.flatnonzero(flat[i])
        take = pix if pix.size <= st.fit_sample else rng.choice(pix, st.fit_sample, replace=False)
        idx_chip.append(np.full(take.size, i))
        idx_pix.append(take)
    ci, pi = np.concatenate(idx_chip), np.concatenate(idx_pix)
    b_flat, a_flat = before.reshape(n, -1, 3), after.reshape(n, -1, 3)
    b_sample, a_sample = b_flat[ci, pi].astype(np.float32), a_flat[ci, pi].astype(np.float32)
    # dark-object subtraction: each acquisition's haze is about its darkest pixels
    b_haze = np.percentile(b_sample, st.haze_percentile, axis=0).astype(np.float32)
    a_haze = np.percentile(a_sample, st.haze_percentile, axis=0).astype(np.float32)
    b_lin, a_lin = np.maximum(b_sample - b_haze, 1.0), np.maximum(a_sample - a_haze, 1.0)
    gain = fit_gain(b_lin, a_lin)
    result.transform = [b_haze.tolist(), a_haze.tolist(), gain.tolist()]

    angles = np.zeros((n, st.size, st.size), np.float32)
    for i in range(n):  # per chip: bounded memory for big cells
        w = compared[i].astype(np.float32)
        b = box_mean(np.maximum(before[i].astype(np.float32) - b_haze, 1.0), w, st.smooth)
        a = box_mean(np.maximum(after[i].astype(np.float32) - a_haze, 1.0) * gain, w, st.smooth)
        angles[i] = colour_distortion(b, a) if st.measure == "distortion" else spectral_angle(b, a)
    sample = angles[ci, pi // st.size, pi % st.size]
    centre = float(np.median(sample))
    spread = 1.4826 * float(np.median(np.abs(sample - centre))) + 1e-4
    z = (angles - centre) / spread
    scores_top, scores_area = nan.copy(), nan.copy()
    for i in range(n):
        if not compared[i].any():
            continue
        # grey-level opening: change narrower than the window (a moved shadow, a building's lean) goes,
        # a patch as wide as the window stays
        zi = np.where(compared[i], z[i], -np.inf).astype(np.float32)
        eroded = window_filter(zi, st.opening, np.min)
        opened = window_filter(eroded, st.opening, np.max)
        vals = eroded[compared[i]]
        vals = vals[np.isfinite(vals)]
        k = max(1, round(st.top_share * compared[i].sum()))
        scores_top[i] = float(np.sort(vals)[-k:].mean()) if vals.size >= k else 0.0
        scores_area[i] = float((opened[compared[i]] > st.threshold).mean())
    result.pixel_change, result.changed_area = scores_top, scores_area
    return result
