//! Chunk (tile or strip) decoding: decompression, byte order, predictor.
//!
//! Every codec writes into a caller-sized buffer, so a hostile stream can never make us allocate
//! more than the chunk's declared size (which the caller has already bounded). Third-party
//! decoders run under `catch_unwind` (see `Cog::decode_chunk_bytes`).
use std::io::Read;
use std::path::Path;

use super::ifd::ByteOrder;
use super::{compression, photometric, Level};
use crate::error::{Error, Result};

/// Geometry of one chunk being decoded.
#[derive(Debug, Clone, Copy)]
pub struct ChunkGeom {
    /// Pixels per row (tile width, or image width for strips).
    pub width: usize,
    /// Rows actually coded in this chunk (the last strip may be shorter than RowsPerStrip).
    pub rows: usize,
    /// Samples per pixel in this chunk (1 for a plane of a planar image).
    pub samples: usize,
    /// Bytes per sample.
    pub bytes: usize,
}

impl ChunkGeom {
    pub fn row_bytes(&self) -> usize {
        self.width * self.samples * self.bytes
    }
    pub fn coded_bytes(&self) -> usize {
        self.row_bytes() * self.rows
    }
}

/// Decode one chunk's compressed bytes into `out` (native-endian samples, `geom.rows` rows of
/// `geom.row_bytes()`; `out` may be longer, the rest is left alone).
pub fn decode_into(
    path: &Path,
    level: &Level,
    order: ByteOrder,
    data: &[u8],
    geom: ChunkGeom,
    out: &mut [u8],
) -> Result<()> {
    let need = geom.coded_bytes();
    let out = &mut out[..need];
    match level.compression {
        compression::NONE => {
            if data.len() < need {
                return Err(Error::corrupt(
                    path,
                    format!("uncompressed chunk has {} bytes, needs {need}", data.len()),
                ));
            }
            out.copy_from_slice(&data[..need]);
        }
        compression::LZW => lzw(path, data, out)?,
        compression::DEFLATE | compression::ADOBE_DEFLATE => {
            let mut z = flate2::read::ZlibDecoder::new(data);
            fill_from_reader(path, &mut z, out, "DEFLATE")?;
        }
        compression::PACKBITS => packbits(path, data, out)?,
        compression::ZSTD => {
            let n = zstd::bulk::Decompressor::new()
                .and_then(|mut d| d.decompress_to_buffer(data, &mut *out))
                .map_err(|e| Error::corrupt(path, format!("ZSTD: {e}")))?;
            if n < need {
                return Err(Error::corrupt(
                    path,
                    format!("ZSTD chunk decoded to {n} bytes, expected {need}"),
                ));
            }
        }
        compression::WEBP => webp(path, data, geom, out)?,
        compression::JPEG => return jpeg(path, level, data, geom, out),
        _ => return check_codec(path, level, geom),
    }
    // Codec output is in file byte order; the floating-point predictor handles order itself.
    if level.predictor == 3 {
        undo_float_predictor(path, geom, out)?;
    } else {
        to_native(order, geom.bytes, out);
        if level.predictor == 2 {
            undo_horizontal_predictor(path, geom, out)?;
        }
    }
    Ok(())
}

