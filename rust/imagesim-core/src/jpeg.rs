//! JPEG through libjpeg-turbo (the `turbojpeg` crate): decode to RGB or to YUV planes, encode,
//! and turning a JPEG-in-TIFF tile into a standalone `.jpg`.
//!
//! Codec handles are expensive to create, so each thread keeps one compressor and one
//! decompressor (`thread_local!`).
use std::cell::RefCell;

use turbojpeg::{Compressor, Decompressor, Image, YuvImage};
pub use turbojpeg::{PixelFormat, Subsamp};

use crate::error::{Error, Result};
use crate::pixels::min_value;

thread_local! {
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
    static COMPRESSOR: RefCell<Option<Compressor>> = const { RefCell::new(None) };
}

fn with_decompressor<T>(
    f: impl FnOnce(&mut Decompressor) -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Decompressor::new().map_err(|e| e.to_string())?);
        }
        let result = f(slot.as_mut().expect("initialised above"));
        if result.is_err() {
            // A handle that failed mid-stream can carry its state into the next call
            // (a corrupt chip followed by a good one): start the next call fresh.
            *slot = None;
        }
        result
    })
}

fn with_compressor<T>(
    f: impl FnOnce(&mut Compressor) -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Compressor::new().map_err(|e| e.to_string())?);
        }
        f(slot.as_mut().expect("initialised above"))
    })
}

/// Dimensions and chroma subsampling of a JPEG stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub width: usize,
    pub height: usize,
    pub subsamp: Subsamp,
    pub components: usize,
}

/// Largest image we agree to decode (guards against corrupt headers asking for gigabytes).
pub const MAX_DECODE_PIXELS: usize = 1 << 28;

pub fn read_header(data: &[u8]) -> std::result::Result<Header, String> {
    with_decompressor(|d| {
        let h = d.read_header(data).map_err(|e| e.to_string())?;
        if h.width.saturating_mul(h.height) > MAX_DECODE_PIXELS {
            return Err(format!(
                "JPEG claims {}x{} px, more than we decode",
                h.width, h.height
            ));
        }
        let components = match h.colorspace {
            turbojpeg::Colorspace::Gray => 1,
            turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK => 4,
            _ => 3,
        };
        Ok(Header {
            width: h.width,
            height: h.height,
            subsamp: h.subsamp,
            components,
        })
    })
}

/// Decode to interleaved RGB (3 bytes per pixel) into `out`, which is resized to fit.
pub fn decode_rgb_into(data: &[u8], out: &mut Vec<u8>) -> std::result::Result<Header, String> {
    let header = read_header(data)?;
    out.resize(header.width * header.height * 3, 0);
    with_decompressor(|d| {
        let image = Image {
            pixels: out.as_mut_slice(),
            width: header.width,
            pitch: header.width * 3,
            height: header.height,
            format: PixelFormat::RGB,
        };
        d.decompress(data, image).map_err(|e| e.to_string())
    })?;
    Ok(header)
}

/// Decode into a caller's buffer in `format` (tightly packed rows), refusing streams larger than
/// `max_w` x `max_h`. Returns the decoded (width, height).
pub fn decode_into(
    data: &[u8],
    format: PixelFormat,
    max_w: usize,
    max_h: usize,
    out: &mut [u8],
) -> std::result::Result<(usize, usize), String> {
    let header = read_header(data)?;
    let (w, h) = (header.width, header.height);
    if w == 0 || h == 0 || w > max_w || h > max_h {
        return Err(format!(
            "JPEG is {w}x{h}, larger than its {max_w}x{max_h} chunk"
        ));
    }
    let pitch = w * format.size();
    if out.len() < pitch * h {
        return Err(format!(
            "output buffer of {} bytes is too small for {w}x{h}",
            out.len()
        ));
    }
    with_decompressor(|d| {
        let image = Image {
            pixels: &mut out[..pitch * h],
            width: w,
            pitch,
            height: h,
            format,
        };
        d.decompress(data, image).map_err(|e| e.to_string())
    })?;
    Ok((w, h))
}

/// YUV planes of a decoded JPEG (packed, align 1): Y (width*height) then U and V.
pub struct Yuv {
    pub pixels: Vec<u8>,
    pub width: usize,
    pub height: usize,
    pub subsamp: Subsamp,
}

impl Default for Yuv {
    fn default() -> Self {
        Yuv {
            pixels: Vec::new(),
            width: 0,
            height: 0,
            subsamp: Subsamp::None,
        }
    }
}

