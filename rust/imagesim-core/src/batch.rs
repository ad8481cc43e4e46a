//! Model input batches: many chip JPEGs decoded and resized into one caller-owned buffer.
//!
//! Each image is decoded with libjpeg-turbo's DCT scaling at the smallest `n/8` factor that still
//! gives at least the target size (a 512 px chip for a 224 px model decodes at 1/2, about 3× less
//! work than a full decode), then resized to `size × size` with an antialiased bilinear filter
//! (SIMD, `fast_image_resize`; the same filter as Pillow's `BILINEAR`). Rows go straight into the
//! batch slot of that image (NHWC, RGB, u8), so the buffer can be reused batch after batch.
//!
//! With a no-data threshold, each image's no-data pixels (the rule of `nodata-index`, see
//! [`crate::pixels::is_nodata`]) are filled with the mean of its valid pixels on the scaled decode,
//! before the resize (so no dark fringe is interpolated in), and its valid share is returned: an
//! embedding then describes the chip's data, not its border.
//!
//! The model takes RGB chips of one ground size: a file named like a chip whose pixel size is not
//! its zoom's, or a greyscale one, is refused (its slot zeroed) rather than resized or converted
//! silently; every refusal and decode failure is reported in [`jpeg::Problem`]'s words.
use std::cell::RefCell;
use std::path::{Path, PathBuf};

use fast_image_resize as fr;
use rayon::prelude::*;
use turbojpeg::{Decompressor, Image, PixelFormat, ScalingFactor};

use crate::error::{Error, Result};
use crate::jpeg::{self, Problem};
use crate::pixels::fill_nodata_with_valid_mean;
use crate::store;

thread_local! {
    static DECODER: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
    static RESIZER: RefCell<Option<fr::Resizer>> = const { RefCell::new(None) };
}

/// Largest JPEG a batch accepts (a corrupt header must not ask for gigabytes).
const MAX_PIXELS: usize = 1 << 26;

/// The DCT scaling factor (`n/8`, 1 ≤ n ≤ 8) that decodes `w × h` to the smallest size that is
/// still at least `size` on both sides.
pub fn dct_scale(w: usize, h: usize, size: usize) -> ScalingFactor {
    for n in 1..=8 {
        let f = ScalingFactor::new(n, 8);
        if f.scale(w) >= size && f.scale(h) >= size {
            return f;
        }
    }
    ScalingFactor::ONE
}

/// Decode `data` and resize it into `out` (`size * size * 3` bytes, RGB). `scratch` holds the
/// scaled decode between calls. `chip`: the (zoom, side) the image must have (a chip's size);
/// `None` accepts any size. Greyscale and CMYK images are refused. `nodata`: a no-data threshold;
/// with one, no-data pixels are filled with the valid pixels' mean and the valid share of the
/// decoded pixels is returned (`None` without one).
pub fn decode_resize_into(
    data: &[u8],
    size: usize,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
    chip: Option<(u8, usize)>,
    nodata: Option<u8>,
) -> std::result::Result<Option<f32>, String> {
    if out.len() != size * size * 3 {
        return Err(format!(
            "batch slot has {} bytes, {size}x{size} RGB needs {}",
            out.len(),
            size * size * 3
        ));
    }
    let (w, h) = DECODER.with(|cell| -> std::result::Result<(usize, usize), String> {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Decompressor::new().map_err(|e| e.to_string())?);
        }
        let result = decode_scaled(
            slot.as_mut().expect("initialised above"),
            data,
            size,
            scratch,
            chip,
        );
        if result.is_err() {
            *slot = None; // a handle that failed mid-stream can carry its state into the next image
        }
        result.map_err(|p| match p {
            Problem::Greyscale => format!("{p}: the model takes RGB chips"),
            p => p.to_string(),
        })
    })?;
    let valid = nodata.map(|t| fill_nodata_with_valid_mean(&mut scratch[..w * h * 3], t));
    if w == size && h == size {
        out.copy_from_slice(&scratch[..size * size * 3]);
        return Ok(valid);
    }
    let src =
        fr::images::ImageRef::new(w as u32, h as u32, scratch.as_slice(), fr::PixelType::U8x3)
            .map_err(|e| e.to_string())?;
    let mut dst =
        fr::images::Image::from_slice_u8(size as u32, size as u32, out, fr::PixelType::U8x3)
            .map_err(|e| e.to_string())?;
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    RESIZER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let resizer = slot.get_or_insert_with(fr::Resizer::new);
        resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| e.to_string())
    })?;
    Ok(valid)
}

