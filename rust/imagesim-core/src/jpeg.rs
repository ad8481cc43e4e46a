//! JPEG through libjpeg-turbo (the `turbojpeg` crate): decode to RGB or to YUV planes, encode,
//! and turning a JPEG-in-TIFF tile into a standalone `.jpg`.
//!
//! Codec handles are expensive to create, so each thread keeps one compressor and one
//! decompressor (`thread_local!`).
//!
//! Every decode failure is described by one [`Problem`], in the words every command uses
//! (`nodata-index`, `encode`, `chip` and COG tile reads): empty file, truncated JPEG, not a JPEG,
//! unsupported colour space, corrupt JPEG data (plus, for chips, wrong chip size and greyscale).
//! The stream is classified only after libjpeg-turbo has refused it ([`classify`]), so the
//! success path costs nothing more.
use std::cell::RefCell;
use std::fmt;
use std::path::Path;

use turbojpeg::{Compressor, Decompressor, Image, YuvImage};
pub use turbojpeg::{PixelFormat, Subsamp};

use crate::grid;
use crate::pixels::min_value;

/// What is wrong with a JPEG stream (a chip file or a COG tile), without the file's name: callers
/// put the file (and for tiles the COG path and tile) in front of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The file has 0 bytes.
    Empty,
    /// The stream ends before the image data is complete (cut short: no end-of-image marker).
    Truncated(String),
    /// No SOI marker: another format, garbage, or a directory.
    NotJpeg(String),
    /// A colour space we do not decode: CMYK or YCCK (4 components).
    UnsupportedColour(String),
    /// libjpeg-turbo refused data that is structurally complete: its (short) message.
    Corrupt(String),
    /// A chip whose pixel size is not its zoom's (from the chip name).
    WrongSize {
        zoom: u8,
        expected: usize,
        width: usize,
        height: usize,
    },
    /// One component (greyscale): measurable, but not a chip `imagesim chip` writes.
    Greyscale,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => write!(f, "empty file (0 bytes)"),
            Problem::Truncated(d) => write!(f, "truncated JPEG: {d}"),
            Problem::NotJpeg(d) => write!(f, "not a JPEG: {d}"),
            Problem::UnsupportedColour(d) => write!(f, "unsupported colour space: {d}"),
            Problem::Corrupt(d) => write!(f, "corrupt JPEG data: {d}"),
            Problem::WrongSize {
                zoom,
                expected,
                width,
                height,
            } => write!(
                f,
                "wrong chip size: expected {expected}×{expected} for a z{zoom} chip, got {width}×{height}"
            ),
            Problem::Greyscale => write!(f, "greyscale JPEG (1 component)"),
        }
    }
}

impl Problem {
    /// `"<file>: <problem>"`, the one line every command reports for a bad chip file.
    pub fn for_file(&self, path: &Path) -> String {
        format!("{}: {self}", path.display())
    }
}

/// The message for a chip file that could not be read: a directory is "not a JPEG", anything
/// else is the operating system's error. Only called after a read failed.
pub fn read_failure(path: &Path, err: std::io::Error) -> String {
    if path.is_dir() {
        return Problem::NotJpeg("a directory, not a file".into()).for_file(path);
    }
    crate::error::Error::io(path, err).to_string()
}

/// The size a chip named `Z<zone>-<quadkey>_<catalog-id>.jpg` must have (from its quadkey's zoom);
/// `None` for files not named like chips.
pub fn expected_chip_side(path: &Path) -> Option<(u8, usize)> {
    let name = path.file_name()?.to_str()?;
    let chip = grid::ChipName::parse(name).ok()?;
    let tile = chip.tile();
    let window = grid::chip_window(&tile).ok()?;
    Some((tile.z, window.width as usize))
}

/// [`Problem::WrongSize`] when `path` is named like a chip and `width` x `height` is not its size.
pub fn chip_size_problem(path: &Path, width: usize, height: usize) -> Option<Problem> {
    let (zoom, expected) = expected_chip_side(path)?;
    (width != expected || height != expected).then_some(Problem::WrongSize {
        zoom,
        expected,
        width,
        height,
    })
}

const SOI: [u8; 2] = [0xFF, 0xD8];
const EOI: [u8; 2] = [0xFF, 0xD9];

