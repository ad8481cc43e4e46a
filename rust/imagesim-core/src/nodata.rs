//! No-data measurement. A pixel is no-data when every one of its first three bands is <= a
//! threshold (0 by default; a few levels more tolerate JPEG noise along no-data edges).
//!
//! JPEGs are measured exactly but cheaply, from one YUV-plane decode (no chroma upsampling, no
//! colour conversion): a no-data pixel has luma <= T + 1 (luma is a convex combination of R, G
//! and B, plus rounding; checked for every Y, Cb, Cr), so an image whose darkest luma sample is
//! above that has no no-data pixel. Only the rows that hold a dark luma sample are upsampled and
//! converted with libjpeg-turbo's own arithmetic and counted. (A greyscale decode first is no
//! cheaper on the whole: entropy decoding dominates, and dark chips would be decoded twice.)
//! The answer is always the full-pixel rule's answer on the library's RGB decode.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::jpeg::{self, PixelFormat};
use crate::store;

/// Re-exported from its new home, [`crate::pixels`], so `nodata::min_value` keeps working.
pub use crate::pixels::min_value;

/// Largest byte of a plane (0 for an empty one); a fold that vectorises.
fn max_value(plane: &[u8]) -> u8 {
    plane.iter().fold(0u8, |m, &v| m.max(v))
}

/// Count interleaved pixels (`stride` bytes each, first 3 bands compared) that are no-data.
pub fn count_nodata(pixels: &[u8], stride: usize, threshold: u8) -> u64 {
    pixels
        .chunks_exact(stride)
        .filter(|p| crate::pixels::is_nodata(p, threshold))
        .count() as u64
}

/// Whether a luma plane whose darkest sample is `darkest` may hold a no-data pixel.
pub fn luma_may_hold_nodata(darkest: u8, threshold: u8) -> bool {
    u16::from(darkest) <= u16::from(threshold) + 1
}

/// Buffers reused across images by one worker.
#[derive(Default)]
pub struct Scratch {
    pub gray: Vec<u8>,
    pub rgb: Vec<u8>,
    pub yuv: jpeg::Yuv,
}

/// Exact no-data count of a colour JPEG already decoded to `yuv`: nothing more when no luma
/// sample is dark, the planes' extremes when every pixel is no-data, else [`count_from_yuv`] on
/// the rows with a dark sample (a library RGB decode for layouts it does not reproduce).
pub fn count_decoded(
    stream: &[u8],
    yuv: &jpeg::Yuv,
    threshold: u8,
    rgb: &mut Vec<u8>,
) -> Result<u64, jpeg::Problem> {
    if !luma_may_hold_nodata(yuv.luma_min(), threshold) {
        return Ok(0);
    }
    if all_nodata(yuv, threshold) {
        return Ok((yuv.width * yuv.height) as u64);
    }
    if let Some(n) = count_from_yuv(yuv, threshold) {
        return Ok(n);
    }
    jpeg::decode_rgb_into(stream, rgb)?;
    Ok(count_nodata(rgb, 3, threshold))
}

/// libjpeg's fixed-point YCbCr -> RGB (jdcolor.c: SCALEBITS 16, FIX(x) = round(x * 65536)).
mod ycc {
    const ONE_HALF: i32 = 1 << 15;
    const FIX_1_40200: i32 = 91881;
    const FIX_1_77200: i32 = 116130;
    const FIX_0_71414: i32 = 46802;
    const FIX_0_34414: i32 = 22554;

