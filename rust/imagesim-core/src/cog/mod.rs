//! GeoTIFF / COG reader.
//!
//! Opening parses the IFD chain once (`ifd`), picks the full-resolution image and its reduced-
//! resolution overviews (masks are skipped) and reads the georeferencing (`geo`). Reads are
//! `&self` and thread-safe: chunk bytes come from positional reads (`pread`) on one shared file
//! handle and every codec is stateless per call (`decode`), with one libjpeg-turbo decompressor
//! kept per thread. A window read decodes only the chunks (tiles or strips) it touches.
//!
//! Robustness: the file may be hostile. Sizes are bounded before anything is allocated, offsets
//! are checked against the file size, IFD loops end the chain, and third-party decoders run under
//! `catch_unwind`; every failure is a typed [`Error`] naming the file.
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::grid::Window;

mod decode;
mod geo;
mod ifd;
mod level;
pub mod source;

pub use ifd::ByteOrder;

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

/// Largest window one read returns (bytes of decoded samples).
pub const MAX_WINDOW_BYTES: u64 = 4 << 30;
/// Largest decoded chunk (tile or strip) we allocate. Real COG tiles are ~1 MiB.
pub const MAX_CHUNK_BYTES: u64 = 256 << 20;

/// Plain numeric sample types a window can be decoded into (any bit pattern is a valid value).
trait Sample: Copy + Default + Send + Sync {}
impl Sample for u8 {}
impl Sample for i8 {}
impl Sample for u16 {}
impl Sample for i16 {}
impl Sample for u32 {}
impl Sample for i32 {}
impl Sample for f32 {}
impl Sample for f64 {}

fn as_bytes_mut<T: Sample>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: `Sample` types are plain numbers with no padding or invalid bit patterns, and u8
    // has alignment 1, so viewing their memory as bytes is sound.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// A GeoTIFF / COG opened for reading. `Send + Sync`: share it (e.g. in an `Arc`) between threads.
pub struct Cog {
    path: PathBuf,
    levels: Vec<Level>,
    geo: GeoInfo,
    tf: ifd::TiffFile,
}

