"""An ``embeddings.parquet`` table as `imagesim encode` writes it, from chip-manifest rows and given
vectors (tests of the index and the viewer use stand-in embeddings instead of a trained model)."""

from __future__ import annotations

import numpy as np
import polars as pl


def embeddings_table(manifest: pl.DataFrame, vectors: np.ndarray, model_id: str, predicted: list[list[str]]) -> pl.DataFrame:
    return manifest.select(
        "chip",
        pl.format("{}/{}", "zone", "chip").alias("path"),
        pl.col("zone").cast(pl.UInt8),
        "quadkey",
        "cell",
        "catalog_id",
        pl.lit(model_id).alias("model_id"),
        pl.Series("embedding", vectors.astype(np.float32), dtype=pl.Array(pl.Float32, vectors.shape[1])),
        pl.Series("predicted", predicted, dtype=pl.List(pl.String)),
    )