    /// How many pixels of a row (luma, upsampled Cb, upsampled Cr) have R, G and B all <= `t`
    /// after [`to_rgb`]'s conversion. Branch-free so that it vectorises; exact for `t` < 255
    /// (then clamping cannot move a band across `t`).
    pub fn dark_count(luma: &[u8], cb: &[u8], cr: &[u8], t: u8) -> u32 {
        debug_assert!(t < 255);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { dark_count_avx2(luma, cb, cr, t) };
        }
        dark_count_portable(luma, cb, cr, t)
    }

    /// The same loop compiled for AVX2 (8 lanes of 32-bit multiplies; the baseline has none).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn dark_count_avx2(luma: &[u8], cb: &[u8], cr: &[u8], t: u8) -> u32 {
        dark_count_portable(luma, cb, cr, t)
    }

    #[inline(always)]
    fn dark_count_portable(luma: &[u8], cb: &[u8], cr: &[u8], t: u8) -> u32 {
        let t = i32::from(t);
        luma.iter()
            .zip(cb)
            .zip(cr)
            .map(|((&y, &cb), &cr)| {
                let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
                let r = y + ((FIX_1_40200 * cr + ONE_HALF) >> 16);
                let g = y + ((-FIX_0_34414 * cb + ONE_HALF - FIX_0_71414 * cr) >> 16);
                let b = y + ((FIX_1_77200 * cb + ONE_HALF) >> 16);
                u32::from((r <= t) & (g <= t) & (b <= t))
            })
            .sum()
    }

    /// The RGB libjpeg-turbo produces for one pixel of luma `y` and (upsampled) chroma.
    pub fn to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
        let r = y + ((FIX_1_40200 * cr + ONE_HALF) >> 16);
        let g = y + ((-FIX_0_34414 * cb + ONE_HALF - FIX_0_71414 * cr) >> 16);
        let b = y + ((FIX_1_77200 * cb + ONE_HALF) >> 16);
        [
            r.clamp(0, 255) as u8,
            g.clamp(0, 255) as u8,
            b.clamp(0, 255) as u8,
        ]
    }
}

/// True when every pixel is provably no-data: RGB is monotonic in Y and in each chroma sample,
/// and upsampled chroma stays within the range of the chroma samples, so the brightest possible
/// R, G and B come from the planes' extremes. (A whole no-data chip decodes as flat black.)
fn all_nodata(yuv: &jpeg::Yuv, threshold: u8) -> bool {
    if !matches!(
        yuv.subsamp,
        jpeg::Subsamp::None | jpeg::Subsamp::Sub2x2 | jpeg::Subsamp::Sub2x1
    ) {
        return false;
    }
    let stride = yuv.y_stride();
    // Row by row, each a fold the compiler vectorises.
    let y_max = (0..yuv.height)
        .map(|r| max_value(&yuv.pixels[r * stride..r * stride + yuv.width]))
        .max()
        .unwrap_or(0);
    if y_max > threshold {
        return false;
    }
    let range = |p: &[u8]| {
        p.iter()
            .fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    };
    let ((cb_lo, cb_hi), (cr_lo, cr_hi)) = (range(yuv.uv_plane(0)), range(yuv.uv_plane(1)));
    let [r, _, b] = ycc::to_rgb(y_max, cb_hi, cr_hi);
    let g = ycc::to_rgb(y_max, cb_lo, cr_lo)[1];
    r <= threshold && g <= threshold && b <= threshold
}

