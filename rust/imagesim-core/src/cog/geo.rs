//! GeoTIFF georeferencing: geotransform, EPSG code and GDAL nodata, read the way GDAL reads them.
//!
//! Georeferencing is metadata: a damaged GeoTIFF tag makes the field `None` (GDAL warns and goes
//! on), it never fails the open.
use std::path::Path;

use super::ifd::{Ifd, TiffFile};
use super::GeoInfo;

const MODEL_PIXEL_SCALE: u16 = 33550;
const MODEL_TIEPOINT: u16 = 33922;
const MODEL_TRANSFORMATION: u16 = 34264;
const GEO_KEY_DIRECTORY: u16 = 34735;
const GDAL_NODATA: u16 = 42113;

const GT_RASTER_TYPE_KEY: u16 = 1025;
const GEOGRAPHIC_TYPE_KEY: u16 = 2048;
const PROJECTED_CS_TYPE_KEY: u16 = 3072;
const RASTER_PIXEL_IS_POINT: u16 = 2;
const USER_DEFINED: u16 = 32767;

/// Value of a SHORT GeoKey stored inline in the key directory.
fn geo_key(keys: &[u64], id: u16) -> Option<u16> {
    // Header: version, revision, minor, number of keys; then 4 shorts per key.
    let n = *keys.get(3)? as usize;
    keys.get(4..)?
        .chunks_exact(4)
        .take(n)
        .find(|k| k[0] == u64::from(id) && k[1] == 0)
        .and_then(|k| u16::try_from(k[3]).ok())
}

pub fn read_geo(tf: &TiffFile, path: &Path, ifd: &Ifd) -> GeoInfo {
    let keys = tf
        .uints(path, ifd, GEO_KEY_DIRECTORY)
        .ok()
        .flatten()
        .unwrap_or_default();
    let epsg = [PROJECTED_CS_TYPE_KEY, GEOGRAPHIC_TYPE_KEY]
        .iter()
        .filter_map(|&k| geo_key(&keys, k))
        .find(|&c| c != 0 && c != USER_DEFINED)
        .map(u32::from);

    let mut geotransform = None;
    if let Some(m) = tf
        .doubles(path, ifd, MODEL_TRANSFORMATION)
        .ok()
        .flatten()
        .filter(|m| m.len() >= 16)
    {
        // 4x4 row-major matrix: x = m0*col + m1*row + m3, y = m4*col + m5*row + m7.
        geotransform = Some([m[3], m[0], m[1], m[7], m[4], m[5]]);
    } else if let (Some(tp), Some(sc)) = (
        tf.doubles(path, ifd, MODEL_TIEPOINT)
            .ok()
            .flatten()
            .filter(|t| t.len() >= 6),
        tf.doubles(path, ifd, MODEL_PIXEL_SCALE)
            .ok()
            .flatten()
            .filter(|s| s.len() >= 2),
    ) {
        // Tiepoint (i, j, k, x, y, z): raster (i, j) sits at model (x, y).
        let (i, j, x, y) = (tp[0], tp[1], tp[3], tp[4]);
        geotransform = Some([x - i * sc[0], sc[0], 0.0, y + j * sc[1], 0.0, -sc[1]]);
    }
    // PixelIsPoint: GDAL (GTIFF_POINT_GEO_IGNORE=NO, the default) moves the origin half a
    // pixel up-left so the transform always describes pixel corners.
    if let Some(gt) = geotransform.as_mut() {
        if geo_key(&keys, GT_RASTER_TYPE_KEY) == Some(RASTER_PIXEL_IS_POINT) {
            gt[0] -= 0.5 * gt[1] + 0.5 * gt[2];
            gt[3] -= 0.5 * gt[4] + 0.5 * gt[5];
        }
    }

    let nodata = tf
        .bytes(path, ifd, GDAL_NODATA)
        .ok()
        .flatten()
        .and_then(|b| {
            let s = String::from_utf8_lossy(&b);
            s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .parse::<f64>()
                .ok()
        });

    GeoInfo {
        geotransform,
        epsg,
        nodata,
    }
}
