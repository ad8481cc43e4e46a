//! A level (one image IFD) built from its tags, and the per-level geometry a read relies on.
use std::path::Path;

use super::{compression, ifd, photometric, Level, SampleFormat};
use crate::error::{Error, Result};

// Baseline / extension tag numbers used to build a level.
pub(super) mod tag {
    pub const NEW_SUBFILE_TYPE: u16 = 254;
    pub const IMAGE_WIDTH: u16 = 256;
    pub const IMAGE_LENGTH: u16 = 257;
    pub const BITS_PER_SAMPLE: u16 = 258;
    pub const COMPRESSION: u16 = 259;
    pub const PHOTOMETRIC: u16 = 262;
    pub const STRIP_OFFSETS: u16 = 273;
    pub const SAMPLES_PER_PIXEL: u16 = 277;
    pub const ROWS_PER_STRIP: u16 = 278;
    pub const STRIP_BYTE_COUNTS: u16 = 279;
    pub const PLANAR_CONFIG: u16 = 284;
    pub const PREDICTOR: u16 = 317;
    pub const TILE_WIDTH: u16 = 322;
    pub const TILE_LENGTH: u16 = 323;
    pub const TILE_OFFSETS: u16 = 324;
    pub const TILE_BYTE_COUNTS: u16 = 325;
    pub const JPEG_TABLES: u16 = 347;
    pub const SAMPLE_FORMAT: u16 = 339;
}

/// NewSubfileType bits.
pub(super) const SUBFILE_REDUCED: u64 = 1;
pub(super) const SUBFILE_MASK: u64 = 4;

impl Level {
    /// Bytes per sample (bits_per_sample / 8).
    pub fn bytes_per_sample(&self) -> usize {
        usize::from(self.bits_per_sample / 8)
    }
    /// Chunks in one plane (all chunks for chunky images).
    pub fn chunks_per_plane(&self) -> usize {
        self.chunks_across() as usize * self.chunks_down() as usize
    }
    /// Decoded size of one whole chunk, all bands interleaved.
    pub fn chunk_bytes(&self) -> u64 {
        u64::from(self.chunk_width)
            * u64::from(self.chunk_height)
            * u64::from(self.bands)
            * u64::from(self.bits_per_sample / 8)
    }
    /// Rows of image data in chunk row `cy` (the last strip of a stripped image is shorter).
    pub(super) fn coded_rows(&self, cy: u32) -> u32 {
        if self.tiled {
            self.chunk_height
        } else {
            self.chunk_height.min(self.height - cy * self.chunk_height)
        }
    }
    /// Where chunk `index` of this level (level number `level_no`) is, for messages:
    /// `level 0 tile 37 (col 5, row 1)`, `level 2 strip 12`, with the band of planar images.
    pub fn chunk_label(&self, level_no: usize, index: usize) -> String {
        let per_plane = self.chunks_per_plane().max(1);
        let (band, i) = (index / per_plane, index % per_plane);
        let band = if self.planar {
            format!(" band {}", band + 1)
        } else {
            String::new()
        };
        if self.tiled {
            let across = self.chunks_across().max(1) as usize;
            format!(
                "level {level_no}{band} tile {index} (col {}, row {})",
                i % across,
                i / across
            )
        } else {
            format!("level {level_no}{band} strip {index}")
        }
    }

    /// A JPEGTables value that cannot be joined to the tiles is a problem of the whole image.
    pub fn check_jpeg_tables(&self, path: &Path) -> Result<()> {
        match self
            .jpeg_tables
            .as_deref()
            .and_then(crate::jpeg::tables_problem)
        {
            Some(msg) => Err(Error::corrupt_cog(path, msg)),
            None => Ok(()),
        }
    }

    /// The error of a JPEG tile of this level that did not decode: the whole image's when its
    /// tiles need tables it does not have (no usable JPEGTables), else that tile's, in
    /// [`crate::jpeg::Problem`]'s words. Callers add where the tile is.
    pub fn jpeg_tile_error(&self, path: &Path, problem: crate::jpeg::Problem) -> Error {
        let no_tables = !matches!(&self.jpeg_tables, Some(t) if t.len() > 4);
        if let crate::jpeg::Problem::Corrupt(msg) = &problem {
            if no_tables && msg.contains("table 0x") && msg.contains("was not defined") {
                return Error::corrupt_cog(
                    path,
                    format!(
                        "JPEG tiles need tables the file does not have (no JPEGTables, tag 347): {problem}"
                    ),
                );
            }
        }
        Error::corrupt(path, problem.to_string())
    }

    /// Whether samples of this level are a type we decode (8/16/32-bit ints, 32/64-bit floats).
    pub(super) fn check_sample_type(&self, path: &Path) -> Result<()> {
        match (self.sample_format, self.bits_per_sample) {
            (SampleFormat::Uint | SampleFormat::Int, 8 | 16 | 32)
            | (SampleFormat::Float, 32 | 64) => Ok(()),
            (f, b) => Err(Error::unsupported(
                path,
                format!("{b}-bit {f:?} samples are not supported"),
            )),
        }
    }
}