/// Decode at the DCT scale [`dct_scale`] picks into `scratch`; returns the decoded size. Failures
/// are classified (see [`jpeg::classify`]) only once libjpeg-turbo has refused the stream.
fn decode_scaled(
    d: &mut Decompressor,
    data: &[u8],
    size: usize,
    scratch: &mut Vec<u8>,
    chip: Option<(u8, usize)>,
) -> std::result::Result<(usize, usize), Problem> {
    let header = d
        .read_header(data)
        .map_err(|e| jpeg::classify(data, &e.to_string()))?;
    if header.width == 0
        || header.height == 0
        || header.width.saturating_mul(header.height) > MAX_PIXELS
    {
        return Err(Problem::Corrupt(format!(
            "the header claims {}×{} px",
            header.width, header.height
        )));
    }
    match header.colorspace {
        turbojpeg::Colorspace::CMYK => {
            return Err(Problem::UnsupportedColour(
                "CMYK JPEG (4 components)".into(),
            ))
        }
        turbojpeg::Colorspace::YCCK => {
            return Err(Problem::UnsupportedColour(
                "YCCK JPEG (4 components)".into(),
            ))
        }
        turbojpeg::Colorspace::Gray => return Err(Problem::Greyscale),
        _ => {}
    }
    if let Some((zoom, side)) = chip {
        if header.width != side || header.height != side {
            return Err(Problem::WrongSize {
                zoom,
                expected: side,
                width: header.width,
                height: header.height,
            });
        }
    }
    let factor = dct_scale(header.width, header.height, size);
    d.set_scaling_factor(factor)
        .map_err(|e| Problem::Corrupt(e.to_string()))?;
    let (w, h) = (factor.scale(header.width), factor.scale(header.height));
    scratch.resize(w * h * 3, 0);
    let image = Image {
        pixels: scratch.as_mut_slice(),
        width: w,
        pitch: w * 3,
        height: h,
        format: PixelFormat::RGB,
    };
    d.decompress(data, image)
        .map_err(|e| jpeg::classify(data, &e.to_string()))?;
    Ok((w, h))
}

/// Decode and resize every file into its slot of `out` (`paths.len() * size * size * 3` bytes,
/// NHWC), in parallel on the current rayon pool. Per-file failures come back as `Err(message)`
/// (their slot is zeroed); the rest of the batch is unaffected. A file named like a chip must have
/// its zoom's size (see [`jpeg::expected_chip_side`]). `nodata`: see [`decode_resize_into`]; each
/// decoded file's valid share comes back in its `Ok`.
pub fn decode_batch(
    paths: &[PathBuf],
    size: usize,
    out: &mut [u8],
    nodata: Option<u8>,
) -> Result<Vec<std::result::Result<Option<f32>, String>>> {
    if size == 0 || size > 4096 {
        return Err(Error::InvalidArgument(format!(
            "image size {size}: give 1..4096"
        )));
    }
    let slot = size * size * 3;
    if out.len() != paths.len() * slot {
        return Err(Error::InvalidArgument(format!(
            "batch buffer has {} bytes; {} images of {size}x{size} RGB need {}",
            out.len(),
            paths.len(),
            paths.len() * slot
        )));
    }
    // Objects in a store are downloaded together (many requests in flight), files read by each worker.
    let fetched: Vec<Option<std::io::Result<bytes::Bytes>>> =
        if paths.iter().any(|p| store::is_url(p)) {
            store::fetch_many(paths)
                .wait()
                .into_iter()
                .map(Some)
                .collect()
        } else {
            paths.iter().map(|_| None).collect()
        };
    Ok(out
        .par_chunks_mut(slot)
        .zip(paths.par_iter().zip(fetched.into_par_iter()))
        .map_init(Vec::new, |scratch, (dst, (path, fetched))| {
            let data = match fetched {
                Some(got) => got,
                None => std::fs::read(path).map(bytes::Bytes::from),
            };
            let result = data
                .map_err(|e| jpeg::read_failure(path, e))
                .and_then(|data| decode_file(path, &data, size, dst, scratch, nodata));
            if result.is_err() {
                dst.fill(0);
            }
            result
        })
        .collect())
}