/// Read until `out` is full; a stream that ends early is corrupt. Extra data is ignored
/// (libtiff ignores it too, e.g. `deflate-last-strip-extra-data.tiff`).
fn fill_from_reader(path: &Path, r: &mut impl Read, out: &mut [u8], codec: &str) -> Result<()> {
    let mut filled = 0;
    while filled < out.len() {
        match r.read(&mut out[filled..]) {
            Ok(0) => {
                return Err(Error::corrupt(
                    path,
                    format!("{codec} chunk ends after {filled} of {} bytes", out.len()),
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::corrupt(path, format!("{codec}: {e}"))),
        }
    }
    Ok(())
}

fn lzw(path: &Path, data: &[u8], out: &mut [u8]) -> Result<()> {
    // Old-style (pre-TIFF 6) LZW is LSB-first without the early code-size switch; libtiff spots
    // it by the first bytes.
    let mut dec = if data.len() >= 2 && data[0] == 0 && data[1] & 1 == 1 {
        weezl::decode::Decoder::new(weezl::BitOrder::Lsb, 8)
    } else {
        weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
    };
    let (mut inp, mut filled) = (data, 0usize);
    while filled < out.len() {
        let r = dec.decode_bytes(inp, &mut out[filled..]);
        inp = &inp[r.consumed_in..];
        filled += r.consumed_out;
        match r.status {
            Ok(weezl::LzwStatus::Ok) => {}
            Ok(weezl::LzwStatus::Done) | Ok(weezl::LzwStatus::NoProgress) => break,
            Err(e) => return Err(Error::corrupt(path, format!("LZW: {e}"))),
        }
    }
    if filled < out.len() {
        return Err(Error::corrupt(
            path,
            format!("LZW chunk decoded to {filled} of {} bytes", out.len()),
        ));
    }
    Ok(())
}

fn packbits(path: &Path, data: &[u8], out: &mut [u8]) -> Result<()> {
    let (mut i, mut o) = (0usize, 0usize);
    while o < out.len() && i < data.len() {
        let n = data[i] as i8;
        i += 1;
        if n >= 0 {
            let len = n as usize + 1;
            let src = data
                .get(i..i + len)
                .ok_or_else(|| Error::corrupt(path, "PackBits literal runs past the data"))?;
            let len = len.min(out.len() - o);
            out[o..o + len].copy_from_slice(&src[..len]);
            i += n as usize + 1;
            o += len;
        } else if n != -128 {
            let len = ((1 - n as isize) as usize).min(out.len() - o);
            let v = *data
                .get(i)
                .ok_or_else(|| Error::corrupt(path, "PackBits run without a value"))?;
            out[o..o + len].fill(v);
            i += 1;
            o += len;
        }
    }
    if o < out.len() {
        return Err(Error::corrupt(
            path,
            format!("PackBits chunk decoded to {o} of {} bytes", out.len()),
        ));
    }
    Ok(())
}

fn webp(path: &Path, data: &[u8], geom: ChunkGeom, out: &mut [u8]) -> Result<()> {
    let err = |e: image_webp::DecodingError| Error::corrupt(path, format!("WebP: {e}"));
    let mut d = image_webp::WebPDecoder::new(std::io::Cursor::new(data)).map_err(err)?;
    let (w, h) = d.dimensions();
    if w as usize != geom.width || h as usize != geom.rows || geom.bytes != 1 {
        return Err(Error::corrupt(
            path,
            format!(
                "WebP chunk is {w}x{h}, expected {}x{} 8-bit",
                geom.width, geom.rows
            ),
        ));
    }
    let px = geom.width * geom.rows;
    match (geom.samples, d.has_alpha()) {
        (3, false) | (4, true) => d.read_image(out).map_err(err)?,
        (4, false) => {
            // Opaque WebP in an RGBA TIFF: decode RGB, then spread it out with alpha 255.
            d.read_image(&mut out[..px * 3]).map_err(err)?;
            for i in (0..px).rev() {
                out[i * 4 + 3] = 255;
                out[i * 4 + 2] = out[i * 3 + 2];
                out[i * 4 + 1] = out[i * 3 + 1];
                out[i * 4] = out[i * 3];
            }
        }
        (s, a) => {
            return Err(Error::unsupported(
                path,
                format!("WebP chunk with alpha={a} in a {s}-sample image"),
            ));
        }
    }
    Ok(())
}

/// Decode a JPEG stream with libjpeg-turbo (see [`crate::jpeg`]) into `out`, refusing streams
/// larger than the chunk. Returns the JPEG's (width, height); a stream that does not decode is
/// described in [`crate::jpeg::Problem`]'s words (see [`Level::jpeg_tile_error`]).
pub fn turbo_decode(
    path: &Path,
    level: &Level,
    stream: &[u8],
    format: turbojpeg::PixelFormat,
    max_w: usize,
    max_h: usize,
    out: &mut [u8],
) -> Result<(usize, usize)> {
    crate::jpeg::decode_into(stream, format, max_w, max_h, out)
        .map_err(|p| level.jpeg_tile_error(path, p))
}

/// The pixel format a JPEG chunk of `level` decodes to, or why we do not decode it (a property of
/// the whole image).
pub(super) fn jpeg_format(
    path: &Path,
    level: &Level,
    geom: ChunkGeom,
) -> Result<turbojpeg::PixelFormat> {
    if geom.bytes != 1 {
        return Err(Error::unsupported(
            path,
            "JPEG with more than 8 bits per sample",
        ));
    }
    match geom.samples {
        1 => Ok(turbojpeg::PixelFormat::GRAY),
        // YCbCr is converted to RGB by libjpeg; RGB JPEGs (Adobe marker) come out as-is.
        3 if matches!(level.photometric, photometric::YCBCR | photometric::RGB) => {
            Ok(turbojpeg::PixelFormat::RGB)
        }
        s => Err(Error::unsupported(
            path,
            format!(
                "JPEG with {s} interleaved samples (photometric {})",
                level.photometric
            ),
        )),
    }
}

/// Whether chunks of `level` use a codec we decode (checked once per image by callers that want a
/// whole-image answer before decoding; [`decode_into`] finds the same per chunk).
pub(super) fn check_codec(path: &Path, level: &Level, geom: ChunkGeom) -> Result<()> {
    match level.compression {
        compression::NONE
        | compression::LZW
        | compression::DEFLATE
        | compression::ADOBE_DEFLATE
        | compression::PACKBITS
        | compression::ZSTD
        | compression::WEBP => Ok(()),
        compression::JPEG => {
            jpeg_format(path, level, geom)?;
            level.check_jpeg_tables(path)
        }
        compression::OJPEG => Err(Error::unsupported(
            path,
            "old-style JPEG (compression 6) is not supported",
        )),
        c => Err(Error::unsupported(
            path,
            format!("compression {c} is not supported"),
        )),
    }
}

fn jpeg(path: &Path, level: &Level, data: &[u8], geom: ChunkGeom, out: &mut [u8]) -> Result<()> {
    let format = jpeg_format(path, level, geom)?;
    level.check_jpeg_tables(path)?;
    let stream = crate::jpeg::tiff_tile_to_jpeg(level.jpeg_tables.as_deref(), data, false)
        .map_err(|p| Error::corrupt(path, p.to_string()))?;
    let (w, h) = turbo_decode(
        path,
        level,
        &stream,
        format,
        geom.width,
        geom.rows.max(1),
        out,
    )?;
    if w != geom.width {
        // A narrower JPEG would need re-pitching; real writers never produce one.
        return Err(Error::corrupt(
            path,
            format!(
                "corrupt JPEG data: the tile decodes {w} px wide, expected {}",
                geom.width
            ),
        ));
    }
    // A short JPEG strip leaves the rest of the chunk zero, as GDAL does.
    out[w * h * geom.samples..geom.coded_bytes()].fill(0);
    Ok(())
}

/// Swap each sample of a buffer from the file's byte order to the machine's.
fn to_native(order: ByteOrder, bytes: usize, buf: &mut [u8]) {
    let file_is_native = (order == ByteOrder::Little) == cfg!(target_endian = "little");
    if bytes > 1 && !file_is_native {
        for s in buf.chunks_exact_mut(bytes) {
            s.reverse();
        }
    }
}

/// Predictor 2: each sample is stored as the difference from the same sample of the pixel to its
/// left. Works on native-endian integers of the sample size (wrapping, like libtiff).
fn undo_horizontal_predictor(path: &Path, geom: ChunkGeom, buf: &mut [u8]) -> Result<()> {
    let s = geom.samples;
    for row in buf.chunks_exact_mut(geom.row_bytes()) {
        match geom.bytes {
            1 => {
                for i in s..row.len() {
                    row[i] = row[i].wrapping_add(row[i - s]);
                }
            }
            2 => accumulate::<2>(row, s, |a, b| {
                (u16::from_ne_bytes(a).wrapping_add(u16::from_ne_bytes(b))).to_ne_bytes()
            }),
            4 => accumulate::<4>(row, s, |a, b| {
                (u32::from_ne_bytes(a).wrapping_add(u32::from_ne_bytes(b))).to_ne_bytes()
            }),
            8 => accumulate::<8>(row, s, |a, b| {
                (u64::from_ne_bytes(a).wrapping_add(u64::from_ne_bytes(b))).to_ne_bytes()
            }),
            n => {
                return Err(Error::unsupported(
                    path,
                    format!("predictor 2 with {n}-byte samples"),
                ))
            }
        }
    }
    Ok(())
}

fn accumulate<const N: usize>(row: &mut [u8], s: usize, add: impl Fn([u8; N], [u8; N]) -> [u8; N]) {
    let n = row.len() / N;
    for i in s..n {
        let prev: [u8; N] = row[(i - s) * N..(i - s + 1) * N]
            .try_into()
            .expect("N bytes");
        let cur: [u8; N] = row[i * N..(i + 1) * N].try_into().expect("N bytes");
        row[i * N..(i + 1) * N].copy_from_slice(&add(cur, prev));
    }
}

/// Predictor 3 (floating point): each row holds the samples' bytes as byte planes, most
/// significant plane first, then byte-wise horizontal differencing (libtiff `fpAcc`).
fn undo_float_predictor(path: &Path, geom: ChunkGeom, buf: &mut [u8]) -> Result<()> {
    let (s, bps) = (geom.samples, geom.bytes);
    if !matches!(bps, 2 | 4 | 8) {
        return Err(Error::unsupported(
            path,
            format!("predictor 3 with {bps}-byte samples"),
        ));
    }
    let mut tmp = vec![0u8; geom.row_bytes()];
    for row in buf.chunks_exact_mut(geom.row_bytes()) {
        for i in s..row.len() {
            row[i] = row[i].wrapping_add(row[i - s]);
        }
        tmp.copy_from_slice(row);
        let wc = row.len() / bps;
        for c in 0..wc {
            for b in 0..bps {
                // Plane b holds byte b counted from the most significant end.
                let v = tmp[b * wc + c];
                let pos = if cfg!(target_endian = "big") {
                    b
                } else {
                    bps - 1 - b
                };
                row[c * bps + pos] = v;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_roundtrip_example() {
        // Apple's example stream.
        let enc = [
            0xFE, 0xAA, 0x02, 0x80, 0x00, 0x2A, 0xFD, 0xAA, 0x03, 0x80, 0x00, 0x2A, 0x22, 0xF7,
            0xAA,
        ];
        let mut out = vec![0u8; 24];
        packbits(Path::new("x"), &enc, &mut out).unwrap();
        assert_eq!(&out[..3], &[0xAA; 3]);
        assert_eq!(&out[3..6], &[0x80, 0x00, 0x2A]);
        assert_eq!(&out[14..], &[0xAA; 10]);
        // Truncated stream is an error, not a panic.
        assert!(packbits(Path::new("x"), &enc[..5], &mut out).is_err());
    }

    #[test]
    fn jpeg_stream_merge() {
        let tables = [0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x02, 0xFF, 0xD9];
        let tile = [0xFF, 0xD8, 0xFF, 0xDA, 0x01, 0xFF, 0xD9];
        let s = crate::jpeg::tiff_tile_to_jpeg(Some(&tables), &tile, false).unwrap();
        assert_eq!(
            s,
            vec![0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x02, 0xFF, 0xDA, 0x01, 0xFF, 0xD9]
        );
        assert_eq!(
            crate::jpeg::tiff_tile_to_jpeg(None, &tile, false).unwrap(),
            tile.to_vec()
        );
    }
}