/// Exact no-data count from YUV planes with libjpeg-turbo's own arithmetic (h2v2 "fancy" chroma
/// upsampling of jdsample.c, colour conversion of jdcolor.c), on the rows that hold a dark luma
/// sample only. Returns None when the layout is not one reproduced here (4:2:0 and 4:4:4 are).
pub fn count_from_yuv(yuv: &jpeg::Yuv, threshold: u8) -> Option<u64> {
    let (w, h, stride) = (yuv.width, yuv.height, yuv.y_stride());
    let luma = yuv.y_plane();
    let limit = u16::from(threshold) + 1;
    let row = |y: usize| &luma[y * stride..y * stride + w];
    // Rows with a candidate, by a vectorised min (most rows of most chips have none).
    let dark_rows: Vec<usize> = (0..h)
        .filter(|&y| u16::from(min_value(row(y))) <= limit)
        .collect();
    if dark_rows.is_empty() {
        return Some(0);
    }
    let (u, v, cw, ch) = (
        yuv.uv_plane(0),
        yuv.uv_plane(1),
        yuv.uv_stride(),
        yuv.uv_rows(),
    );
    let h2v2 = match yuv.subsamp {
        jpeg::Subsamp::None => false,
        jpeg::Subsamp::Sub2x2 if cw >= 2 => true,
        _ => return None,
    };
    if threshold == u8::MAX {
        return Some((w * h) as u64); // every pixel qualifies
    }
    // Rows with a candidate are converted whole (chroma upsampled as libjpeg does, then its
    // fixed-point conversion): branch-free loops that vectorise beat visiting candidates.
    let mut up = Upsampled::new(cw);
    let mut count = 0u64;
    for y in dark_rows {
        let luma = row(y);
        // Only the span between the row's first and last candidate can hold a no-data pixel.
        let first = luma
            .iter()
            .position(|&l| u16::from(l) <= limit)
            .unwrap_or(0);
        let last = luma
            .iter()
            .rposition(|&l| u16::from(l) <= limit)
            .unwrap_or(0);
        let (cb, cr): (&[u8], &[u8]) = if h2v2 {
            up.row(u, v, ch, y)
        } else {
            (&u[y * cw..y * cw + w], &v[y * cw..y * cw + w])
        };
        let span = first..last + 1;
        count += u64::from(ycc::dark_count(
            &luma[span.clone()],
            &cb[span.clone()],
            &cr[span],
            threshold,
        ));
    }
    Some(count)
}

/// One output row of libjpeg's h2v2 fancy upsampling of both chroma planes (`cw` samples a row).
struct Upsampled {
    cw: usize,
    /// Column sums of the two chroma rows an output row blends, one replicated at each end.
    sums: Vec<u16>,
    cb: Vec<u8>,
    cr: Vec<u8>,
}

impl Upsampled {
    fn new(cw: usize) -> Self {
        Upsampled {
            cw,
            sums: vec![0; cw + 2],
            cb: vec![0; 2 * cw],
            cr: vec![0; 2 * cw],
        }
    }

    /// Upsampled Cb and Cr of output row `y` (2 x `cw` samples; the image width comes first).
    fn row(&mut self, u: &[u8], v: &[u8], ch: usize, y: usize) -> (&[u8], &[u8]) {
        Self::plane_row(u, self.cw, ch, y, &mut self.sums, &mut self.cb);
        Self::plane_row(v, self.cw, ch, y, &mut self.sums, &mut self.cr);
        (&self.cb, &self.cr)
    }

    /// jdsample.c's h2v2 fancy upsampling: a triangle filter, weights 9/3/3/1, with the
    /// alternating rounding bias (+8 even columns, +7 odd); image edges replicate the nearest
    /// row/column.
    fn plane_row(plane: &[u8], cw: usize, ch: usize, y: usize, sums: &mut [u16], out: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { Self::plane_row_avx2(plane, cw, ch, y, sums, out) };
        }
        Self::plane_row_portable(plane, cw, ch, y, sums, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn plane_row_avx2(
        plane: &[u8],
        cw: usize,
        ch: usize,
        y: usize,
        sums: &mut [u16],
        out: &mut [u8],
    ) {
        Self::plane_row_portable(plane, cw, ch, y, sums, out)
    }

    #[inline(always)]
    fn plane_row_portable(
        plane: &[u8],
        cw: usize,
        ch: usize,
        y: usize,
        sums: &mut [u16],
        out: &mut [u8],
    ) {
        let cy = y / 2;
        // Even output rows lean on the chroma row above, odd rows on the one below.
        let other = if y.is_multiple_of(2) {
            cy.saturating_sub(1)
        } else {
            (cy + 1).min(ch - 1)
        };
        let (near, far) = (
            &plane[cy * cw..(cy + 1) * cw],
            &plane[other * cw..(other + 1) * cw],
        );
        for ((s, &n), &f) in sums[1..=cw].iter_mut().zip(near).zip(far) {
            *s = 3 * u16::from(n) + u16::from(f);
        }
        sums[0] = sums[1];
        sums[cw + 1] = sums[cw];
        for (pair, win) in out.chunks_exact_mut(2).zip(sums.windows(3)) {
            pair[0] = ((3 * win[1] + win[0] + 8) >> 4) as u8;
            pair[1] = ((3 * win[1] + win[2] + 7) >> 4) as u8;
        }
    }
}

/// What measuring one JPEG found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegCount {
    pub width: u32,
    pub height: u32,
    pub nodata_pixels: u64,
    /// Measured exactly, but worth a word: a greyscale chip, a chip whose size is not its
    /// zoom's (see [`jpeg::Problem`]); several are joined with "; ".
    pub note: Option<String>,
}

