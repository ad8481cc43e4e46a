//! Low-level helpers on 8-bit sample planes, shared by [`crate::jpeg`], [`crate::nodata`] and
//! [`crate::batch`] (this module depends on none of them).

/// Smallest byte of a plane (255 for an empty one); written as a fold so it vectorises.
pub fn min_value(plane: &[u8]) -> u8 {
    plane.iter().fold(255u8, |m, &v| m.min(v))
}

/// The no-data rule of `nodata-index`: a pixel is no-data when each of its first three bands is
/// <= `threshold`.
#[inline]
pub fn is_nodata(px: &[u8], threshold: u8) -> bool {
    px[0] <= threshold && px[1] <= threshold && px[2] <= threshold
}

/// Neutralise the no-data pixels of an interleaved RGB image (3 bytes a pixel): each is replaced
/// by the mean of the valid pixels, band by band (rounded), so that a model sees the chip's data
/// and a flat patch rather than a black border. Returns the valid share of the pixels (0 for an
/// empty image). An image without a valid pixel is left as it is (share 0); one without a no-data
/// pixel is not written (and, when no byte is as dark as the threshold, read by one vectorised min).
pub fn fill_nodata_with_valid_mean(rgb: &mut [u8], threshold: u8) -> f32 {
    let n = rgb.len() / 3;
    if n == 0 {
        return 0.0;
    }
    // Most chips have no byte that dark: a vectorised min proves them all valid without a pixel loop.
    if min_value(rgb) > threshold {
        return 1.0;
    }
    // One pass sums the valid pixels; u64 sums cannot overflow (at most 2^26 pixels of 255).
    let (mut sum, mut valid) = ([0u64; 3], 0u64);
    for px in rgb.chunks_exact(3) {
        if !is_nodata(px, threshold) {
            sum[0] += u64::from(px[0]);
            sum[1] += u64::from(px[1]);
            sum[2] += u64::from(px[2]);
            valid += 1;
        }
    }
    if valid == 0 || valid == n as u64 {
        return if valid == 0 { 0.0 } else { 1.0 };
    }
    let mean = sum.map(|s| ((s + valid / 2) / valid) as u8);
    for px in rgb.chunks_exact_mut(3) {
        if is_nodata(px, threshold) {
            px.copy_from_slice(&mean);
        }
    }
    (valid as f64 / n as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_nodata_with_the_valid_mean() {
        // 4 pixels: two no-data (one exactly at the threshold), two valid.
        let mut rgb = vec![0, 0, 0, 10, 20, 30, 3, 4, 2, 30, 40, 51];
        let share = fill_nodata_with_valid_mean(&mut rgb, 4);
        assert_eq!(share, 0.5);
        assert_eq!(rgb, vec![20, 30, 41, 10, 20, 30, 20, 30, 41, 30, 40, 51]);
        // A pixel with one band above the threshold is valid (the rule needs every band dark).
        let mut rgb = vec![0, 0, 5, 0, 0, 0];
        assert_eq!(fill_nodata_with_valid_mean(&mut rgb, 4), 0.5);
        assert_eq!(rgb, vec![0, 0, 5, 0, 0, 5]);
    }

    #[test]
    fn fill_leaves_all_valid_and_all_nodata_images_alone() {
        let mut all = vec![9u8; 30];
        assert_eq!(fill_nodata_with_valid_mean(&mut all, 4), 1.0);
        assert!(all.iter().all(|&v| v == 9));
        let mut none = vec![1u8; 30];
        assert_eq!(fill_nodata_with_valid_mean(&mut none, 4), 0.0);
        assert!(none.iter().all(|&v| v == 1));
        assert_eq!(fill_nodata_with_valid_mean(&mut [], 4), 0.0);
        // threshold 0: only exact black is no-data
        let mut rgb = vec![0, 0, 0, 1, 1, 1, 3, 3, 3];
        assert!((fill_nodata_with_valid_mean(&mut rgb, 0) - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(&rgb[..3], &[2, 2, 2]);
    }

    #[test]
    fn min_value_of_planes() {
        assert_eq!(min_value(&[]), 255);
        assert_eq!(min_value(&[7]), 7);
        let plane: Vec<u8> = (0..1000).map(|i| (200 - (i % 190)) as u8).collect();
        assert_eq!(min_value(&plane), 11);
        assert_eq!(min_value(&[255, 0, 255]), 0);
    }
}
