"""imagesim: Maxar ARD deliveries to chips, labels, embeddings and similar-place search."""

from __future__ import annotations

from imagesim._imagesim import __version__

__all__ = ["__version__"]