impl JpegCount {
    pub fn total_pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// Largest chip we measure (a z12 chip is 16,384 px square).
const MAX_SIDE: usize = 16_384;

/// Exact no-data count of a whole JPEG (see [`count_decoded`]); grayscale JPEGs are counted on
/// their single band (and noted). CMYK/YCCK and broken streams are a [`jpeg::Problem`].
pub fn count_in_jpeg(
    stream: &[u8],
    threshold: u8,
    scratch: &mut Scratch,
) -> Result<JpegCount, jpeg::Problem> {
    let header = jpeg::read_header(stream)?;
    let (w, h) = (header.width, header.height);
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(jpeg::Problem::Corrupt(format!(
            "the header says {w}×{h} px, larger than any chip ({MAX_SIDE}×{MAX_SIDE})"
        )));
    }
    if let Some(p) = jpeg::colour_problem(&header, stream) {
        return Err(p);
    }
    let (nodata, note) = if header.components == 1 {
        scratch.gray.resize(w * h, 0);
        jpeg::decode_into(stream, PixelFormat::GRAY, w, h, &mut scratch.gray)?;
        let n = scratch.gray.iter().filter(|&&v| v <= threshold).count() as u64;
        (n, Some(jpeg::Problem::Greyscale.to_string()))
    } else {
        jpeg::decode_yuv_into(stream, &mut scratch.yuv)?;
        let n = count_decoded(stream, &scratch.yuv, threshold, &mut scratch.rgb)?;
        (n, None)
    };
    Ok(JpegCount {
        width: w as u32,
        height: h as u32,
        nodata_pixels: nodata,
        note,
    })
}

/// [`count_in_jpeg`] of the chip file `path`: problems name the file, and a chip whose size is not
/// its zoom's is noted (it is still measured exactly).
pub fn count_in_chip(
    path: &Path,
    stream: &[u8],
    threshold: u8,
    scratch: &mut Scratch,
) -> Result<JpegCount, String> {
    let mut count = count_in_jpeg(stream, threshold, scratch).map_err(|p| p.for_file(path))?;
    if let Some(p) = jpeg::chip_size_problem(path, count.width as usize, count.height as usize) {
        count.note = Some(match count.note.take() {
            Some(n) => format!("{n}; {p}"),
            None => p.to_string(),
        });
    }
    Ok(count)
}

/// Measure JPEG files in parallel on the current rayon pool; one result per path, in order.
/// `progress` is incremented once per file. A failure names the file and does not stop the rest.
pub fn scan_jpeg_files(
    paths: &[PathBuf],
    threshold: u8,
    progress: &AtomicU64,
) -> Vec<Result<JpegCount, String>> {
    if !paths.iter().any(|p| store::is_url(p)) {
        return paths
            .par_iter()
            .map_init(Scratch::default, |scratch, path| {
                let result = measure_file(path, threshold, scratch);
                progress.fetch_add(1, Ordering::Relaxed);
                result
            })
            .collect();
    }
    // Chips in an object store: the next window is downloaded while this one is measured.
    let windows: Vec<&[PathBuf]> = paths.chunks(FETCH_WINDOW).collect();
    let mut out = Vec::with_capacity(paths.len());
    let mut next = windows.first().map(|w| store::fetch_many(w));
    for (i, window) in windows.iter().enumerate() {
        let fetched = next
            .take()
            .expect("started before the loop or the step before")
            .wait();
        next = windows.get(i + 1).map(|w| store::fetch_many(w));
        out.par_extend(window.par_iter().zip(fetched.into_par_iter()).map_init(
            Scratch::default,
            |scratch, (path, bytes)| {
                let result = bytes
                    .map_err(|e| jpeg::read_failure(path, e))
                    .and_then(|b| count_in_chip(path, &b, threshold, scratch));
                progress.fetch_add(1, Ordering::Relaxed);
                result
            },
        ));
    }
    out
}

