//! imagesim-core: the pure-Rust hot path of imagesim (no Python here).
//!
//! - [`batch`]: model input batches: many JPEGs decoded (DCT-scaled) and resized into one buffer.
//! - [`grid`]: the ARD UTM quadkey grid, chip names and windows.
//! - [`footprint`]: chip footprints in WGS84 (UTM inverse, antimeridian split) as WKB.
//! - [`cog`]: GeoTIFF/COG parsing and windowed reads, decoding only the chunks a window touches.
//! - [`jpeg`]: libjpeg-turbo decode/encode and JPEG-in-TIFF tile to standalone JFIF.
//! - [`chip`]: cutting one cell COG into chips (re-encode or passthrough) with no-data counts.
//! - [`nodata`]: exact no-data counts, with a luma-only decode deciding the easy cases.
//! - [`pixels`]: low-level helpers on 8-bit sample planes (shared by `jpeg` and `nodata`).
//! - [`masks`]: exact area of vector mask polygons inside every square of a chip grid.
//! - [`labels`]: multilabel bitsets (u64 words) ⇄ sparse id lists ⇄ dense rows.
//! - [`pool`]: the rayon pool a call runs on.
//! - [`table`]: Parquet tables as plain columns (the chip tables without a dataframe library).
//! - [`store`]: object stores (S3, GCS, Azure, HTTP): listing, reads, background uploads.
pub mod batch;
pub mod chip;
pub mod cog;
pub mod error;
pub mod footprint;
pub mod grid;
pub mod jpeg;
pub mod labels;
pub mod masks;
pub mod nodata;
pub mod pixels;
pub mod pool;
pub mod store;
pub mod table;

pub use error::{Error, Result};
