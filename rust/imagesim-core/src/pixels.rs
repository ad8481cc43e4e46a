//! Low-level helpers on 8-bit sample planes, shared by [`crate::jpeg`] and [`crate::nodata`]
//! (this module depends on neither).

/// Smallest byte of a plane (255 for an empty one); written as a fold so it vectorises.
pub fn min_value(plane: &[u8]) -> u8 {
    plane.iter().fold(255u8, |m, &v| m.min(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_value_of_planes() {
        assert_eq!(min_value(&[]), 255);
        assert_eq!(min_value(&[7]), 7);
        let plane: Vec<u8> = (0..1000).map(|i| (200 - (i % 190)) as u8).collect();
        assert_eq!(min_value(&plane), 11);
        assert_eq!(min_value(&[255, 0, 255]), 0);
    }
}