/// Chips downloaded per step when scanning an object store (~20-40 MB of JPEG).
const FETCH_WINDOW: usize = 256;

fn measure_file(path: &Path, threshold: u8, scratch: &mut Scratch) -> Result<JpegCount, String> {
    let bytes = std::fs::read(path).map_err(|e| jpeg::read_failure(path, e))?;
    count_in_chip(path, &bytes, threshold, scratch)
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
            jpeg_of(64, 64, |x, y| {
                if x + y / 2 < 30 {
                    [0, 0, 0]
                } else {
                    [90, 100, 80]
                }
            }),
            jpeg_of(64, 64, |x, y| {
                if (x * 7 + y * 13) % 97 == 0 {
                    [2, 1, 3]
                } else {
                    [20, 25, 30]
                }
            }),
            jpeg_of(48, 40, |x, _| [(x * 5) as u8, 10, 4]),
        ];
        let mut scratch = Scratch::default();
        for (i, img) in images.iter().enumerate() {
            for t in [0, 1, 4, 10] {
                let got = count_in_jpeg(img, t, &mut scratch).unwrap();
                assert_eq!(
                    got.nodata_pixels,
                    full_rule(img, t),
                    "image {i}, threshold {t}"
                );
            }
        }
        assert_eq!(
            count_in_jpeg(&images[0], 0, &mut scratch)
                .unwrap()
                .nodata_pixels,
            0
        );
        assert!(
            count_in_jpeg(&images[1], 0, &mut scratch)
                .unwrap()
                .nodata_pixels
                > 0
        );
    }

    #[test]
    fn yuv_candidates_match_the_library_rgb_decode() {
        // Dark, near-neutral regions with chroma edges: the cases where upsampling matters.
        let mut scratch = Scratch::default();
        let mut checked_nonzero = false;
        for (w, h) in [(64, 64), (61, 47), (512, 512), (33, 2)] {
            for seed in 0..6usize {
                let img = jpeg_of(w, h, |x, y| {
                    let dark = ((x / 3 + seed) * 7 + y * 5) % 11 < 4;
                    let c = ((x * 13 + y * 7 + seed * 31) % 9) as u8;
                    if dark {
                        [c / 3, (c / 2) % 3, c % 4]
                    } else {
                        [(40 + x * 3) as u8, 90, (y * 2 + 30) as u8]
                    }
                });
                jpeg::decode_yuv_into(&img, &mut scratch.yuv).unwrap();
                for t in [0, 1, 3, 8] {
                    let got = count_from_yuv(&scratch.yuv, t).expect("4:2:0 is reproduced");
                    assert_eq!(got, full_rule(&img, t), "{w}x{h} seed {seed} threshold {t}");
                    checked_nonzero |= got > 0;
                }
            }
        }
        assert!(checked_nonzero, "the images must contain no-data pixels");
    }

    #[test]
    fn flat_black_is_all_nodata_and_near_black_is_counted() {
        let mut scratch = Scratch::default();
        let black = jpeg_of(64, 48, |_, _| [0, 0, 0]);
        assert_eq!(
            count_in_jpeg(&black, 0, &mut scratch)
                .unwrap()
                .nodata_pixels,
            64 * 48
        );
        jpeg::decode_yuv_into(&black, &mut scratch.yuv).unwrap();
        assert!(all_nodata(&scratch.yuv, 0));
        let speck = jpeg_of(64, 48, |x, y| {
            if x == 30 && y == 20 {
                [90, 90, 90]
            } else {
                [0, 0, 0]
            }
        });
        let got = count_in_jpeg(&speck, 0, &mut scratch)
            .unwrap()
            .nodata_pixels;
        assert_eq!(got, full_rule(&speck, 0));
        assert!(got < 64 * 48);
    }

    /// The luma shortcut's premise, for every (Y, Cb, Cr) libjpeg can convert: a pixel whose
    /// three bands are all <= T has Y <= T + 1, whatever T (so no dark luma, no no-data pixel).
    #[test]
    fn luma_bound_and_row_count_hold_for_every_ycc_triple() {
        let luma: Vec<u8> = (0..=255).collect();
        for cb in 0..=255u8 {
            for cr in 0..=255u8 {
                // The vectorised row count agrees with the per-pixel conversion (a third of the
                // chroma pairs, every luma: the test stays quick unoptimised).
                let sampled = (cb % 3 == 0 && cr % 3 == 0) || cb == 255 || cr == 255;
                for t in [0u8, 12, 254].into_iter().filter(|_| sampled) {
                    let want = luma
                        .iter()
                        .filter(|&&y| ycc::to_rgb(y, cb, cr).iter().all(|&c| c <= t))
                        .count() as u32;
                    let got = ycc::dark_count(&luma, &[cb; 256], &[cr; 256], t);
                    assert_eq!(got, want, "Cb {cb} Cr {cr} threshold {t}");
                }
                for y in 0..=255u8 {
                    let brightest = ycc::to_rgb(y, cb, cr).into_iter().max().unwrap();
                    assert!(
                        luma_may_hold_nodata(y, brightest),
                        "Y {y} Cb {cb} Cr {cr}: brightest band {brightest}"
                    );
                }
            }
        }
    }

    fn jpeg_with(
        w: usize,
        h: usize,
        subsamp: jpeg::Subsamp,
        f: impl Fn(usize, usize) -> [u8; 3],
    ) -> Vec<u8> {
        let px: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .flat_map(|(x, y)| f(x, y))
            .collect();
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(92).unwrap();
        c.set_subsamp(subsamp).unwrap();
        let image = turbojpeg::Image {
            pixels: px.as_slice(),
            width: w,
            pitch: w * 3,
            height: h,
            format: PixelFormat::RGB,
        };
        c.compress_to_vec(image).unwrap()
    }

    #[test]
    fn count_is_exact_for_every_layout() {
        use jpeg::Subsamp as S;
        let mut scratch = Scratch::default();
        for subsamp in [
            S::None,
            S::Sub2x1,
            S::Sub2x2,
            S::Sub1x2,
            S::Sub4x1,
            S::Sub1x4,
        ] {
            for (w, h) in [(64, 64), (61, 47)] {
                // A black corner with a coloured, dark fringe, beside bright texture.
                let img = jpeg_with(w, h, subsamp, |x, y| match x + y {
                    s if s < 20 => [0, 0, 0],
                    s if s < 26 => [(s % 3) as u8, 0, (s % 5) as u8 * 9],
                    _ => [(60 + x * 2) as u8, (90 + y) as u8, ((x * y) % 200) as u8],
                });
                assert_eq!(jpeg::read_header(&img).unwrap().subsamp, subsamp);
                for t in [0, 2, 6, 40] {
                    let got = count_in_jpeg(&img, t, &mut scratch).unwrap();
                    assert_eq!(
                        got.nodata_pixels,
                        full_rule(&img, t),
                        "{subsamp:?} {w}x{h} threshold {t}"
                    );
                }
                assert!(count_in_jpeg(&img, 0, &mut scratch).unwrap().nodata_pixels > 0);
            }
        }
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        let img = jpeg_of(64, 64, |x, y| [(x * 3) as u8, (y * 3) as u8, 50]);
        let mut scratch = Scratch::default();
        assert!(count_in_jpeg(&img[..img.len() / 2], 0, &mut scratch).is_err());
        assert!(count_in_jpeg(b"not a jpeg", 0, &mut scratch).is_err());
    }
}
