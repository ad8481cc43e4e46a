"""`imagesim sample-data`: a synthetic but realistic Maxar ARD delivery plus its OpenStreetMap data.

What it writes (the ARD layout of docs/architecture.md, as :mod:`imagesim.imagery.ard` reads it)::

    <dest>/ard/<zone>/<qk12>/<YYYY-MM-DD>/<catid>-visual.tif      COG, 17,408² px, 3 × uint8, 512 px tiles
                                         <catid>.json              acquisition metadata (STAC-like)
                                         <catid>-data-mask.gpkg    valid-data polygon(s), cell UTM CRS
                                         <catid>-cloud-mask.gpkg   clouds (multipart, with holes)
                                         <catid>-cloud-shadow-mask.gpkg           their shadows
                                         <catid>-terrain-shadow-mask.gpkg         no features: flat scene
                                         <catid>-water-mask.gpkg                  visible water
                                         <catid>-healthy-vegetation-mask.gpkg     visible forest, park,
                                                                                  grass, meadow, pitches
    <dest>/sample.osm.pbf                                          the scene as OSM data (WGS84): the earlier
                                                                   state, without the planted changes
    <dest>/changes-truth.geojson                                   the planted changes (WGS84 polygons)

The scene (land cover, water, roads, railway, buildings, parking, pitches) is a vector model built
from ``seed`` in the zone's UTM metres. It is rasterized window by window with GDAL into a feature-code
raster, coloured through look-up tables with procedural texture, shaded per acquisition (lighting,
haze, building shadows, cloud shadows), overlaid with the acquisition's soft-edged clouds and masked
by an irregular strip edge: pixels outside the acquisition's valid-data polygon are exactly (0, 0, 0)
and whole 512 px blocks of them are left sparse in the COG; valid pixels are clamped to >= 1 in
every band. The same polygons are written to the OSM file, so
labels derived from it line up with the pixels. Every mask GeoPackage holds one MultiPolygon layer
named after its file (``cloud-mask``, ...) in the cell's UTM CRS, one feature per polygon part; the
metadata's ``eo:cloud_cover`` is the measured clouded share of the data area. The same seed writes
the same files.

Change detection: the first cell has two acquisitions, and the later one (``ACQUISITIONS[1]``)
shows changes planted into the scene (:mod:`.changes`: new buildings, cleared forest, a new road,
flooded fields) where both acquisitions hold cloud-free data; it also has its own colour balance,
lighting, haze and JPEG quality (85; the others 90). The earlier acquisition, the other cell and the
OSM file show the scene without them. ``changes-truth.geojson`` (:data:`CHANGES_TRUTH`) is the
ground truth: an RFC 7946 FeatureCollection, one Feature per planted change, whose polygon is the
changed area and whose properties are ``kind`` (``new_buildings``, ``cleared_forest``, ``new_road``
or ``flooded_field``), ``zone``, ``cell``, ``before_catalog_id``, ``before_date``,
``after_catalog_id`` and ``after_date``; the foreign member ``imagesim`` holds the seed and mode.
Full mode plants 24 changes (6 of each kind), small mode at least 3 (of 3 kinds) in the window. The
mask GeoPackages of every acquisition describe the scene without the changes (the later
acquisition's water and vegetation masks do not show floods or clearings).

Submodules, each importing only those above it:

- :mod:`.acquisitions`: the UTM zone, the two level-12 cells, the three acquisitions (lighting,
  colour, strip edge, small-mode window) and their valid-data polygons;
- :mod:`.scene`: the synthetic vector scene (:class:`~.scene.Feature`, :class:`~.scene.Scene`,
  :func:`~.scene.build_scene`);
- :mod:`.clouds`: each acquisition's clouds and cloud shadows, and the water, vegetation and
  (empty) terrain-shadow masks (:func:`~.clouds.acquisition_masks`);
- :mod:`.changes`: the changes planted in the later acquisition of the first cell, and their
  ground truth (:func:`~.changes.planted_changes`, :func:`~.changes.truth_geojson`);
- :mod:`.render`: rasterizing, colouring, texturing, shading and masking the scene's pixels, window
  by window, and their overview levels;
- :mod:`.writers`: the COG, mask GeoPackage, metadata JSON and OSM PBF writers.

This module holds the entry point, :func:`write_sample`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagesim.errors import InvalidArgumentError, OutputExistsError, SampleDataError
from imagesim.imagery.ard import DATA_MASK, MASK_FILES
from imagesim.imagery.sample.acquisitions import ACQUISITIONS, CELLS, ZONE, Acquisition, valid_polygon
from imagesim.imagery.sample.changes import planted_changes, truth_geojson
from imagesim.imagery.sample.clouds import acquisition_masks
from imagesim.imagery.sample.scene import Scene, build_scene
from imagesim.imagery.sample.writers import metadata, write_cog, write_json, write_mask, write_osm

__all__ = ["SampleSummary", "write_sample", "ZONE", "CELLS", "ACQUISITIONS", "Acquisition", "OSM_FILE", "MARKER", "CHANGES_TRUTH"]

OSM_FILE = "sample.osm.pbf"
MARKER = ".imagesim-sample"
CHANGES_TRUTH = "changes-truth.geojson"
# The cell with two acquisitions: changes are planted in the later one.
_BEFORE, _AFTER = ACQUISITIONS[0], ACQUISITIONS[1]
_JPEG_QUALITY = 90
_AFTER_JPEG_QUALITY = 85  # its own encoding


@dataclass
class SampleSummary:
    root: Path  # the ARD root (<dest>/ard)
    cogs: list[Path]  # every <catid>-visual.tif, in ACQUISITIONS order
    osm_pbf: Path
    zone: int
    cells: list[str]  # level-12 quadkeys
    catalog_ids: list[str]  # same order as cogs
    seconds: float = 0.0
    valid_fractions: dict[str, float] = field(default_factory=dict)  # catalog id -> valid-pixel fraction
    cloud_cover: dict[str, float] = field(default_factory=dict)  # catalog id -> metadata eo:cloud_cover (percent)
    changes_truth: Path = Path()  # <dest>/changes-truth.geojson
    planted: int = 0  # planted changes (features in changes_truth)


def write_sample(
    dest: str | Path,
    *,
    seed: int = 0,
    small: bool = False,
    compression: str = "jpeg",
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SampleSummary:
    """Write the sample ARD delivery and its OSM data under ``dest``; return what was written.

    ``small`` keeps the true ARD geometry (17,408 px COGs, same transform, 512 px tiles) but puts
    imagery only in a ~2,560 px window of each cell (the rest is sparse no-data), so it writes in
    seconds. ``compression`` is ``"jpeg"`` (YCbCr, quality 90, like ARD; 85 for the acquisition
    with planted changes) or ``"deflate"`` (lossless). ``overwrite`` replaces an existing sample
    (its ARD tree, OSM file, change truth and marker). Raises OutputExistsError when ``dest``
    already holds a sample and ``overwrite`` is false, SampleDataError when the changes cannot be
    planted (no room for them in the cloud-free overlap).
    """
    compression = str(compression).lower()
    if compression not in ("jpeg", "deflate"):
        raise InvalidArgumentError(f"compression must be 'jpeg' or 'deflate', not {compression!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError(f"seed must be a non-negative integer, not {seed!r}")
    seed = int(seed)
    say = progress or (lambda _msg: None)
    dest = Path(dest)
    root = dest / "ard"
    pbf = dest / OSM_FILE
    truth = dest / CHANGES_TRUTH
    if dest.exists() and not dest.is_dir():
        raise InvalidArgumentError(f"{dest} exists and is not a directory")
    if (root.exists() and any(root.iterdir())) or pbf.exists() or truth.exists() or (dest / MARKER).exists():
        if not overwrite:
            raise OutputExistsError(f"{dest} already holds a sample delivery (use overwrite to replace it)")
        shutil.rmtree(root, ignore_errors=True)
        pbf.unlink(missing_ok=True)
        truth.unlink(missing_ok=True)
        (dest / MARKER).unlink(missing_ok=True)

    from osgeo import gdal

    gdal.UseExceptions()
    t0 = time.perf_counter()
    # The temporary source GeoTIFF is written once, sequentially: a small block cache is enough and
    # keeps the whole run near 2.5 GB (GDAL's default is 5 % of RAM). Restored afterwards.
    cache_max = gdal.GetCacheMax()
    gdal.SetCacheMax(min(cache_max, 640 * 1024 * 1024))
    try:
        dest.mkdir(parents=True, exist_ok=True)
        say(f"building the synthetic scene (seed {seed})")
        scene = build_scene(seed)
        say(f"scene: {len(scene.features)} features")
        # Valid data and masks first: the planted changes must avoid both acquisitions' clouds.
        valid = {a.catalog_id: valid_polygon(a, small) for a in ACQUISITIONS}
        all_masks = {a.catalog_id: acquisition_masks(a, valid[a.catalog_id], seed, small) for a in ACQUISITIONS}
        t1 = time.perf_counter()
        b_id, a_id = _BEFORE.catalog_id, _AFTER.catalog_id
        planted = planted_changes(scene, _AFTER, seed, small, valid[b_id], valid[a_id], all_masks[b_id], all_masks[a_id])
        # A new scene: build_scene's is cached and shared, never modified.
        after_scene = Scene(features=[*scene.features, *(f for p in planted for f in p.features)])
        say(f"planted {len(planted)} changes in {a_id}, {time.perf_counter() - t1:.1f} s")
        cogs: list[Path] = []
        fractions: dict[str, float] = {}
        cloud_cover: dict[str, float] = {}
        for acq in ACQUISITIONS:
            folder = root / str(ZONE) / acq.cell / acq.date
            folder.mkdir(parents=True, exist_ok=True)
            t1 = time.perf_counter()
            cog = folder / f"{acq.catalog_id}-visual.tif"
            valid_geom = valid[acq.catalog_id]
            masks = all_masks[acq.catalog_id]
            is_after = acq.catalog_id == a_id
            frac = write_cog(
                cog,
                after_scene if is_after else scene,
                acq,
                valid_geom,
                seed,
                small,
                compression,
                masks["cloud"],
                masks["cloud_shadow"],
                quality=_AFTER_JPEG_QUALITY if is_after else _JPEG_QUALITY,
            )
            fractions[acq.catalog_id] = frac
            write_mask(folder / f"{acq.catalog_id}-{DATA_MASK}.gpkg", valid_geom, acq.cell, DATA_MASK)
            for key, name in MASK_FILES.items():
                write_mask(folder / f"{acq.catalog_id}-{name}.gpkg", masks[key], acq.cell, name)
            meta = metadata(acq, valid_geom, frac, masks["cloud"])
            cloud_cover[acq.catalog_id] = meta["properties"]["eo:cloud_cover"]
            write_json(folder / f"{acq.catalog_id}.json", meta)
            cogs.append(cog)
            say(f"{cog.relative_to(dest)}: {frac:.1%} valid, {cloud_cover[acq.catalog_id]:.1f} % cloud, {time.perf_counter() - t1:.1f} s")
        t1 = time.perf_counter()
        n = write_osm(pbf, scene)
        say(f"{OSM_FILE}: {n} elements, {time.perf_counter() - t1:.1f} s")
        write_json(truth, truth_geojson(planted, _BEFORE, _AFTER, ZONE, {"seed": seed, "small": small}))
        say(f"{CHANGES_TRUTH}: {len(planted)} planted changes")
        write_json(
            dest / MARKER,
            {
                "seed": seed,
                "small": small,
                "compression": compression,
                "zone": ZONE,
                "cells": list(CELLS),
                "catalog_ids": [a.catalog_id for a in ACQUISITIONS],
                "changes_truth": CHANGES_TRUTH,
            },
        )
    except (OutputExistsError, InvalidArgumentError):
        raise
    except (RuntimeError, OSError, ValueError) as exc:
        raise SampleDataError(f"could not write the sample delivery to {dest}: {exc}") from exc
    finally:
        gdal.SetCacheMax(cache_max)
    return SampleSummary(
        root=root,
        cogs=cogs,
        osm_pbf=pbf,
        zone=ZONE,
        cells=list(CELLS),
        catalog_ids=[a.catalog_id for a in ACQUISITIONS],
        seconds=time.perf_counter() - t0,
        valid_fractions=fractions,
        cloud_cover=cloud_cover,
        changes_truth=truth,
        planted=len(planted),
    )
