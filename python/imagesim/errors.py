"""The one exception hierarchy of imagesim.

Every error the Rust core raises maps to one of these classes (see
``rust/imagesim-py/src/error.rs``). Where a builtin says the same thing, the class inherits it too,
so ``except FileNotFoundError`` or ``except ValueError`` keep working (the approach of rasterio's
``errors.py``).
"""

from __future__ import annotations

from typing import Any


class ImagesimError(Exception):
    """Base class of every imagesim error."""


class InvalidArgumentError(ImagesimError, ValueError):
    """An option or argument has a value imagesim cannot use.

    Library code names parameters in backticks (```zoom` 21: …``) and sets ``param`` when one
    parameter is at fault; the command line shows each named parameter as its flag (``--zoom 21: …``).
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class GridError(ImagesimError, ValueError):
    """A quadkey, tile, UTM zone or chip name that breaks the ARD grid rules."""


class ImagesimFileNotFoundError(ImagesimError, FileNotFoundError):
    """A file or directory imagesim needs does not exist."""


class ImagesimIOError(ImagesimError, OSError):
    """The operating system failed to read or write a file."""


class ImagesimPermissionError(ImagesimIOError, PermissionError):
    """Access refused: file permissions, or an object store rejecting the credentials."""


class CogError(ImagesimError):
    """A GeoTIFF/COG could not be read."""


class CorruptTiffError(CogError, ValueError):
    """The TIFF structure or a tile's compressed data is damaged."""


class UnsupportedTiffError(CogError, NotImplementedError):
    """A valid TIFF using a feature imagesim does not read."""


class GeoreferenceError(CogError, ValueError):
    """A COG's georeferencing does not match the ARD cell it is filed under."""


class WindowError(CogError, IndexError):
    """A pixel window or overview level outside the image."""


class JpegError(ImagesimError, ValueError):
    """A JPEG could not be encoded or decoded."""


class SampleDataError(ImagesimError):
    """The sample ARD delivery could not be written."""


class ArdLayoutError(ImagesimError, ValueError):
    """A path does not look like an ARD delivery."""


class MaskError(ImagesimError, ValueError):
    """An ARD vector mask (a `-*-mask.gpkg` GeoPackage) cannot be read or used."""


class TableError(ImagesimError, ValueError):
    """A Parquet table (chips.parquet, nodata.parquet) that cannot be read or written: damaged, or a
    column of a type imagesim does not read."""


class OutputExistsError(ImagesimError, FileExistsError):
    """An output already exists and overwriting was not asked for."""


class MissingDependencyError(ImagesimError, ImportError):
    """An optional dependency needed by this command is not installed."""


def require(module: str, extra: str, *, purpose: str = "this") -> Any:
    """``module`` imported, or a :class:`MissingDependencyError` naming the extra that installs it.

    The one way imagesim imports an optional dependency (torch, onnxruntime, faiss, dask, fastapi …).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs {module.split('.')[0]} ({exc}); install it with `pip install 'imagesim[{extra}]'`"
        ) from exc


# --- osm ---


class OsmError(ImagesimError):
    """OpenStreetMap data could not be fetched, imported or read."""


class OverpassError(OsmError):
    """An Overpass request failed for good (retries spent, or an error retrying cannot fix)."""


class OverpassResponseError(OverpassError, ValueError):
    """An Overpass answer that is partial, malformed or reports a runtime error in ``remark``."""


class OverpassUnreachableError(OverpassError, ConnectionError):
    """The Overpass server cannot be reached at all (name not resolved, connection refused, no route):
    no retry helps, and no other cell can be fetched from it either."""


class OsmImportError(OsmError, ValueError):
    """An OSM extract that cannot be read: corrupt, empty or in an unknown format."""


class OsmDataError(OsmError, ValueError):
    """An ``osm_data.json`` that is not a valid per-cell OSM file."""


# --- labels ---


class LabelError(ImagesimError):
    """Labels could not be built, read or split."""


class TaxonomyError(LabelError, ValueError):
    """A taxonomy TOML file that is not valid."""


class LabelInputError(LabelError, ValueError):
    """A chips manifest, nodata index or labels file that cannot be used as labels input."""


# --- export / encode ---


class ChangeError(ImagesimError, ValueError):
    """`imagesim change` cannot pair acquisitions: one acquisition only, different grids, embeddings of two models."""


class ExportError(ImagesimError):
    """An ONNX export that failed its parity check against the PyTorch model."""


class EncodeError(ImagesimError):
    """Chips could not be encoded (bad model, unusable provider, unreadable inputs)."""