/// The planes are packed (align 1) but padded to whole chroma samples, as TurboJPEG lays them
/// out: with 4:2:0 a 61 x 47 image has a 62 x 48 Y plane and 31 x 24 chroma planes.
impl Yuv {
    /// Row length of the Y plane.
    pub fn y_stride(&self) -> usize {
        self.width.next_multiple_of(self.subsamp.width().max(1))
    }
    /// Rows of the Y plane.
    pub fn y_rows(&self) -> usize {
        self.height.next_multiple_of(self.subsamp.height().max(1))
    }
    /// Row length (= libjpeg's downsampled width) of each chroma plane.
    pub fn uv_stride(&self) -> usize {
        self.y_stride() / self.subsamp.width().max(1)
    }
    /// Rows (= libjpeg's downsampled height) of each chroma plane.
    pub fn uv_rows(&self) -> usize {
        self.y_rows() / self.subsamp.height().max(1)
    }
    /// The Y plane, padding included.
    pub fn y_plane(&self) -> &[u8] {
        &self.pixels[..self.y_stride() * self.y_rows()]
    }
    /// The Cb (`index` 0) or Cr (1) plane.
    pub fn uv_plane(&self, index: usize) -> &[u8] {
        let (y, uv) = (
            self.y_stride() * self.y_rows(),
            self.uv_stride() * self.uv_rows(),
        );
        &self.pixels[y + index * uv..y + (index + 1) * uv]
    }
    /// Darkest luma sample of the image itself (padding excluded).
    pub fn luma_min(&self) -> u8 {
        let stride = self.y_stride();
        (0..self.height)
            .map(|r| min_value(&self.pixels[r * stride..r * stride + self.width]))
            .min()
            .unwrap_or(255)
    }
}

/// Decode to YUV planes without colour conversion or chroma upsampling (the cheapest full
/// decode). Fails for grayscale/CMYK streams; callers fall back to RGB.
pub fn decode_yuv_into(data: &[u8], out: &mut Yuv) -> std::result::Result<(), String> {
    let header = read_header(data)?;
    if header.components != 3 {
        return Err(format!(
            "{}-component JPEG has no YUV planes",
            header.components
        ));
    }
    let len = turbojpeg::yuv_pixels_len(header.width, 1, header.height, header.subsamp)
        .map_err(|e| e.to_string())?;
    out.pixels.resize(len, 0);
    out.width = header.width;
    out.height = header.height;
    out.subsamp = header.subsamp;
    with_decompressor(|d| {
        let image = YuvImage {
            pixels: out.pixels.as_mut_slice(),
            width: header.width,
            align: 1,
            height: header.height,
            subsamp: header.subsamp,
        };
        d.decompress_to_yuv(data, image).map_err(|e| e.to_string())
    })
}

/// Encode interleaved RGB (`pitch` bytes per row, 3 bytes per pixel) as 4:2:0 JPEG.
pub fn encode_rgb(
    pixels: &[u8],
    width: usize,
    height: usize,
    pitch: usize,
    quality: u8,
) -> std::result::Result<Vec<u8>, String> {
    with_compressor(|c| {
        c.set_quality(i32::from(quality))
            .map_err(|e| e.to_string())?;
        c.set_subsamp(Subsamp::Sub2x2).map_err(|e| e.to_string())?;
        let image = Image {
            pixels,
            width,
            pitch,
            height,
            format: PixelFormat::RGB,
        };
        c.compress_to_vec(image).map_err(|e| e.to_string())
    })
}

/// Encode YUV planes as produced by [`decode_yuv_into`] (keeps the source subsampling and skips
/// both colour conversions of a decode-RGB-encode round trip).
pub fn encode_yuv(yuv: &Yuv, quality: u8) -> std::result::Result<Vec<u8>, String> {
    with_compressor(|c| {
        c.set_quality(i32::from(quality))
            .map_err(|e| e.to_string())?;
        let image = YuvImage {
            pixels: yuv.pixels.as_slice(),
            width: yuv.width,
            align: 1,
            height: yuv.height,
            subsamp: yuv.subsamp,
        };
        c.compress_yuv_to_vec(image).map_err(|e| e.to_string())
    })
}

const SOI: [u8; 2] = [0xFF, 0xD8];
const EOI: [u8; 2] = [0xFF, 0xD9];
/// A JFIF 1.01 APP0 segment with no density information.
const JFIF_APP0: [u8; 18] = [
    0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01,
    0x00, 0x00,
];