/// Why libjpeg-turbo refused `data`, in the shared vocabulary. `lib` is its error message; it is
/// kept only when the stream is structurally complete (then the data itself is corrupt). Call it
/// after a failure only: it walks the stream's markers.
pub fn classify(data: &[u8], lib: &str) -> Problem {
    if data.is_empty() {
        return Problem::Empty;
    }
    if !data.starts_with(&SOI) {
        return Problem::NotJpeg(describe_start(data));
    }
    let walk = walk_markers(data);
    if let Some(colour) = walk.unsupported_colour() {
        return Problem::UnsupportedColour(colour);
    }
    match walk.end {
        End::Truncated(where_) => {
            Problem::Truncated(format!("ends after {} bytes, {where_}", data.len()))
        }
        End::Complete | End::Malformed => Problem::Corrupt(short_message(lib)),
    }
}

/// The start of a stream that is not a JPEG: what it looks like, when we can tell.
fn describe_start(data: &[u8]) -> String {
    let looks = if data.starts_with(b"II*\0")
        || data.starts_with(b"MM\0*")
        || data.starts_with(b"II+\0")
        || data.starts_with(b"MM\0+")
    {
        Some("a TIFF")
    } else if data.starts_with(b"\x89PNG") {
        Some("a PNG")
    } else if data.starts_with(b"GIF8") {
        Some("a GIF")
    } else if data.len() >= 12 && data.starts_with(b"RIFF") && &data[8..12] == b"WEBP" {
        Some("a WebP")
    } else {
        None
    };
    let bytes = data
        .iter()
        .take(2)
        .map(|b| format!("0x{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    match looks {
        Some(kind) => format!("no SOI marker, starts with {bytes} (looks like {kind} file)"),
        None => format!("no SOI marker, starts with {bytes}"),
    }
}

/// libjpeg-turbo's message without the wrapper's prefixes ("TurboJPEG error: ", "Corrupt JPEG
/// data: ") that would repeat the category.
fn short_message(lib: &str) -> String {
    let mut m = lib.trim();
    for prefix in ["TurboJPEG error:", "Corrupt JPEG data:"] {
        if let Some(rest) = m.strip_prefix(prefix) {
            m = rest.trim_start();
        }
    }
    if m.is_empty() {
        "libjpeg-turbo gave no reason".into()
    } else {
        m.to_string()
    }
}

/// How a marker walk through a stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// EOI after the image data.
    Complete,
    /// The data stops first; says where.
    Truncated(String),
    /// Bytes that are not markers where markers belong (libjpeg-turbo's message says more).
    Malformed,
}

#[derive(Debug)]
struct Walk {
    end: End,
    /// Components of the first frame header (SOFn), when there is one.
    components: Option<u8>,
    /// Adobe APP14 colour transform (2 = YCCK), when present.
    adobe_transform: Option<u8>,
}

impl Walk {
    fn unsupported_colour(&self) -> Option<String> {
        match (self.components?, self.adobe_transform) {
            (4, Some(2)) => Some("YCCK JPEG (4 components)".into()),
            (4, _) => Some("CMYK JPEG (4 components)".into()),
            _ => None,
        }
    }
}

fn segment_name(marker: u8) -> String {
    match marker {
        0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => "frame header (SOF)".into(),
        0xC4 => "Huffman table (DHT) segment".into(),
        0xDB => "quantization table (DQT) segment".into(),
        0xDA => "scan header (SOS)".into(),
        0xDD => "restart interval (DRI) segment".into(),
        0xE0..=0xEF => format!("APP{} segment", marker - 0xE0),
        0xFE => "comment (COM) segment".into(),
        m => format!("segment of marker 0x{m:02x}"),
    }
}

