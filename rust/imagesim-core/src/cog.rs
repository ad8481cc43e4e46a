//! GeoTIFF / COG reader. (API contract; the implementation is being written — see the module
//! owner's task.) Opening parses every IFD once; reads are `&self` and thread-safe (positional
//! reads), decoding only the chunks (tiles or strips) a window touches.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::grid::Window;

/// TIFF compression codes we care about by name.
pub mod compression {
    pub const NONE: u16 = 1;
    pub const LZW: u16 = 5;
    pub const OJPEG: u16 = 6;
    pub const JPEG: u16 = 7;
    pub const DEFLATE: u16 = 8;
    pub const PACKBITS: u16 = 32773;
    pub const ADOBE_DEFLATE: u16 = 32946;
    pub const ZSTD: u16 = 50000;
    pub const WEBP: u16 = 50001;
}

/// Photometric interpretation codes.
pub mod photometric {
    pub const MIN_IS_WHITE: u16 = 0;
    pub const MIN_IS_BLACK: u16 = 1;
    pub const RGB: u16 = 2;
    pub const PALETTE: u16 = 3;
    pub const YCBCR: u16 = 6;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    Uint,
    Int,
    Float,
}

/// One image (IFD) of the file: the full-resolution image is level 0, reduced-resolution
/// overviews follow in file order. Mask IFDs are not levels.
#[derive(Debug, Clone)]
pub struct Level {
    pub width: u32,
    pub height: u32,
    pub bands: u16,
    pub bits_per_sample: u16,
    pub sample_format: SampleFormat,
    pub compression: u16,
    pub photometric: u16,
    /// PlanarConfiguration = 2 (one plane per band).
    pub planar: bool,
    pub predictor: u16,
    pub tiled: bool,
    /// Chunk size: tile size, or (width, rows per strip) for strips.
    pub chunk_width: u32,
    pub chunk_height: u32,
    /// Chunk offsets/byte counts in file order (for planar, band-major).
    pub offsets: Vec<u64>,
    pub byte_counts: Vec<u64>,
    /// JPEGTables (abbreviated table-specification stream) when compression is JPEG.
    pub jpeg_tables: Option<Vec<u8>>,
}

impl Level {
    /// Chunks across and down.
    pub fn chunks_across(&self) -> u32 {
        self.width.div_ceil(self.chunk_width)
    }
    pub fn chunks_down(&self) -> u32 {
        self.height.div_ceil(self.chunk_height)
    }
    /// Index of the chunk at chunk column `cx`, row `cy` (plane 0 for planar).
    pub fn chunk_index(&self, cx: u32, cy: u32) -> usize {
        (cy * self.chunks_across() + cx) as usize
    }
}

/// Georeferencing from the GeoTIFF tags.
#[derive(Debug, Clone, Default)]
pub struct GeoInfo {
    /// GDAL-order geotransform (from ModelPixelScale + ModelTiepoint, or ModelTransformation).
    pub geotransform: Option<[f64; 6]>,
    /// EPSG code of the projected (or geographic) CRS when the GeoKeys give one.
    pub epsg: Option<u32>,
    /// GDAL_NODATA tag value.
    pub nodata: Option<f64>,
}

/// Decoded pixels of a window, bands last (row-major, interleaved).
#[derive(Debug, Clone)]
pub enum RasterData {
    U8(Vec<u8>),
    U16(Vec<u16>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

#[derive(Debug, Clone)]
pub struct Raster {
    pub width: u32,
    pub height: u32,
    pub bands: u16,
    pub data: RasterData,
}

pub struct Cog {
    path: PathBuf,
    levels: Vec<Level>,
    geo: GeoInfo,
}

impl Cog {
    pub fn open(path: &Path) -> Result<Cog> {
        Err(Error::unsupported(path, "COG reader not implemented yet"))
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }
    pub fn geo(&self) -> &GeoInfo {
        &self.geo
    }
    /// Still-compressed bytes of chunk `index` of `level`; `None` for a sparse chunk
    /// (offset and byte count 0).
    pub fn read_raw_chunk(&self, level: usize, index: usize) -> Result<Option<Vec<u8>>> {
        let _ = (level, index);
        Err(Error::unsupported(&self.path, "not implemented yet"))
    }
    /// Decode one chunk to interleaved u8 pixels (chunk_width x chunk_height x bands,
    /// all planes for planar files). Sparse chunks decode to the nodata value (or 0).
    pub fn decode_chunk_u8(&self, level: usize, cx: u32, cy: u32) -> Result<Vec<u8>> {
        let _ = (level, cx, cy);
        Err(Error::unsupported(&self.path, "not implemented yet"))
    }
    /// Any window of any level, any supported sample type, bands last.
    pub fn read_window(&self, level: usize, window: Window) -> Result<Raster> {
        let _ = (level, window);
        Err(Error::unsupported(&self.path, "not implemented yet"))
    }
    /// Window of an 8-bit image as interleaved u8, bands last.
    pub fn read_window_u8(&self, level: usize, window: Window) -> Result<Vec<u8>> {
        let _ = (level, window);
        Err(Error::unsupported(&self.path, "not implemented yet"))
    }
}
