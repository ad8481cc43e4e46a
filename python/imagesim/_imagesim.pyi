# Hand-written stubs of the compiled module `imagesim._imagesim` (checked by mypy.stubtest).
from collections.abc import Set as AbstractSet
from os import PathLike
from pathlib import Path
from typing import Any, final

import numpy as np
import numpy.typing as npt

__version__: str

# --- grid ---
ORIGIN_X: float
ORIGIN_Y: float
EXTENT: float
CELL_ZOOM: int
CELL_PIXELS: int
APRON: int
COG_PIXELS: int
PIXEL_SIZE: float

def quadkey_to_tile(quadkey: str) -> tuple[int, int, int]: ...
def tile_to_quadkey(tile: tuple[int, int, int]) -> str: ...
def quadkey_bounds(quadkey: str) -> tuple[float, float, float, float]: ...
def quadkey_epsg(quadkey: str, zone: int) -> int: ...
def quadkey_children(quadkey: str, zoom: int) -> list[str]: ...
def chip_window(quadkey: str) -> tuple[int, int, int, int]: ...
def cell_geotransform(quadkey: str) -> list[float]: ...
def chip_name(zone: int, quadkey: str, catalog_id: str) -> str: ...
def parse_chip_name(name: str) -> tuple[int, str, str]: ...
def cog_path_from_chip(chip: str | PathLike[str], ard_root: str | PathLike[str]) -> str: ...

# --- footprint ---
# keys: geometry (list[bytes], WKB), xmin, ymin, xmax, ymax (list[float]), parts (list[int])
def chip_footprints(zones: list[int], quadkeys: list[str], names: list[str] | None = None) -> dict[str, list[Any]]: ...

# --- cog ---
@final
class Cog:
    def __new__(cls, path: str | PathLike[str]) -> Cog: ...
    @property
    def path(self) -> Path: ...
    @property
    def levels(self) -> list[dict[str, Any]]: ...
    # keys: width, height, bands, bits_per_sample, sample_format ('uint'|'int'|'float'),
    # compression, photometric, planar, tiled, chunk_width, chunk_height
    @property
    def geotransform(self) -> tuple[float, float, float, float, float, float] | None: ...
    @property
    def epsg(self) -> int | None: ...
    @property
    def nodata(self) -> float | None: ...
    def read(self, window: tuple[int, int, int, int] | None = None, level: int = 0) -> npt.NDArray[Any]: ...

# --- end cog ---

# --- chip ---
@final
class Progress:
    def __new__(cls) -> Progress: ...
    @property
    def value(self) -> int: ...

def chip_cog(
    cog_path: str | PathLike[str],
    zone: int,
    cell_quadkey: str,
    catalog_id: str,
    out_dir: str | PathLike[str],
    *,
    zoom: int = 17,
    quality: int = 90,
    passthrough: bool = False,
    nodata_threshold: int = 0,
    overwrite: bool = False,
    skip_empty: bool = False,
    measure: bool = True,
    known: AbstractSet[str] = ...,
    existing: AbstractSet[str] | None = None,
    threads: int = 0,
    progress: Progress | None = None,
) -> dict[str, list]: ...

# --- nodata ---
def scan_jpeg_files(
    paths: list[str | PathLike[str]],
    *,
    threshold: int = 0,
    threads: int = 0,
    progress: Progress | None = None,
) -> dict[str, list]: ...

# --- labels ---
def label_words(n_classes: int) -> int: ...
def pack_labels(ids: npt.NDArray[np.uint32], offsets: npt.NDArray[np.int64], n_classes: int) -> npt.NDArray[np.uint64]: ...
def unpack_labels(bits: npt.NDArray[np.uint64], n_classes: int) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]: ...
def dense_labels(bits: npt.NDArray[np.uint64], n_classes: int) -> npt.NDArray[np.uint8]: ...
def label_cooccurrence(bits: npt.NDArray[np.uint64], n_classes: int) -> npt.NDArray[np.uint64]: ...

# --- masks ---
# Signed area of polygon rings inside each square of an nx × ny grid whose north-west corner is
# (x0, y_top), squares of side `cell`: float64 (ny, nx), north row first, west to east. `xy`: float64
# (n, 2) C-contiguous; `ring_offsets`: int64, rings + 1 entries (shapely.to_ragged_array's ring
# offsets). Counter-clockwise rings count positive, clockwise negative. InvalidArgumentError on bad input.
def grid_coverage(
    xy: npt.NDArray[np.float64],
    ring_offsets: npt.NDArray[np.int64],
    x0: float,
    y_top: float,
    cell: float,
    nx: int,
    ny: int,
) -> npt.NDArray[np.float64]: ...

# --- jpeg / batch ---
# `nodata_threshold`: each chip's no-data pixels (every band <= it, the nodata-index rule) are filled
# with its valid pixels' mean; `valid` (float32, len(paths)) receives each chip's valid share (NaN
# where it failed; needs `nodata_threshold`).
def decode_batch(
    paths: list[str | PathLike[str]],
    out: npt.NDArray[np.uint8],
    *,
    threads: int = 0,
    nodata_threshold: int | None = None,
    valid: npt.NDArray[np.float32] | None = None,
) -> list[str | None]: ...

# --- object storage ---
def list_objects(prefix: str, limit: int | None = None) -> list[tuple[str, int, int]]: ...
def store_get(url: str) -> bytes: ...
def store_put(url: str, data: bytes) -> None: ...
def store_put_file(url: str, path: str | PathLike[str]) -> None: ...
def store_get_file(url: str, path: str | PathLike[str]) -> int: ...
def store_head(url: str) -> tuple[int, int] | None: ...
def store_delete(url: str) -> None: ...

# --- Parquet tables (imagesim.tables) ---
def parquet_columns(path: str | PathLike[str]) -> list[str]: ...

@final
class ParquetBatches:
    def __new__(cls, path: str | PathLike[str], columns: list[str], batch_rows: int = 16384) -> ParquetBatches: ...
    def __iter__(self) -> ParquetBatches: ...
    def __next__(self) -> dict[str, list[Any]]: ...

# `fields`: (name, type) with type in str, i32, i64, u8, u16, u32, u64, f32, f64, bool, binary, bbox;
# `write` takes one list per field (a bbox column: four lists xmin, ymin, xmax, ymax).
@final
class ParquetWriter:
    def __new__(cls, path: str | PathLike[str], fields: list[tuple[str, str]], row_group: int = 16384) -> ParquetWriter: ...
    def write(self, columns: list[Any]) -> None: ...
    def close(self, metadata: list[tuple[str, str]] | None = None) -> None: ...
