"""Every user-facing default and range, declared once, and the checks that go with them.

Library settings (``ChipSettings`` …) and the command line both read these, so a default or a limit
changes in one place. Checks name the library parameter in backticks; the CLI shows it as its flag
(see :class:`imagesim.errors.InvalidArgumentError`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from imagesim.errors import InvalidArgumentError

# --- chips and the grid ---
ZOOM = 17  # 512 px, 156.25 m chips on ARD
ZOOM_RANGE = (12, 20)
JPEG_QUALITY = 90
QUALITY_RANGE = (1, 100)

# --- no-data ---
NODATA_THRESHOLD = 0  # a pixel is no-data when every band is <= this
NODATA_THRESHOLD_RANGE = (0, 254)
MIN_NODATA_PIXELS = 16  # no-data pixels from which a chip is partial_data

# --- encoding ---
ENCODE_BATCH = 64
ENCODE_PROVIDERS = ("auto", "cuda", "tensorrt", "cpu")
# encode fills each chip's no-data pixels (every band <= this, nodata-index's rule) with the mean of
# its valid pixels, so the embedding describes the data, not the border; a few levels above 0 count
# the JPEG noise along a no-data edge as no-data too (None: decode as is).
ENCODE_NODATA_THRESHOLD = 4

# --- threads ---
PROC_ALL = 0  # worker threads: 0 = all cores


def check_range(
    name: str, value: float, lo: float | None = None, hi: float | None = None, *, what: str = "", exclusive: bool = False
) -> None:
    """``lo <= value <= hi`` (``lo < value < hi`` when ``exclusive``; either bound may be None), or an
    error naming ``name`` and the range. NaN is never in range."""
    above = lo is None or (value > lo if exclusive else value >= lo)
    below = hi is None or (value < hi if exclusive else value <= hi)
    if above and below:
        return
    if lo is not None and hi is not None:
        want = f"between {lo:,} and {hi:,} (exclusive)" if exclusive else f"{lo:,}..{hi:,}"
    elif lo is not None:
        want = f"more than {lo:,}" if exclusive else f"at least {lo:,}"
    else:
        want = f"less than {hi:,}" if exclusive else f"at most {hi:,}"
    raise InvalidArgumentError(f"`{name}` {value}: {what + ' ' if what else ''}must be {want}", param=name)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """``value`` is one of ``choices``, or an error listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise InvalidArgumentError(f"`{name}` {value!r}: choose one of {', '.join(map(str, choices))}", param=name)


# ============================================================================================
# grid and ARD layout (grid.py, imagery/ard.py, labels/cells.py)
# ============================================================================================
UTM_ZONE_RANGE = (1, 60)
QUADKEY_PREFIX_DIGITS = (1, 12)  # a cell filter: a level-12 cell quadkey or a coarser prefix
# ARD masks (imagery/masks.py): the share of a chip's valid area under the cloud mask above which a
# chip is "cloudy". `labels build` leaves cloudy chips out by default; encode/similar/serve keep
# them unless asked (None: no cloud filter).
MAX_CLOUD = 0.1
FRACTION_RANGE = (0.0, 1.0)

# ============================================================================================
# labels: `osm fetch | import | tags`, `labels build | report | split`
# ============================================================================================
OVERPASS_ENDPOINT = "https://overpass-api.de/api/interpreter"
OVERPASS_TIMEOUT = 180  # the server's [timeout:] in seconds; the HTTP wait is this plus 60 s
OVERPASS_TIMEOUT_RANGE = (1, None)
OVERPASS_MAX_RETRIES = 8  # retries per cell after the first attempt
OVERPASS_MAX_RETRIES_RANGE = (0, None)
OSM_ELEMENTS = ("node", "way", "relation")  # `element` of the tag inventory
OSM_NODE_INDEX = "auto"  # libosmium node location index; auto: flex_mem, sparse_file_array above 256 MiB
LABEL_INCLUDE = ("partial", "unmeasured")  # chip classes `include` may add to all_data
LABEL_ZOOM_RANGE = (12, 24)  # chip zooms labels can be built for
REPORT_SAMPLES = 16  # chips in the report's sample grid
SPLIT_VAL = 0.2  # validation share of `labels split` (exclusive range 0..1)
SPLIT_GROUP_LEVEL = 12  # quadkey level of the groups kept on one side (12: the ARD cell)

# ============================================================================================
# learn: `train`, `export` (devices: learn/devices.py)
# ============================================================================================
BACKBONES = ("resnet50", "resnet18")
BACKBONE = "resnet50"
DEVICES = ("auto", "cpu", "cuda")  # torch device of `train`; auto: CUDA when a GPU is present, else CPU
DEVICE = "auto"
PROVIDER = "auto"  # onnxruntime provider (ENCODE_PROVIDERS); auto: CUDA when a GPU is present, else CPU
CHIP_SIZE = 224  # model input, pixels square
CHIP_SIZE_RANGE = (32, 2048)
EPOCHS = 10  # a new run's epochs in all
EPOCHS_RANGE = (1, None)
BATCH_SIZE = 32
BATCH_SIZE_RANGE = (2, None)  # BatchNorm1d cannot train on a batch of one
LR = 1e-3  # Adam learning rate of the head (must be > 0)
BACKBONE_LR_FACTOR = 0.1  # backbone lr = lr × this (must be > 0)
FREEZE_EPOCHS_RANGE = (0, None)
THRESHOLD = 0.35  # sigmoid threshold of the fixed-threshold metrics (exclusive range 0..1)
VAL_FRACTION = 0.2  # validation share when the labels carry no split (exclusive range 0..1)
TRAIN_WORKERS = 2  # DataLoader worker processes
TRAIN_WORKERS_RANGE = (0, None)


