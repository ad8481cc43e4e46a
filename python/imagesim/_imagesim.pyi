# Hand-written stubs of the compiled module `imagesim._imagesim` (checked by mypy.stubtest).
from os import PathLike
from pathlib import Path
from typing import Any, final

import numpy.typing as npt

__version__: str

# --- cog ---
@final
class Cog:
    def __init__(self, path: str | PathLike[str]) -> None: ...
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
    def read(
        self, window: tuple[int, int, int, int] | None = None, level: int = 0
    ) -> npt.NDArray[Any]: ...
# --- end cog ---