/// One file of a batch into its slot; failures name the file.
fn decode_file(
    path: &Path,
    data: &[u8],
    size: usize,
    dst: &mut [u8],
    scratch: &mut Vec<u8>,
    nodata: Option<u8>,
) -> std::result::Result<Option<f32>, String> {
    decode_resize_into(
        data,
        size,
        dst,
        scratch,
        jpeg::expected_chip_side(path),
        nodata,
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: usize, h: usize) -> Vec<u8> {
        let mut rgb = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let i = (y * w + x) * 3;
                rgb[i] = (x * 255 / w) as u8;
                rgb[i + 1] = (y * 255 / h) as u8;
                rgb[i + 2] = 128;
            }
        }
        crate::jpeg::encode_rgb(&rgb, w, h, w * 3, 95).unwrap()
    }

    #[test]
    fn a_corrupt_image_does_not_spoil_the_next_one_on_the_thread() {
        let good = jpeg(512, 512);
        let mut scratch = Vec::new();
        let mut out = vec![0u8; 64 * 64 * 3];
        let mut expected = vec![0u8; 64 * 64 * 3];
        decode_resize_into(&good, 64, &mut expected, &mut scratch, None, None).unwrap();
        for cut in (100..1200).step_by(25).chain([good.len() / 2]) {
            let _ = decode_resize_into(&good[..cut], 64, &mut out, &mut scratch, None, None);
            out.fill(0);
            decode_resize_into(&good, 64, &mut out, &mut scratch, None, None).unwrap();
            assert_eq!(out, expected, "after a stream cut at {cut} bytes");
        }
    }

    #[test]
    fn picks_the_smallest_dct_scale_at_least_the_target() {
        assert_eq!(dct_scale(512, 512, 224), ScalingFactor::new(4, 8));
        assert_eq!(dct_scale(512, 512, 64), ScalingFactor::new(1, 8));
        assert_eq!(dct_scale(512, 512, 512), ScalingFactor::ONE);
        assert_eq!(dct_scale(256, 256, 300), ScalingFactor::ONE);
    }

    #[test]
    fn batch_decodes_resizes_and_reports_bad_files() {
        let dir = std::env::temp_dir().join(format!("imagesim-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("a.jpg");
        std::fs::write(&good, jpeg(512, 512)).unwrap();
        let bad = dir.join("b.jpg");
        std::fs::write(&bad, b"not a jpeg").unwrap();
        let paths = vec![good.clone(), bad, dir.join("missing.jpg"), good];
        let mut out = vec![7u8; 4 * 32 * 32 * 3];
        let results = decode_batch(&paths, 32, &mut out, None).unwrap();
        assert!(results[0].is_ok() && results[3].is_ok());
        assert!(results[1].as_ref().unwrap_err().contains("b.jpg"));
        assert!(results[2].as_ref().unwrap_err().contains("missing.jpg"));
        let slot = 32 * 32 * 3;
        assert!(out[slot..3 * slot].iter().all(|&v| v == 0));
        assert_eq!(out[..slot], out[3 * slot..]);
        // The gradient survives: red grows left to right, green top to bottom.
        let px = |x: usize, y: usize, c: usize| out[(y * 32 + x) * 3 + c] as i32;
        assert!(px(31, 16, 0) - px(0, 16, 0) > 200 && px(16, 31, 1) - px(16, 0, 1) > 200);
        assert!(decode_batch(&paths, 32, &mut out[..10], None).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A 512 px chip whose left `border` columns are no-data (black) and the rest a flat colour.
    fn bordered(border: usize, colour: [u8; 3]) -> Vec<u8> {
        let mut rgb = vec![0u8; 512 * 512 * 3];
        for y in 0..512 {
            for x in border..512 {
                rgb[(y * 512 + x) * 3..(y * 512 + x) * 3 + 3].copy_from_slice(&colour);
            }
        }
        crate::jpeg::encode_rgb(&rgb, 512, 512, 512 * 3, 90).unwrap()
    }

    #[test]
    fn nodata_is_filled_with_the_valid_mean_and_its_share_returned() {
        let colour = [120u8, 90, 60];
        let mut scratch = Vec::new();
        for (size, border) in [(64, 128), (224, 256), (64, 0)] {
            let data = bordered(border, colour);
            let mut out = vec![0u8; size * size * 3];
            let share = decode_resize_into(&data, size, &mut out, &mut scratch, None, Some(4))
                .unwrap()
                .unwrap();
            let want = 1.0 - border as f32 / 512.0;
            assert!(
                (share - want).abs() < 0.03,
                "size {size}, border {border}: valid share {share}, want {want}"
            );
            // Every pixel now looks like the data (JPEG ringing at the old edge aside): no black.
            for px in out.chunks_exact(3) {
                for (c, &v) in px.iter().enumerate() {
                    assert!(
                        (i32::from(v) - i32::from(colour[c])).abs() <= 24,
                        "size {size}, border {border}: pixel {px:?} far from {colour:?}"
                    );
                }
            }
            // Without a threshold the border stays black and no share is measured.
            let plain =
                decode_resize_into(&data, size, &mut out, &mut scratch, None, None).unwrap();
            assert_eq!(plain, None);
            if border > 0 {
                assert!(out[..3].iter().all(|&v| v <= 4));
            }
        }
    }

    #[test]
    fn an_all_nodata_chip_stays_black_with_share_zero() {
        let data = bordered(512, [0, 0, 0]);
        let mut out = vec![7u8; 32 * 32 * 3];
        let share = decode_resize_into(&data, 32, &mut out, &mut Vec::new(), None, Some(4))
            .unwrap()
            .unwrap();
        assert_eq!(share, 0.0);
        assert!(out.iter().all(|&v| v <= 4));
    }

    #[test]
    fn batch_returns_each_files_valid_share() {
        let dir = std::env::temp_dir().join(format!("imagesim-batch-nd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let half = dir.join("half.jpg");
        std::fs::write(&half, bordered(256, [200, 180, 160])).unwrap();
        let bad = dir.join("bad.jpg");
        std::fs::write(&bad, b"not a jpeg").unwrap();
        let mut out = vec![0u8; 2 * 32 * 32 * 3];
        let results = decode_batch(&[half, bad], 32, &mut out, Some(4)).unwrap();
        let share = results[0].as_ref().unwrap().unwrap();
        assert!((share - 0.5).abs() < 0.03, "{share}");
        assert!(results[1].is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