/// Build a level from an IFD, validating everything a read will rely on.
pub(super) fn build_level(tf: &ifd::TiffFile, path: &Path, d: &ifd::Ifd) -> Result<Level> {
    let get = |t: u16| tf.uint(path, d, t);
    let need = |t: u16, name: &str| -> Result<u64> {
        get(t)?.ok_or_else(|| Error::corrupt(path, format!("missing {name} tag")))
    };
    let to_u32 = |v: u64, name: &str| -> Result<u32> {
        u32::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| Error::corrupt(path, format!("{name} is {v}")))
    };
    let width = to_u32(need(tag::IMAGE_WIDTH, "ImageWidth")?, "ImageWidth")?;
    let height = to_u32(need(tag::IMAGE_LENGTH, "ImageLength")?, "ImageLength")?;
    let bands = get(tag::SAMPLES_PER_PIXEL)?.unwrap_or(1);
    let bands = u16::try_from(bands)
        .ok()
        .filter(|&b| b > 0)
        .ok_or_else(|| Error::corrupt(path, format!("SamplesPerPixel is {bands}")))?;
    // Per-sample tags must agree across samples: we read one sample type per image.
    let one_value = |t: u16, default: u64, name: &str| -> Result<u64> {
        let v = tf.uints(path, d, t)?.unwrap_or_else(|| vec![default]);
        let first = *v.first().unwrap_or(&default);
        if v.iter().any(|&x| x != first) {
            return Err(Error::unsupported(
                path,
                format!("{name} differs between samples: {v:?}"),
            ));
        }
        Ok(first)
    };
    let bits = one_value(tag::BITS_PER_SAMPLE, 1, "BitsPerSample")?;
    let bits_per_sample = u16::try_from(bits)
        .map_err(|_| Error::corrupt(path, format!("BitsPerSample is {bits}")))?;
    let sample_format = match one_value(tag::SAMPLE_FORMAT, 1, "SampleFormat")? {
        1 | 4 => SampleFormat::Uint, // 4 = "undefined", read as unsigned like libtiff
        2 => SampleFormat::Int,
        3 => SampleFormat::Float,
        f => return Err(Error::unsupported(path, format!("SampleFormat {f}"))),
    };
    let small = |t: u16, default: u16| -> Result<u16> {
        Ok(get(t)?
            .map(|v| u16::try_from(v).unwrap_or(u16::MAX))
            .unwrap_or(default))
    };
    let compression = small(tag::COMPRESSION, compression::NONE)?;
    let photometric = small(tag::PHOTOMETRIC, photometric::MIN_IS_BLACK)?;
    let planar = small(tag::PLANAR_CONFIG, 1)? == 2 && bands > 1;
    let predictor = small(tag::PREDICTOR, 1)?;

    let tiled = d.entries.contains_key(&tag::TILE_WIDTH);
    let (chunk_width, chunk_height, offsets_tag, counts_tag) = if tiled {
        (
            to_u32(need(tag::TILE_WIDTH, "TileWidth")?, "TileWidth")?,
            to_u32(need(tag::TILE_LENGTH, "TileLength")?, "TileLength")?,
            tag::TILE_OFFSETS,
            tag::TILE_BYTE_COUNTS,
        )
    } else {
        let rps = get(tag::ROWS_PER_STRIP)?.unwrap_or(u64::from(height));
        let rps = to_u32(rps.min(u64::from(height)), "RowsPerStrip")?;
        (width, rps, tag::STRIP_OFFSETS, tag::STRIP_BYTE_COUNTS)
    };
    let offsets = tf
        .uints(path, d, offsets_tag)?
        .ok_or_else(|| Error::corrupt(path, "missing chunk offsets"))?;
    let byte_counts = tf
        .uints(path, d, counts_tag)?
        .ok_or_else(|| Error::corrupt(path, "missing chunk byte counts"))?;
    let jpeg_tables = if compression == compression::JPEG {
        tf.bytes(path, d, tag::JPEG_TABLES)?
    } else {
        None
    };

    let level = Level {
        width,
        height,
        bands,
        bits_per_sample,
        sample_format,
        compression,
        photometric,
        planar,
        predictor,
        tiled,
        chunk_width,
        chunk_height,
        offsets,
        byte_counts,
        jpeg_tables,
    };
    let planes = if planar { u64::from(bands) } else { 1 };
    let expected = u64::from(level.chunks_across())
        .checked_mul(u64::from(level.chunks_down()))
        .and_then(|n| n.checked_mul(planes))
        .unwrap_or(u64::MAX);
    if (level.offsets.len() as u64) < expected || (level.byte_counts.len() as u64) < expected {
        return Err(Error::corrupt(
            path,
            format!(
                "{} chunk offsets / {} byte counts for {expected} chunks",
                level.offsets.len(),
                level.byte_counts.len()
            ),
        ));
    }
    if bits_per_sample % 8 != 0 && bits_per_sample != 1 {
        return Err(Error::unsupported(
            path,
            format!("{bits_per_sample} bits per sample"),
        ));
    }
    Ok(level)
}
