//! No-data measurement. A pixel is no-data when every one of its first three bands is <= a
//! threshold (0 by default; a few levels more tolerate JPEG noise along no-data edges).
//!
//! JPEGs are measured exactly but cheaply: a no-data pixel has luma <= T + 1 (luma is a convex
//! combination of R, G and B, plus rounding), so a luma-only decode whose darkest sample is above
//! that proves the image has no no-data pixel. Only images with a dark luma sample are decoded to
//! RGB and counted pixel by pixel. The answer is always the full-pixel rule's answer.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::jpeg::{self, PixelFormat};

/// Count interleaved pixels (`stride` bytes each, first 3 bands compared) that are no-data.
pub fn count_nodata(pixels: &[u8], stride: usize, threshold: u8) -> u64 {
    pixels.chunks_exact(stride).filter(|p| p[0] <= threshold && p[1] <= threshold && p[2] <= threshold).count() as u64
}

/// Smallest byte of a plane (255 for an empty one); written as a fold so it vectorises.
pub fn min_value(plane: &[u8]) -> u8 {
    plane.iter().fold(255u8, |m, &v| m.min(v))
}

/// Whether a luma plane whose darkest sample is `darkest` may hold a no-data pixel.
pub fn luma_may_hold_nodata(darkest: u8, threshold: u8) -> bool {
    u16::from(darkest) <= u16::from(threshold) + 1
}

/// Buffers reused across images by one worker.
#[derive(Default)]
pub struct Scratch {
    pub luma: Vec<u8>,
    pub rgb: Vec<u8>,
    pub yuv: jpeg::Yuv,
}

/// Exact no-data count of a colour JPEG whose luma plane's darkest sample is known.
pub fn count_after_luma(stream: &[u8], darkest: u8, threshold: u8, rgb: &mut Vec<u8>) -> Result<u64, String> {
    if !luma_may_hold_nodata(darkest, threshold) {
        return Ok(0);
    }
    jpeg::decode_rgb_into(stream, rgb)?;
    Ok(count_nodata(rgb, 3, threshold))
}

/// What measuring one JPEG found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegCount {
    pub width: u32,
    pub height: u32,
    pub nodata_pixels: u64,
}

impl JpegCount {
    pub fn total_pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// Largest chip we measure (a z12 chip is 16,384 px square).
const MAX_SIDE: usize = 16_384;

/// Exact no-data count of a whole JPEG: luma-only decode, RGB only when a dark sample exists.
/// Grayscale JPEGs are counted on their single band.
pub fn count_in_jpeg(stream: &[u8], threshold: u8, scratch: &mut Scratch) -> Result<JpegCount, String> {
    let header = jpeg::read_header(stream)?;
    let (w, h) = (header.width, header.height);
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!("JPEG is {w}x{h} px, larger than any chip"));
    }
    scratch.luma.resize(w * h, 0);
    jpeg::decode_into(stream, PixelFormat::GRAY, w, h, &mut scratch.luma)?;
    let darkest = min_value(&scratch.luma);
    let nodata = if header.components == 1 {
        scratch.luma.iter().filter(|&&v| v <= threshold).count() as u64
    } else {
        count_after_luma(stream, darkest, threshold, &mut scratch.rgb)?
    };
    Ok(JpegCount { width: w as u32, height: h as u32, nodata_pixels: nodata })
}

/// Measure JPEG files in parallel on the current rayon pool; one result per path, in order.
/// `progress` is incremented once per file. A failure names the file and does not stop the rest.
pub fn scan_jpeg_files(paths: &[PathBuf], threshold: u8, progress: &AtomicU64) -> Vec<Result<JpegCount, String>> {
    paths
        .par_iter()
        .map_init(Scratch::default, |scratch, path| {
            let result = measure_file(path, threshold, scratch);
            progress.fetch_add(1, Ordering::Relaxed);
            result
        })
        .collect()
}

fn measure_file(path: &Path, threshold: u8, scratch: &mut Scratch) -> Result<JpegCount, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    count_in_jpeg(&bytes, threshold, scratch).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg_of(w: usize, h: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> Vec<u8> {
        let mut px = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                px.extend_from_slice(&f(x, y));
            }
        }
        jpeg::encode_rgb(&px, w, h, w * 3, 95).unwrap()
    }

    /// The full-pixel rule on the decoded RGB, the oracle for the shortcut.
    fn full_rule(stream: &[u8], threshold: u8) -> u64 {
        let mut rgb = Vec::new();
        jpeg::decode_rgb_into(stream, &mut rgb).unwrap();
        count_nodata(&rgb, 3, threshold)
    }

    #[test]
    fn shortcut_equals_full_rule() {
        let images = [
            jpeg_of(64, 64, |_, _| [140, 150, 120]),
            jpeg_of(64, 64, |x, y| if x + y / 2 < 30 { [0, 0, 0] } else { [90, 100, 80] }),
            jpeg_of(64, 64, |x, y| if (x * 7 + y * 13) % 97 == 0 { [2, 1, 3] } else { [20, 25, 30] }),
            jpeg_of(48, 40, |x, _| [(x * 5) as u8, 10, 4]),
        ];
        let mut scratch = Scratch::default();
        for (i, img) in images.iter().enumerate() {
            for t in [0, 1, 4, 10] {
                let got = count_in_jpeg(img, t, &mut scratch).unwrap();
                assert_eq!(got.nodata_pixels, full_rule(img, t), "image {i}, threshold {t}");
            }
        }
        assert_eq!(count_in_jpeg(&images[0], 0, &mut scratch).unwrap().nodata_pixels, 0);
        assert!(count_in_jpeg(&images[1], 0, &mut scratch).unwrap().nodata_pixels > 0);
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        let img = jpeg_of(64, 64, |x, y| [(x * 3) as u8, (y * 3) as u8, 50]);
        let mut scratch = Scratch::default();
        assert!(count_in_jpeg(&img[..img.len() / 2], 0, &mut scratch).is_err());
        assert!(count_in_jpeg(b"not a jpeg", 0, &mut scratch).is_err());
    }
}