/// Join a TIFF JPEGTables stream (SOI tables EOI) and an abbreviated tile stream (SOI … EOI)
/// into one standalone JPEG. With `jfif`, a JFIF APP0 marker is added so every viewer reads the
/// three components as YCbCr (TIFF tiles carry no APP0 of their own).
pub fn tiff_tile_to_jpeg(tables: Option<&[u8]>, tile: &[u8], jfif: bool) -> Result<Vec<u8>> {
    let bad = |msg: &str| Error::jpeg("<tile>", msg.to_string());
    if !tile.starts_with(&SOI) {
        return Err(bad("JPEG tile does not start with SOI"));
    }
    let mut out = Vec::with_capacity(tile.len() + tables.map_or(0, <[u8]>::len) + JFIF_APP0.len());
    out.extend_from_slice(&SOI);
    if jfif && !has_app0_or_adobe(tile) {
        out.extend_from_slice(&JFIF_APP0);
    }
    if let Some(tables) = tables.filter(|t| t.len() > 4) {
        if !tables.starts_with(&SOI) {
            return Err(bad("JPEGTables does not start with SOI"));
        }
        let body = &tables[2..];
        out.extend_from_slice(body.strip_suffix(&EOI).unwrap_or(body));
    }
    out.extend_from_slice(&tile[2..]);
    Ok(out)
}

fn has_app0_or_adobe(stream: &[u8]) -> bool {
    // Markers right after SOI: APPn segments come first when present.
    let mut i = 2;
    while i + 4 <= stream.len() && stream[i] == 0xFF {
        let marker = stream[i + 1];
        if marker == 0xE0 || marker == 0xEE {
            return true;
        }
        if !(0xE1..=0xEF).contains(&marker) && marker != 0xFE {
            return false;
        }
        i += 2 + usize::from(u16::from_be_bytes([stream[i + 2], stream[i + 3]]));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Vec<u8> {
        (0..w * h * 3)
            .map(|i| ((i / 3) % w + (i % 3) * 40) as u8)
            .collect()
    }

    #[test]
    fn a_cut_stream_does_not_spoil_the_next_decode_on_the_thread() {
        let (w, h) = (256, 256);
        let jpeg = encode_rgb(&gradient(w, h), w, h, w * 3, 90).unwrap();
        let mut expected = Vec::new();
        decode_rgb_into(&jpeg, &mut expected).unwrap();
        let mut out = Vec::new();
        let mut yuv = Yuv::default();
        for cut in (100..1200).step_by(25) {
            let _ = decode_rgb_into(&jpeg[..cut], &mut out);
            decode_rgb_into(&jpeg, &mut out).unwrap();
            assert_eq!(out, expected, "RGB after a stream cut at {cut} bytes");
            let _ = decode_yuv_into(&jpeg[..cut], &mut yuv);
            decode_yuv_into(&jpeg, &mut yuv).unwrap();
        }
    }

    #[test]
    fn rgb_round_trip_is_close() {
        let (w, h) = (64, 48);
        let src = gradient(w, h);
        let jpg = encode_rgb(&src, w, h, w * 3, 95).unwrap();
        let mut out = Vec::new();
        let header = decode_rgb_into(&jpg, &mut out).unwrap();
        assert_eq!((header.width, header.height), (w, h));
        let max_diff = src
            .iter()
            .zip(&out)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(max_diff < 24, "max diff {max_diff}");
    }

    #[test]
    fn yuv_round_trip_keeps_size() {
        let (w, h) = (32, 32);
        let jpg = encode_rgb(&gradient(w, h), w, h, w * 3, 90).unwrap();
        let mut yuv = Yuv::default();
        decode_yuv_into(&jpg, &mut yuv).unwrap();
        assert_eq!(yuv.subsamp, Subsamp::Sub2x2);
        assert_eq!(yuv.y_plane().len(), w * h);
        let mut odd = Yuv::default();
        decode_yuv_into(
            &encode_rgb(&gradient(61, 47), 61, 47, 61 * 3, 90).unwrap(),
            &mut odd,
        )
        .unwrap();
        assert_eq!(
            (odd.y_stride(), odd.y_rows(), odd.uv_stride(), odd.uv_rows()),
            (62, 48, 31, 24)
        );
        assert_eq!(odd.pixels.len(), 62 * 48 + 2 * 31 * 24);
        let again = encode_yuv(&yuv, 90).unwrap();
        assert_eq!(read_header(&again).unwrap().width, w);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        assert!(decode_rgb_into(b"\xFF\xD8\xFF\xDBnot a jpeg", &mut out).is_err());
        assert!(decode_rgb_into(b"", &mut out).is_err());
    }

    #[test]
    fn tables_and_tile_join() {
        let jpg = encode_rgb(&gradient(16, 16), 16, 16, 48, 90).unwrap();
        // A full stream is its own "tile"; empty tables leave it unchanged apart from APP0.
        let joined = tiff_tile_to_jpeg(None, &jpg, false).unwrap();
        assert_eq!(joined, jpg);
        let tables = [0xFF, 0xD8, 0xFF, 0xD9];
        assert_eq!(tiff_tile_to_jpeg(Some(&tables), &jpg, false).unwrap(), jpg);
        assert!(tiff_tile_to_jpeg(None, b"nope", true).is_err());
    }
}