impl Cog {
    /// Open a TIFF and parse its IFDs. Level 0 must be valid; overview IFDs that are not
    /// (or that do not match level 0's bands) are skipped, like GDAL does.
    pub fn open(path: &Path) -> Result<Cog> {
        let tf = ifd::TiffFile::open(path)?;
        let ifds = tf.read_chain(path)?;
        let first = &ifds[0];
        let mut levels = vec![level::build_level(&tf, path, first)?];
        for d in &ifds[1..] {
            let kind = tf
                .uint(path, d, level::tag::NEW_SUBFILE_TYPE)
                .ok()
                .flatten()
                .unwrap_or(0);
            if kind & level::SUBFILE_REDUCED == 0 || kind & level::SUBFILE_MASK != 0 {
                continue; // another page, or a mask: not an overview
            }
            if let Ok(l) = level::build_level(&tf, path, d) {
                if l.bands == levels[0].bands && l.bits_per_sample == levels[0].bits_per_sample {
                    levels.push(l);
                }
            }
        }
        let geo = geo::read_geo(&tf, path, first);
        Ok(Cog {
            path: path.to_path_buf(),
            levels,
            geo,
            tf,
        })
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
    /// Byte order of the file.
    pub fn byte_order(&self) -> ByteOrder {
        self.tf.order
    }
    /// Whether the file is a BigTIFF.
    pub fn is_bigtiff(&self) -> bool {
        self.tf.bigtiff
    }

    fn level(&self, level: usize) -> Result<&Level> {
        self.levels.get(level).ok_or_else(|| {
            Error::window(
                &self.path,
                format!(
                    "level {level} does not exist ({} levels)",
                    self.levels.len()
                ),
            )
        })
    }

    /// Still-compressed bytes of chunk `index` of `level`; `None` for a sparse chunk
    /// (offset and byte count 0).
    pub fn read_raw_chunk(&self, level: usize, index: usize) -> Result<Option<Vec<u8>>> {
        let l = self.level(level)?;
        let (Some(&off), Some(&n)) = (l.offsets.get(index), l.byte_counts.get(index)) else {
            return Err(Error::window(
                &self.path,
                format!("chunk {index} does not exist in level {level}"),
            ));
        };
        if n == 0 {
            return Ok(None); // sparse (GDAL treats a zero byte count as "not written")
        }
        self.tf.read_exact_at(&self.path, off, n).map(Some)
    }

    /// Decode one chunk to interleaved u8 pixels (chunk_width x chunk_height x bands,
    /// all planes for planar files). Sparse chunks decode to the nodata value (or 0).
    pub fn decode_chunk_u8(&self, level: usize, cx: u32, cy: u32) -> Result<Vec<u8>> {
        let l = self.level(level)?;
        if l.bits_per_sample != 8 {
            return Err(Error::unsupported(
                &self.path,
                format!("{}-bit samples, not 8-bit", l.bits_per_sample),
            ));
        }
        if cx >= l.chunks_across() || cy >= l.chunks_down() {
            return Err(Error::window(
                &self.path,
                format!("chunk ({cx}, {cy}) is outside level {level}"),
            ));
        }
        self.check_chunk_size(l)?;
        let mut buf = vec![0u8; l.chunk_bytes() as usize];
        self.decode_chunk_into(level, cx, cy, &mut buf)?;
        Ok(buf)
    }

    /// Any window of any level, any supported sample type, bands last.
    pub fn read_window(&self, level: usize, window: Window) -> Result<Raster> {
        let l = self.level(level)?;
        l.check_sample_type(&self.path)?;
        let n = self.window_samples(l, window)?;
        let data = match (l.sample_format, l.bits_per_sample) {
            (SampleFormat::Uint, 8) => RasterData::U8(self.read_typed(level, window, n)?),
            (SampleFormat::Int, 8) => RasterData::I8(self.read_typed(level, window, n)?),
            (SampleFormat::Uint, 16) => RasterData::U16(self.read_typed(level, window, n)?),
            (SampleFormat::Int, 16) => RasterData::I16(self.read_typed(level, window, n)?),
            (SampleFormat::Uint, 32) => RasterData::U32(self.read_typed(level, window, n)?),
            (SampleFormat::Int, 32) => RasterData::I32(self.read_typed(level, window, n)?),
            (SampleFormat::Float, 32) => RasterData::F32(self.read_typed(level, window, n)?),
            (SampleFormat::Float, 64) => RasterData::F64(self.read_typed(level, window, n)?),
            _ => unreachable!("checked by check_sample_type"),
        };
        Ok(Raster {
            width: window.width,
            height: window.height,
            bands: l.bands,
            data,
        })
    }

    /// Window of an 8-bit image as interleaved u8, bands last.
    pub fn read_window_u8(&self, level: usize, window: Window) -> Result<Vec<u8>> {
        let l = self.level(level)?;
        if l.bits_per_sample != 8 {
            return Err(Error::unsupported(
                &self.path,
                format!("{}-bit samples, not 8-bit", l.bits_per_sample),
            ));
        }
        let n = self.window_samples(l, window)?;
        self.read_typed(level, window, n)
    }

    /// Validate a window against a level and the size cap; returns its sample count.
    fn window_samples(&self, l: &Level, w: Window) -> Result<usize> {
        let inside = w.width > 0
            && w.height > 0
            && u64::from(w.col_off) + u64::from(w.width) <= u64::from(l.width)
            && u64::from(w.row_off) + u64::from(w.height) <= u64::from(l.height);
        if !inside {
            return Err(Error::window(
                &self.path,
                format!(
                    "window (col_off {}, row_off {}, {}x{}) is outside the {}x{} image",
                    w.col_off, w.row_off, w.width, w.height, l.width, l.height
                ),
            ));
        }
        // Refuse oversized chunks before the window buffer is allocated.
        self.check_chunk_size(l)?;
        let samples = u64::from(w.width) * u64::from(w.height) * u64::from(l.bands);
        let bytes = samples.saturating_mul(u64::from(l.bits_per_sample / 8).max(1));
        if bytes > MAX_WINDOW_BYTES {
            return Err(Error::window(
                &self.path,
                format!("window of {bytes} bytes exceeds the {MAX_WINDOW_BYTES}-byte read limit"),
            ));
        }
        Ok(samples as usize)
    }

    /// Whether chunks of `level` can be decoded at all: sample type, chunk size, codec and (JPEG)
    /// its tables. Every failure here is true of the whole image, so a caller about to decode
    /// many chunks (chipping a COG) asks once instead of failing every chunk the same way.
    pub fn check_level(&self, level: usize) -> Result<()> {
        let l = self.level(level)?;
        l.check_sample_type(&self.path)?;
        self.check_chunk_size(l)?;
        let geom = decode::ChunkGeom {
            width: l.chunk_width as usize,
            rows: l.chunk_height as usize,
            samples: if l.planar { 1 } else { l.bands as usize },
            bytes: l.bytes_per_sample(),
        };
        decode::check_codec(&self.path, l, geom)
    }

    fn check_chunk_size(&self, l: &Level) -> Result<()> {
        if l.chunk_bytes() > MAX_CHUNK_BYTES {
            return Err(Error::unsupported(
                &self.path,
                format!(
                    "{}x{} chunks of {} bytes exceed the {MAX_CHUNK_BYTES}-byte limit",
                    l.chunk_width,
                    l.chunk_height,
                    l.chunk_bytes()
                ),
            ));
        }
        Ok(())
    }

    fn read_typed<T: Sample>(&self, level: usize, w: Window, n: usize) -> Result<Vec<T>> {
        let mut out = vec![T::default(); n];
        self.read_window_bytes(level, w, as_bytes_mut(&mut out))?;
        Ok(out)
    }

    /// Decode the chunks a window touches into `out` (window-sized, bands interleaved). Chunk
    /// rows are decoded in parallel, each writing its own band of output rows.
    fn read_window_bytes(&self, level: usize, w: Window, out: &mut [u8]) -> Result<()> {
        let l = self.level(level)?;
        l.check_sample_type(&self.path)?;
        self.check_chunk_size(l)?;
        let px = l.bands as usize * l.bytes_per_sample();
        let out_row = w.width as usize * px;
        let (cw, ch) = (l.chunk_width, l.chunk_height);
        let (cx0, cx1) = (w.col_off / cw, (w.col_off + w.width - 1) / cw);
        let (cy0, cy1) = (w.row_off / ch, (w.row_off + w.height - 1) / ch);

        // Fast path: the window is exactly one whole chunk (a z17 chip of an ARD COG).
        if cx0 == cx1
            && cy0 == cy1
            && w.col_off == cx0 * cw
            && w.row_off == cy0 * ch
            && w.width == cw
            && w.height == ch
            && l.coded_rows(cy0) == ch
        {
            return self.decode_chunk_into(level, cx0, cy0, out);
        }

        // Split the output into one slice of rows per chunk row.
        let mut bands_of_rows = Vec::with_capacity((cy1 - cy0 + 1) as usize);
        let mut rest = out;
        for cy in cy0..=cy1 {
            let top = (cy * ch).max(w.row_off);
            // u64: the end of the last chunk may lie beyond u32 even when the image does not.
            let bottom =
                ((u64::from(cy) + 1) * u64::from(ch)).min(u64::from(w.row_off + w.height)) as u32;
            let (mine, tail) = rest.split_at_mut((bottom - top) as usize * out_row);
            bands_of_rows.push((cy, top, mine));
            rest = tail;
        }
        bands_of_rows
            .into_par_iter()
            .try_for_each(|(cy, top, rows)| {
                let mut chunk = vec![0u8; l.chunk_bytes() as usize];
                for cx in cx0..=cx1 {
                    self.decode_chunk_into(level, cx, cy, &mut chunk)?;
                    // Intersection of this chunk with the window, in image pixels.
                    let left = (cx * cw).max(w.col_off);
                    let right = ((u64::from(cx) + 1) * u64::from(cw))
                        .min(u64::from(w.col_off + w.width)) as u32;
                    let span = (right - left) as usize * px;
                    let src_x = (left - cx * cw) as usize * px;
                    let dst_x = (left - w.col_off) as usize * px;
                    let chunk_row = cw as usize * px;
                    for (i, dst) in rows.chunks_exact_mut(out_row).enumerate() {
                        let src_y = (top - cy * ch) as usize + i;
                        let s = src_y * chunk_row + src_x;
                        dst[dst_x..dst_x + span].copy_from_slice(&chunk[s..s + span]);
                    }
                }
                Ok(())
            })
    }

    /// Decode chunk (cx, cy) of level `l`, all planes, into `buf` (chunk-sized, interleaved).
    fn decode_chunk_into(&self, level_no: usize, cx: u32, cy: u32, buf: &mut [u8]) -> Result<()> {
        let l = &self.levels[level_no];
        let bps = l.bytes_per_sample();
        let index = l.chunk_index(cx, cy);
        let rows = l.coded_rows(cy) as usize;
        if !l.planar {
            let geom = decode::ChunkGeom {
                width: l.chunk_width as usize,
                rows,
                samples: l.bands as usize,
                bytes: bps,
            };
            return self.decode_plane(l, level_no, index, geom, buf);
        }
        // Planar: decode each band's plane, then interleave it into the pixel buffer.
        let geom = decode::ChunkGeom {
            width: l.chunk_width as usize,
            rows,
            samples: 1,
            bytes: bps,
        };
        let mut plane = vec![0u8; l.chunk_width as usize * l.chunk_height as usize * bps];
        let px = l.bands as usize * bps;
        for b in 0..l.bands as usize {
            self.decode_plane(
                l,
                level_no,
                b * l.chunks_per_plane() + index,
                geom,
                &mut plane,
            )?;
            for (dst, src) in buf.chunks_exact_mut(px).zip(plane.chunks_exact(bps)) {
                dst[b * bps..(b + 1) * bps].copy_from_slice(src);
            }
        }
        Ok(())
    }

    /// Decode one stored chunk (sparse → nodata fill) into `out`.
    fn decode_plane(
        &self,
        l: &Level,
        level_no: usize,
        index: usize,
        geom: decode::ChunkGeom,
        out: &mut [u8],
    ) -> Result<()> {
        let with_chunk = |e: Error| match e {
            Error::CorruptTiff { path, msg } => Error::CorruptTiff {
                path,
                msg: format!("{}: {msg}", l.chunk_label(level_no, index)),
            },
            e => e,
        };
        let Some(data) = self.read_raw_chunk(level_no, index).map_err(with_chunk)? else {
            self.fill_nodata(l, out);
            return Ok(());
        };
        let order = self.tf.order;
        let path = &self.path;
        // Last line of defence: a panic inside a codec becomes a CorruptTiff error.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decode::decode_into(path, l, order, &data, geom, out)
        }))
        .unwrap_or_else(|_| Err(Error::corrupt(path, "the decoder panicked")))
        .map_err(with_chunk)
    }

    /// Fill a sparse chunk with the nodata value in the level's sample type (0 when there is no
    /// nodata or it does not fit the type), like GDAL.
    fn fill_nodata(&self, l: &Level, out: &mut [u8]) {
        let nd = self.geo.nodata.unwrap_or(0.0);
        let fits = |lo: f64, hi: f64| nd.fract() == 0.0 && nd >= lo && nd <= hi;
        let bytes: Vec<u8> = match (l.sample_format, l.bits_per_sample) {
            (SampleFormat::Uint, 8) if fits(0.0, 255.0) => vec![nd as u8],
            (SampleFormat::Int, 8) if fits(-128.0, 127.0) => (nd as i8).to_ne_bytes().to_vec(),
            (SampleFormat::Uint, 16) if fits(0.0, 65535.0) => (nd as u16).to_ne_bytes().to_vec(),
            (SampleFormat::Int, 16) if fits(-32768.0, 32767.0) => {
                (nd as i16).to_ne_bytes().to_vec()
            }
            (SampleFormat::Uint, 32) if fits(0.0, u32::MAX as f64) => {
                (nd as u32).to_ne_bytes().to_vec()
            }
            (SampleFormat::Int, 32) if fits(i32::MIN as f64, i32::MAX as f64) => {
                (nd as i32).to_ne_bytes().to_vec()
            }
            (SampleFormat::Float, 32) => (nd as f32).to_ne_bytes().to_vec(),
            (SampleFormat::Float, 64) => nd.to_ne_bytes().to_vec(),
            _ => vec![0],
        };
        if bytes.iter().all(|&b| b == 0) {
            out.fill(0);
        } else {
            for s in out.chunks_exact_mut(bytes.len()) {
                s.copy_from_slice(&bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared real-data corpus (`IMAGESIM_REALDATA`, default `<workspace>/../shared/realdata`).
    fn realdata() -> Option<PathBuf> {
        let p = std::env::var_os("IMAGESIM_REALDATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/realdata")
            });
        if p.is_dir() {
            Some(p)
        } else {
            eprintln!(
                "skipping: real-data corpus not found at {} (set IMAGESIM_REALDATA)",
                p.display()
            );
            None
        }
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn cog_is_send_and_sync() {
        assert_send_sync::<Cog>();
    }

    #[test]
    fn jpeg_ycbcr_cog_levels_geo_and_tiles() {
        let Some(root) = realdata() else { return };
        let cog = Cog::open(&root.join("tiff/rasterio__cogeo.tif")).unwrap();
        let sizes: Vec<_> = cog.levels().iter().map(|l| (l.width, l.height)).collect();
        // Six overviews; the internal mask IFDs are not levels.
        assert_eq!(
            sizes,
            [
                (1024, 1024),
                (512, 512),
                (256, 256),
                (128, 128),
                (64, 64),
                (32, 32),
                (16, 16)
            ]
        );
        let l0 = &cog.levels()[0];
        assert_eq!(
            (l0.compression, l0.photometric, l0.chunk_width),
            (compression::JPEG, photometric::YCBCR, 512)
        );
        assert_eq!(cog.geo().epsg, Some(3857));
        assert!(cog.geo().geotransform.is_some());

        // One whole tile through both entry points: the fast path and the chunk decoder agree.
        let tile = cog.decode_chunk_u8(0, 1, 1).unwrap();
        assert_eq!(tile.len(), 512 * 512 * 3);
        let win = Window {
            col_off: 512,
            row_off: 512,
            width: 512,
            height: 512,
        };
        assert_eq!(cog.read_window_u8(0, win).unwrap(), tile);
        // A window across four tiles matches the tiles it is cut from.
        let w = Window {
            col_off: 500,
            row_off: 510,
            width: 30,
            height: 7,
        };
        let px = cog.read_window_u8(0, w).unwrap();
        assert_eq!(&px[(2 * 30 + 12) * 3..(2 * 30 + 13) * 3], &tile[0..3]); // pixel (512, 512)

        // Raw tile + tables make a standalone JPEG.
        let raw = cog.read_raw_chunk(0, 0).unwrap().unwrap();
        let s = crate::jpeg::tiff_tile_to_jpeg(l0.jpeg_tables.as_deref(), &raw, false).unwrap();
        assert_eq!(&s[..2], &[0xFF, 0xD8]);
        assert_eq!(&s[s.len() - 2..], &[0xFF, 0xD9]);
    }

    #[test]
    fn concurrent_reads_of_one_cog() {
        let Some(root) = realdata() else { return };
        let cog = Cog::open(&root.join("tiff/titiler__TCI.tif")).unwrap();
        let l = &cog.levels()[0];
        let (across, down) = (l.chunks_across(), l.chunks_down());
        let serial: Vec<_> = (0..across * down)
            .map(|i| cog.decode_chunk_u8(0, i % across, i / across).unwrap())
            .collect();
        let parallel: Vec<_> = (0..across * down)
            .into_par_iter()
            .map(|i| cog.decode_chunk_u8(0, i % across, i / across).unwrap())
            .collect();
        assert!(serial == parallel);
    }

    #[test]
    fn lossless_formats_agree() {
        let Some(root) = realdata() else { return };
        // The same Landsat scene: stripped raw, tiled LZW, planar DEFLATE strips.
        let w = Window {
            col_off: 250,
            row_off: 300,
            width: 300,
            height: 200,
        };
        let read = |name: &str| {
            Cog::open(&root.join("tiff").join(name))
                .unwrap()
                .read_window_u8(0, w)
                .unwrap()
        };
        let raw = read("rasterio__RGB.byte.tif");
        assert_eq!(raw, read("rasterio__rgb_lzw.tif"));
        assert_eq!(raw, read("rasterio__rgb_deflate.tif"));
        // Little- and big-endian BigTIFF hold the same pixels.
        let a = Cog::open(&root.join("tiff/imagetiff__BigTIFF.tif")).unwrap();
        let b = Cog::open(&root.join("tiff/imagetiff__BigTIFFMotorola.tif")).unwrap();
        assert!(a.is_bigtiff() && b.byte_order() == ByteOrder::Big);
        let full = Window {
            col_off: 0,
            row_off: 0,
            width: 64,
            height: 64,
        };
        assert_eq!(
            a.read_window_u8(0, full).unwrap(),
            b.read_window_u8(0, full).unwrap()
        );
    }

    #[test]
    fn typed_reads_and_errors() {
        let Some(root) = realdata() else { return };
        let cog = Cog::open(&root.join("tiff/imagetiff__int16_zstd.tif")).unwrap();
        let r = cog
            .read_window(
                0,
                Window {
                    col_off: 0,
                    row_off: 0,
                    width: 64,
                    height: 64,
                },
            )
            .unwrap();
        assert!(matches!(r.data, RasterData::I16(ref v) if v.len() == 64 * 64));
        assert!(matches!(
            cog.read_window_u8(
                0,
                Window {
                    col_off: 0,
                    row_off: 0,
                    width: 1,
                    height: 1
                }
            ),
            Err(Error::UnsupportedTiff { .. })
        ));
        assert!(matches!(
            cog.read_window(
                0,
                Window {
                    col_off: 60,
                    row_off: 0,
                    width: 8,
                    height: 1
                }
            ),
            Err(Error::Window { .. })
        ));
        assert!(matches!(
            cog.read_window(
                3,
                Window {
                    col_off: 0,
                    row_off: 0,
                    width: 1,
                    height: 1
                }
            ),
            Err(Error::Window { .. })
        ));
        // Sparse overview tiles read as 0.
        let sparse = Cog::open(&root.join("tiff/riocogeo__cog_no_offest.tif")).unwrap();
        assert_eq!(sparse.read_raw_chunk(1, 0).unwrap(), None);
        assert!(sparse
            .decode_chunk_u8(1, 0, 0)
            .unwrap()
            .iter()
            .all(|&v| v == 0));
    }

    #[test]
    fn corrupt_files_give_typed_errors() {
        let Some(root) = realdata() else { return };
        for entry in std::fs::read_dir(root.join("tiff-corrupt")).unwrap() {
            let path = entry.unwrap().path();
            let result = Cog::open(&path).and_then(|cog| {
                for (i, l) in cog.levels().iter().enumerate() {
                    cog.read_window(
                        i,
                        Window {
                            col_off: 0,
                            row_off: 0,
                            width: l.width,
                            height: l.height,
                        },
                    )?;
                }
                Ok(())
            });
            if let Err(e) = result {
                assert!(
                    !matches!(e, Error::Grid(_) | Error::InvalidArgument(_)),
                    "{e}"
                );
                assert!(
                    e.to_string()
                        .contains(path.file_name().unwrap().to_str().unwrap()),
                    "{e}"
                );
            }
        }
    }
}