/// Walk the markers of a stream that starts with SOI, skipping entropy-coded data, to tell a
/// stream that was cut short from one whose data is damaged.
fn walk_markers(data: &[u8]) -> Walk {
    let mut walk = Walk {
        end: End::Malformed,
        components: None,
        adobe_transform: None,
    };
    let n = data.len();
    let mut pos = 2;
    let mut seen_scan = false;
    let before = |seen_scan: bool| {
        if seen_scan {
            "inside the image data (no end-of-image marker)"
        } else {
            "before the image data"
        }
    };
    loop {
        if pos >= n {
            walk.end = End::Truncated(before(seen_scan).into());
            return walk;
        }
        if data[pos] != 0xFF {
            walk.end = End::Malformed;
            return walk;
        }
        // Fill bytes (0xFF 0xFF …) may pad before a marker.
        while pos + 1 < n && data[pos + 1] == 0xFF {
            pos += 1;
        }
        if pos + 1 >= n {
            walk.end = End::Truncated(before(seen_scan).into());
            return walk;
        }
        let marker = data[pos + 1];
        match marker {
            0xD9 => {
                walk.end = if seen_scan {
                    End::Complete
                } else {
                    End::Malformed // EOI with no image: libjpeg-turbo says so
                };
                return walk;
            }
            0x01 | 0xD0..=0xD7 => {
                pos += 2;
                continue;
            }
            0x00 | 0xD8 => {
                walk.end = End::Malformed;
                return walk;
            }
            _ => {}
        }
        if pos + 4 > n {
            walk.end = End::Truncated(format!("inside its {}", segment_name(marker)));
            return walk;
        }
        let len = usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
        if len < 2 {
            walk.end = End::Malformed;
            return walk;
        }
        let body = pos + 4;
        let next = pos + 2 + len;
        let in_frame = matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF);
        if in_frame && walk.components.is_none() && body + 6 <= n.min(next) {
            walk.components = Some(data[body + 5]);
        }
        if marker == 0xEE && body + 12 <= n.min(next) && &data[body..body + 5] == b"Adobe" {
            walk.adobe_transform = Some(data[body + 11]);
        }
        if next > n {
            walk.end = End::Truncated(format!("inside its {}", segment_name(marker)));
            return walk;
        }
        pos = next;
        if marker == 0xDA {
            seen_scan = true;
            // Entropy-coded data runs to the next marker that is not stuffing (FF 00) or a
            // restart marker (FF D0..D7).
            loop {
                match data[pos..].iter().position(|&b| b == 0xFF) {
                    None => {
                        walk.end = End::Truncated(before(true).into());
                        return walk;
                    }
                    Some(i) => {
                        let at = pos + i;
                        match data.get(at + 1) {
                            None => {
                                walk.end = End::Truncated(before(true).into());
                                return walk;
                            }
                            Some(0x00 | 0xFF | 0xD0..=0xD7) => pos = at + 1,
                            Some(_) => {
                                pos = at;
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

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

/// Dimensions, subsampling and components of a stream; a stream libjpeg-turbo cannot parse, or
/// whose header asks for more than [`MAX_DECODE_PIXELS`], is a [`Problem`].
pub fn read_header(data: &[u8]) -> std::result::Result<Header, Problem> {
    let h = with_decompressor(|d| d.read_header(data).map_err(|e| e.to_string()))
        .map_err(|e| classify(data, &e))?;
    if h.width.saturating_mul(h.height) > MAX_DECODE_PIXELS {
        return Err(Problem::Corrupt(format!(
            "the header claims {}×{} px, more than any image we decode",
            h.width, h.height
        )));
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
}

/// [`Problem::UnsupportedColour`] for a 4-component header.
pub fn colour_problem(header: &Header, data: &[u8]) -> Option<Problem> {
    (header.components == 4).then(|| {
        walk_markers(data).unsupported_colour().map_or_else(
            || Problem::UnsupportedColour("CMYK JPEG (4 components)".into()),
            Problem::UnsupportedColour,
        )
    })
}

/// Decode to interleaved RGB (3 bytes per pixel) into `out`, which is resized to fit.
pub fn decode_rgb_into(data: &[u8], out: &mut Vec<u8>) -> std::result::Result<Header, Problem> {
    let header = read_header(data)?;
    if let Some(p) = colour_problem(&header, data) {
        return Err(p);
    }
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
    })
    .map_err(|e| classify(data, &e))?;
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
) -> std::result::Result<(usize, usize), Problem> {
    let header = read_header(data)?;
    if let Some(p) = colour_problem(&header, data) {
        return Err(p);
    }
    let (w, h) = (header.width, header.height);
    if w == 0 || h == 0 || w > max_w || h > max_h {
        return Err(Problem::Corrupt(format!(
            "the header says {w}×{h} px, larger than its {max_w}×{max_h} tile"
        )));
    }
    let pitch = w * format.size();
    if out.len() < pitch * h {
        return Err(Problem::Corrupt(format!(
            "output buffer of {} bytes is too small for {w}×{h}",
            out.len()
        )));
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
    })
    .map_err(|e| classify(data, &e))?;
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
/// decode). Greyscale streams are [`Problem::Greyscale`] (callers decode those to one band),
/// CMYK/YCCK ones [`Problem::UnsupportedColour`].
pub fn decode_yuv_into(data: &[u8], out: &mut Yuv) -> std::result::Result<(), Problem> {
    let header = read_header(data)?;
    if let Some(p) = colour_problem(&header, data) {
        return Err(p);
    }
    if header.components == 1 {
        return Err(Problem::Greyscale);
    }
    let len = turbojpeg::yuv_pixels_len(header.width, 1, header.height, header.subsamp)
        .map_err(|e| classify(data, &e.to_string()))?;
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
    .map_err(|e| classify(data, &e))
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

/// A JFIF 1.01 APP0 segment with no density information.
const JFIF_APP0: [u8; 18] = [
    0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01,
    0x00, 0x00,
];

/// Whether a TIFF JPEGTables value can be joined to the tiles: `None` when usable (or too short to
/// matter, as libtiff treats it), else what is wrong with it. A problem of the whole image.
pub fn tables_problem(tables: &[u8]) -> Option<String> {
    if tables.len() <= 4 || tables.starts_with(&SOI) {
        return None;
    }
    let bytes = tables
        .iter()
        .take(2)
        .map(|b| format!("0x{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    let zeroed = tables.iter().all(|&b| b == 0);
    Some(if zeroed {
        format!(
            "JPEGTables (tag 347) holds {} zero bytes, not a table stream",
            tables.len()
        )
    } else {
        format!("JPEGTables (tag 347) does not start with an SOI marker (starts with {bytes})")
    })
}

/// Join a TIFF JPEGTables stream (SOI tables EOI) and an abbreviated tile stream (SOI … EOI)
/// into one standalone JPEG. With `jfif`, a JFIF APP0 marker is added so every viewer reads the
/// three components as YCbCr (TIFF tiles carry no APP0 of their own). Unusable tables (see
/// [`tables_problem`]) are ignored here: callers check them once per image.
pub fn tiff_tile_to_jpeg(
    tables: Option<&[u8]>,
    tile: &[u8],
    jfif: bool,
) -> std::result::Result<Vec<u8>, Problem> {
    if !tile.starts_with(&SOI) {
        return Err(classify(tile, ""));
    }
    let mut out = Vec::with_capacity(tile.len() + tables.map_or(0, <[u8]>::len) + JFIF_APP0.len());
    out.extend_from_slice(&SOI);
    if jfif && !has_app0_or_adobe(tile) {
        out.extend_from_slice(&JFIF_APP0);
    }
    if let Some(tables) = tables.filter(|t| t.len() > 4 && t.starts_with(&SOI)) {
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

    /// Every way a stream fails, through every decoder: the same category for the same bytes.
    fn all_decoders(data: &[u8]) -> Vec<Problem> {
        let mut rgb = Vec::new();
        let mut yuv = Yuv::default();
        let mut buf = vec![0u8; 256 * 256 * 3];
        vec![
            decode_rgb_into(data, &mut rgb).unwrap_err(),
            decode_yuv_into(data, &mut yuv).unwrap_err(),
            decode_into(data, PixelFormat::RGB, 256, 256, &mut buf).unwrap_err(),
        ]
    }

    fn category(p: &Problem) -> &'static str {
        match p {
            Problem::Empty => "empty",
            Problem::Truncated(_) => "truncated",
            Problem::NotJpeg(_) => "not a JPEG",
            Problem::UnsupportedColour(_) => "colour",
            Problem::Corrupt(_) => "corrupt",
            Problem::WrongSize { .. } => "size",
            Problem::Greyscale => "greyscale",
        }
    }

    fn assert_all(data: &[u8], want: &str) -> Problem {
        let got = all_decoders(data);
        for p in &got {
            assert_eq!(category(p), want, "{p}");
        }
        got.into_iter().next().unwrap()
    }

    #[test]
    fn empty_and_not_a_jpeg() {
        assert_eq!(assert_all(b"", "empty").to_string(), "empty file (0 bytes)");
        let p = assert_all(b"\x8a\x44 random bytes", "not a JPEG");
        assert_eq!(
            p.to_string(),
            "not a JPEG: no SOI marker, starts with 0x8a 0x44"
        );
        let p = classify(b"II*\0\x08\0\0\0", "");
        assert!(p.to_string().contains("looks like a TIFF file"), "{p}");
        assert!(classify(b"\x89PNG\r\n", "").to_string().contains("a PNG"));
    }

    #[test]
    fn cut_streams_are_truncated_wherever_the_cut_is() {
        let jpg = encode_rgb(&gradient(256, 256), 256, 256, 256 * 3, 90).unwrap();
        assert!(jpg.len() > 2000);
        let p = assert_all(&jpg[..10], "truncated");
        assert_eq!(
            p.to_string(),
            "truncated JPEG: ends after 10 bytes, inside its APP0 segment"
        );
        let p = assert_all(&jpg[..jpg.len() / 2], "truncated");
        assert!(
            p.to_string()
                .contains("inside the image data (no end-of-image marker)"),
            "{p}"
        );
        // Only the end-of-image marker missing.
        assert_all(&jpg[..jpg.len() - 2], "truncated");
        for cut in [2, 3, 4, 20, 100, 300, 600] {
            assert_eq!(
                category(&classify(&jpg[..cut], "")),
                "truncated",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn damaged_complete_streams_are_corrupt_with_libjpegs_message() {
        let jpg = encode_rgb(&gradient(64, 64), 64, 64, 64 * 3, 90).unwrap();
        // The scan header's first component selector points at a component that does not exist.
        let sos = jpg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut bad = jpg.clone();
        bad[sos + 5] = 9;
        let p = assert_all(&bad, "corrupt");
        let text = p.to_string();
        assert!(text.starts_with("corrupt JPEG data: "), "{text}");
        assert!(!text.contains("TurboJPEG error"), "{text}");
        assert_eq!(
            classify(
                &jpg,
                "TurboJPEG error: Corrupt JPEG data: 12 extraneous bytes"
            ),
            Problem::Corrupt("12 extraneous bytes".into())
        );
    }

    #[test]
    fn cmyk_and_greyscale_are_named() {
        let (w, h) = (32, 32);
        let cmyk = with_compressor(|c| {
            c.set_subsamp(Subsamp::None).map_err(|e| e.to_string())?;
            let px = vec![40u8; w * h * 4];
            let image = Image {
                pixels: px.as_slice(),
                width: w,
                pitch: w * 4,
                height: h,
                format: PixelFormat::CMYK,
            };
            c.compress_to_vec(image).map_err(|e| e.to_string())
        })
        .unwrap();
        let p = assert_all(&cmyk, "colour");
        assert!(
            p.to_string().starts_with("unsupported colour space: "),
            "{p}"
        );
        assert!(p.to_string().contains("4 components"), "{p}");
        let grey = with_compressor(|c| {
            c.set_subsamp(Subsamp::Gray).map_err(|e| e.to_string())?;
            let px = vec![90u8; w * h];
            let image = Image {
                pixels: px.as_slice(),
                width: w,
                pitch: w,
                height: h,
                format: PixelFormat::GRAY,
            };
            c.compress_to_vec(image).map_err(|e| e.to_string())
        })
        .unwrap();
        let mut yuv = Yuv::default();
        assert_eq!(decode_yuv_into(&grey, &mut yuv), Err(Problem::Greyscale));
        let mut rgb = Vec::new();
        assert_eq!(decode_rgb_into(&grey, &mut rgb).unwrap().components, 1);
    }

    #[test]
    fn chip_names_carry_their_size() {
        let z17 = Path::new("/x/Z10-12002022303200001_A1.jpg");
        assert_eq!(expected_chip_side(z17), Some((17, 512)));
        assert_eq!(chip_size_problem(z17, 512, 512), None);
        assert_eq!(
            chip_size_problem(z17, 256, 256).unwrap().to_string(),
            "wrong chip size: expected 512×512 for a z17 chip, got 256×256"
        );
        assert_eq!(expected_chip_side(Path::new("photo.jpg")), None);
    }

    #[test]
    fn bad_tables_are_named() {
        assert_eq!(
            tables_problem(&[0xFF, 0xD8, 0xFF, 0xDB, 0, 4, 0xFF, 0xD9]),
            None
        );
        assert_eq!(tables_problem(&[0, 0]), None); // too short to matter (libtiff ignores it)
        let zeroed = tables_problem(&[0; 289]).unwrap();
        assert!(zeroed.contains("289 zero bytes"), "{zeroed}");
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