def check_training_run(backbone: str, device: str, chip_size: int, epochs: int | None, workers: int, lr: float) -> None:
    """The settings `train` and `pretrain` share (``epochs`` None: the run's own, not checked here)."""
    check_choice("backbone", backbone, BACKBONES)
    check_choice("device", device, DEVICES)
    check_range("chip_size", chip_size, *CHIP_SIZE_RANGE)
    if epochs is not None:
        check_range("epochs", epochs, *EPOCHS_RANGE)
    check_range("workers", workers, *TRAIN_WORKERS_RANGE)
    check_range("lr", lr, 0, exclusive=True)


# `pretrain` (SimCLR): places per batch (two views each; at least 4), AdamW learning rate, NT-Xent temperature
PRETRAIN_EPOCHS = 10
PRETRAIN_BATCH_SIZE = 64
PRETRAIN_BATCH_SIZE_RANGE = (4, None)
PRETRAIN_LR = 1e-3
PRETRAIN_TEMPERATURE = 0.1  # 0.2 before: 0.1 gave better search, pretrained and fine-tuned (docs/train.md)
OPSET = 17  # ONNX opset of `export`
OPSET_RANGE = (7, 23)
PARITY_COUNT = 16  # chips run through torch and onnxruntime by `export`

# ============================================================================================
# search: `index`, `similar`, `serve`
# ============================================================================================
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
INDEX_KIND = "auto"
FLAT_MAX = 100_000  # auto: exact search up to this many vectors
FLAT_MAX_RANGE = (0, None)
# auto: the compressed, streamed ivfpq above this many vectors (2M × 512-d float32 = 4 GB held by ivf)
IVFPQ_MIN = 2_000_000
IVFPQ_MIN_RANGE = (0, None)
IVFPQ_M = 64  # PQ bytes per vector (one 8-bit code per sub-space)
IVFPQ_DIM = 256  # PCA + random rotation to this many dimensions before the inverted file and PQ
IVFPQ_TRAIN = 200_000  # vectors sampled to train the rotation, the lists and PQ (at least 40 per list)
IVFPQ_RERANK = 100  # PQ candidates scored again exactly from the float16 sidecar (0: no sidecar, PQ scores)
IVFPQ_RERANK_RANGE = (0, 10_000)
K = 10  # results of `similar`
K_RANGE = (1, 10_000)
EVAL_SAMPLE = 2000  # chips evaluated by precision@k (0 = all)
EVAL_SAMPLE_RANGE = (0, None)
# similar/serve: leave out chips whose valid (not no-data) share, measured by encode, is below this
# (FRACTION_RANGE; None: keep all; chips without a measured share are kept).
MIN_VALID = 0.5
CLASSMAP_ACQUISITIONS = ("latest", "mean", "all")  # `classmap`: several acquisitions of one quadkey; the first is the default
CLASSMAP_FORMATS = {".parquet": "parquet", ".gpkg": "gpkg", ".geojson": "geojson", ".json": "geojson"}  # by --out's extension
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
SERVE_PORT_RANGE = (1, 65535)
SERVE_WORKERS = 1
SERVE_WORKERS_RANGE = (1, 64)
TILE_QUALITY = 85  # JPEG quality of the map tiles (QUALITY_RANGE)
BLOCK_CACHE_MB = 256  # decoded COG blocks kept per process, MiB (0: none)
BLOCK_CACHE_MB_RANGE = (0, None)
COG_CACHE = 256  # open COG headers kept per process
COG_CACHE_RANGE = (1, None)
STAC_GRANULARITIES = ("acquisition", "chip")  # `stac`: one Item per cell+acquisition (chips as assets) or per chip
STAC_GRANULARITY = "acquisition"  # measured in benches/bench_stac.py (docs/stac.md)

# ============================================================================================
# imagery and encoding runs: `chip`, `nodata-index`, `encode` (imagery/chip.py, imagery/nodata.py,
# learn/encode.py, runner.py)
# ============================================================================================
PROC_RANGE = (0, None)  # `proc`: worker threads, 0 = all cores (PROC_ALL)
MIN_NODATA_PIXELS_RANGE = (1, None)
NODATA_SOURCES = ("pixels", "manifest", "mask")  # `source` of nodata-index; default: manifest when the chip folder has one
ENCODE_BATCH_RANGE = (1, 4096)

# ============================================================================================
# `osm fetch`: how long the Overpass client keeps trying (labels/overpass.py)
# ============================================================================================
OVERPASS_MAX_WAIT = 900.0  # seconds per cell in all (attempts, backoff, slot waits); then the cell fails
OVERPASS_MAX_WAIT_RANGE = (1, None)
OVERPASS_BACKOFF_BASE = 5.0  # seconds before the first retry; doubles each retry, jittered to [½, 1]×
OVERPASS_BACKOFF_MAX = 600.0  # longest wait between two attempts
OVERPASS_STATUS_WAIT_MAX = 1800.0  # longest wait for a free slot (/api/status) before one attempt
