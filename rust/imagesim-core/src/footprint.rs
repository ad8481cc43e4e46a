//! Chip footprints in WGS84: a chip's square in its zone's UTM CRS, transformed to lon/lat and
//! written as WKB (the `geometry` column of the GeoParquet chip tables) with its bbox.
//!
//! The UTM inverse is Krüger's series to sixth order in the third flattening `n` (the algorithm of
//! PROJ's default `tmerc` and of GeographicLib): within the ARD grid's reach of a zone (a few hundred
//! kilometres off the central meridian) it agrees with PROJ to well under a micrometre.
//!
//! A z17 chip (156 m) needs only its 4 corners; bigger chips get `2^(17 - zoom)` segments per edge so
//! every segment stays ≤ 156 m (a straight UTM edge is a curve in lon/lat). A chip crossing the
//! antimeridian (zones 1 and 60 reach past ±180°) is split there into a MultiPolygon of two parts;
//! one reaching beyond ±84° latitude (UPS, outside ARD's UTM grid) is refused.
use crate::error::{Error, Result};
use crate::grid::{check_zone, Tile, SOUTH_SHIFT};
use crate::pool::run_in_pool;
use rayon::prelude::*;

/// UTM's northern (and southern) limit; beyond it lies UPS, which ARD's grid does not cover.
pub const MAX_LATITUDE: f64 = 84.0;
/// From this zoom on, 4 corners describe a chip exactly enough.
pub const FULL_CORNERS_ZOOM: u8 = 17;

const A: f64 = 6_378_137.0; // WGS84 semi-major axis
const F: f64 = 1.0 / 298.257_223_563; // WGS84 flattening
const K0: f64 = 0.9996;
const FALSE_EASTING: f64 = 500_000.0;

/// From this many chips on, a call spreads them over every core (a row group of a chip table is 4,096
/// to 16,384 rows; below this, starting threads costs more than it saves).
const PARALLEL_FROM: usize = 2048;

const WKB_POLYGON: u32 = 3;
const WKB_MULTIPOLYGON: u32 = 6;

/// One chip's footprint: WKB (little-endian, 2D), its bounds `[xmin, ymin, xmax, ymax]` and how
/// many polygons it has (2: split at the antimeridian, a MultiPolygon).
#[derive(Debug, Clone, PartialEq)]
pub struct Footprint {
    pub wkb: Vec<u8>,
    pub bbox: [f64; 4],
    pub parts: usize,
}

/// The series coefficients of the UTM inverse (WGS84), computed once.
struct Inverse {
    radius: f64,     // k0 times the rectifying radius
    beta: [f64; 6],  // ξ,η → ξ',η' (Krüger)
    delta: [f64; 6], // conformal latitude → geodetic latitude
}

impl Inverse {
    fn wgs84() -> Inverse {
        let n = F / (2.0 - F);
        let (n2, n3) = (n * n, n * n * n);
        let (n4, n5, n6) = (n2 * n2, n2 * n3, n3 * n3);
        let rectifying = A / (1.0 + n) * (1.0 + n2 / 4.0 + n4 / 64.0 + n6 / 256.0);
        Inverse {
            radius: K0 * rectifying,
            beta: [
                n / 2.0 - 2.0 * n2 / 3.0 + 37.0 * n3 / 96.0 - n4 / 360.0 - 81.0 * n5 / 512.0
                    + 96199.0 * n6 / 604_800.0,
                n2 / 48.0 + n3 / 15.0 - 437.0 * n4 / 1440.0 + 46.0 * n5 / 105.0
                    - 1_118_711.0 * n6 / 3_870_720.0,
                17.0 * n3 / 480.0 - 37.0 * n4 / 840.0 - 209.0 * n5 / 4480.0 + 5569.0 * n6 / 90720.0,
                4397.0 * n4 / 161_280.0 - 11.0 * n5 / 504.0 - 830_251.0 * n6 / 7_257_600.0,
                4583.0 * n5 / 161_280.0 - 108_847.0 * n6 / 3_991_680.0,
                20_648_693.0 * n6 / 638_668_800.0,
            ],
            delta: [
                2.0 * n - 2.0 * n2 / 3.0 - 2.0 * n3 + 116.0 * n4 / 45.0 + 26.0 * n5 / 45.0
                    - 2854.0 * n6 / 675.0,
                7.0 * n2 / 3.0 - 8.0 * n3 / 5.0 - 227.0 * n4 / 45.0
                    + 2704.0 * n5 / 315.0
                    + 2323.0 * n6 / 945.0,
                56.0 * n3 / 15.0 - 136.0 * n4 / 35.0 - 1262.0 * n5 / 105.0 + 73814.0 * n6 / 2835.0,
                4279.0 * n4 / 630.0 - 332.0 * n5 / 35.0 - 399_572.0 * n6 / 14175.0,
                4174.0 * n5 / 315.0 - 144_838.0 * n6 / 6237.0,
                601_676.0 * n6 / 22275.0,
            ],
        }
    }

    /// UTM easting/northing in `zone` (northern or southern hemisphere) to (lon, lat) in degrees.
    ///
    /// Both series are summed by Clenshaw's recurrence (the Krüger one in complex ζ = ξ + iη:
    /// ζ' = ζ − Σ βⱼ sin 2jζ), so a point costs a handful of transcendental functions, not one per term.
    fn lonlat(&self, zone: u8, south: bool, x: f64, y: f64) -> (f64, f64) {
        // the grid's southern shift is UTM south's false northing
        let northing = if south { y - SOUTH_SHIFT } else { y };
        let xi = northing / self.radius;
        let eta = (x - FALSE_EASTING) / self.radius;
        let (s2, c2) = (2.0 * xi).sin_cos();
        let (sh2, ch2) = ((2.0 * eta).sinh(), (2.0 * eta).cosh());
        // sin 2ζ and 2 cos 2ζ as complex numbers (re, im)
        let sin2 = (s2 * ch2, c2 * sh2);
        let two_cos2 = (2.0 * c2 * ch2, -2.0 * s2 * sh2);
        let (mut b1, mut b2) = ((0.0, 0.0), (0.0, 0.0));
        for &beta in self.beta.iter().rev() {
            let b0 = (
                beta + two_cos2.0 * b1.0 - two_cos2.1 * b1.1 - b2.0,
                two_cos2.0 * b1.1 + two_cos2.1 * b1.0 - b2.1,
            );
            b2 = b1;
            b1 = b0;
        }
        let xi1 = xi - (sin2.0 * b1.0 - sin2.1 * b1.1);
        let eta1 = eta - (sin2.0 * b1.1 + sin2.1 * b1.0);
        let (sin_xi1, cos_xi1) = xi1.sin_cos();
        let chi = (sin_xi1 / eta1.cosh()).asin();
        let (s2chi, c2chi) = (2.0 * chi).sin_cos();
        let (mut d1, mut d2) = (0.0, 0.0);
        for &delta in self.delta.iter().rev() {
            let d0 = delta + 2.0 * c2chi * d1 - d2;
            d2 = d1;
            d1 = d0;
        }
        let lat = chi + s2chi * d1;
        let central = f64::from(zone) * 6.0 - 183.0;
        let lon = central + eta1.sinh().atan2(cos_xi1).to_degrees();
        // as PROJ gives it: -180..180 (zones 1 and 60 reach past the antimeridian)
        let lon = if lon > 180.0 {
            lon - 360.0
        } else if lon < -180.0 {
            lon + 360.0
        } else {
            lon
        };
        (lon, lat.to_degrees())
    }
}

fn inverse() -> &'static Inverse {
    static INVERSE: std::sync::OnceLock<Inverse> = std::sync::OnceLock::new();
    INVERSE.get_or_init(Inverse::wgs84)
}

/// UTM (WGS84) easting/northing of `zone` to (lon, lat) in degrees; `south`: the southern
/// hemisphere's false northing (EPSG:327zz).
pub fn utm_to_lonlat(zone: u8, south: bool, x: f64, y: f64) -> (f64, f64) {
    inverse().lonlat(zone, south, x, y)
}

/// Why a chip has no footprint.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// A bad zone or quadkey (the grid's words).
    Grid(String),
    /// Beyond ±84° latitude: EPSG code of its CRS.
    Polar(u32),
}

/// The closed counter-clockwise ring of a chip's square in lon/lat, starting at its south-west corner,
/// `2^(17 - zoom)` segments per edge.
fn ring(zone: u8, tile: &Tile) -> Vec<(f64, f64)> {
    let b = tile.bounds();
    let segments = 1usize << FULL_CORNERS_ZOOM.saturating_sub(tile.z);
    let (w, h) = (b.east - b.west, b.north - b.south);
    let step = |i: usize| i as f64 / segments as f64;
    let mut unit = Vec::with_capacity(4 * segments + 1);
    unit.extend((0..segments).map(|i| (step(i), 0.0)));
    unit.extend((0..segments).map(|i| (1.0, step(i))));
    unit.extend((0..segments).map(|i| (1.0 - step(i), 1.0)));
    unit.extend((0..segments).map(|i| (0.0, 1.0 - step(i))));
    unit.push((0.0, 0.0));
    let south = tile.is_south();
    unit.into_iter()
        .map(|(fx, fy)| utm_to_lonlat(zone, south, b.west + w * fx, b.south + h * fy))
        .collect()
}

/// The footprint of the chip `quadkey` in `zone`.
pub fn footprint(zone: u8, quadkey: &str) -> std::result::Result<Footprint, Refused> {
    let grid_error = |e: Error| Refused::Grid(e.to_string());
    let tile = Tile::from_quadkey(quadkey).map_err(grid_error)?;
    check_zone(zone).map_err(grid_error)?;
    let points = ring(zone, &tile);
    if points
        .iter()
        .any(|&(lon, lat)| !lon.is_finite() || !lat.is_finite() || lat.abs() > MAX_LATITUDE)
    {
        return Err(Refused::Polar(tile.epsg(zone).map_err(grid_error)?));
    }
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(x, _)| {
            (lo.min(x), hi.max(x))
        });
    let parts = if hi - lo > 180.0 {
        split_antimeridian(&points)
    } else {
        vec![points]
    };
    Ok(Footprint {
        wkb: wkb(&parts),
        bbox: bounds(&parts),
        parts: parts.len(),
    })
}

/// Footprints of many chips (`names` name a refused chip in the error; by default `Z{zone}-{quadkey}`).
/// A bad zone or quadkey, or a chip beyond ±84° latitude, is a grid error naming the first such chip.
pub fn footprints(
    zones: &[i64],
    quadkeys: &[&str],
    names: Option<&[&str]>,
) -> Result<Vec<Footprint>> {
    if zones.len() != quadkeys.len() {
        return Err(Error::Grid(format!(
            "{} zones for {} quadkeys",
            zones.len(),
            quadkeys.len()
        )));
    }
    if let Some(n) = names.filter(|n| n.len() != quadkeys.len()) {
        return Err(Error::InvalidArgument(format!(
            "{} names for {} quadkeys",
            n.len(),
            quadkeys.len()
        )));
    }
    let label = |i: usize| match names {
        Some(n) => n[i].to_string(),
        None => format!("Z{}-{}", zones[i], quadkeys[i]),
    };
    let each = |(&zone, &quadkey): (&i64, &&str)| checked(zone, quadkey);
    let found: Vec<std::result::Result<Footprint, Refused>> = if zones.len() >= PARALLEL_FROM {
        run_in_pool(0, || zones.par_iter().zip(quadkeys).map(each).collect())?
    } else {
        zones.iter().zip(quadkeys).map(each).collect()
    };
    let first_refused = found
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)));
    match first_refused {
        None => Ok(found.into_iter().flatten().collect()),
        Some((i, Refused::Grid(msg))) => {
            Err(Error::Grid(format!("{}: no footprint ({msg})", label(i))))
        }
        Some((i, Refused::Polar(code))) => {
            // how many chips of that CRS share the fate, so one message covers the run
            let refused = found[i..]
                .iter()
                .filter(|r| matches!(r, Err(Refused::Polar(c)) if c == code))
                .count();
            Err(Error::Grid(format!(
                "{}: reaches beyond ±{MAX_LATITUDE}° latitude (polar, outside ARD's UTM grid); \
                 {refused} chip(s) of EPSG:{code} refused",
                label(i)
            )))
        }
    }
}

/// [`footprint`] of a zone given as any integer (a table's column).
fn checked(zone: i64, quadkey: &str) -> std::result::Result<Footprint, Refused> {
    let zone = u8::try_from(zone)
        .map_err(|_| Refused::Grid(format!("UTM zone {zone} is outside 1..60")))?;
    footprint(zone, quadkey)
}

/// A closed ring whose longitudes jump across ±180°, split there into the part from -180° on and the
/// part up to 180° (in that order, as GeoJSON writers do), each a closed ring. A part with no area is
/// left out.
fn split_antimeridian(ring: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    // longitudes made continuous (0..360), then clipped on either side of 180°
    let shifted: Vec<(f64, f64)> = ring
        .iter()
        .map(|&(x, y)| (if x < 0.0 { x + 360.0 } else { x }, y))
        .collect();
    let up_to = clip_at_180(&shifted, true);
    let from: Vec<(f64, f64)> = clip_at_180(&shifted, false)
        .into_iter()
        .map(|(x, y)| (x - 360.0, y))
        .collect();
    [from, up_to]
        .into_iter()
        .filter(|part| ring_area(part).abs() > 0.0)
        .collect()
}

/// Sutherland–Hodgman clipping of a closed ring by the line x = 180 (keeping x ≤ 180 when `below`):
/// a chip's ring is convex, so one pass gives the exact part; its crossings are at exactly 180.
fn clip_at_180(ring: &[(f64, f64)], below: bool) -> Vec<(f64, f64)> {
    let inside = |p: (f64, f64)| if below { p.0 <= 180.0 } else { p.0 >= 180.0 };
    let open = &ring[..ring.len().saturating_sub(1)]; // the closing point repeats the first
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(open.len() + 3);
    for (k, &cur) in open.iter().enumerate() {
        let prev = open[(k + open.len() - 1) % open.len()];
        let crossing = || {
            let t = (180.0 - prev.0) / (cur.0 - prev.0);
            (180.0, prev.1 + t * (cur.1 - prev.1))
        };
        match (inside(prev), inside(cur)) {
            (true, true) => out.push(cur),
            (true, false) => out.push(crossing()),
            (false, true) => {
                out.push(crossing());
                out.push(cur);
            }
            (false, false) => {}
        }
    }
    out.dedup();
    if out.first() != out.last() {
        if let Some(&first) = out.first() {
            out.push(first);
        }
    }
    out
}

/// Twice the signed area of a closed ring (positive: counter-clockwise).
fn ring_area(ring: &[(f64, f64)]) -> f64 {
    ring.windows(2)
        .map(|w| w[0].0 * w[1].1 - w[1].0 * w[0].1)
        .sum()
}

fn bounds(parts: &[Vec<(f64, f64)>]) -> [f64; 4] {
    parts.iter().flatten().fold(
        [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ],
        |[x0, y0, x1, y1], &(x, y)| [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
    )
}

/// Little-endian 2D WKB: a Polygon of one ring, or a MultiPolygon of one-ring polygons.
fn wkb(parts: &[Vec<(f64, f64)>]) -> Vec<u8> {
    fn polygon(out: &mut Vec<u8>, ring: &[(f64, f64)]) {
        out.push(1);
        out.extend_from_slice(&WKB_POLYGON.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(ring.len() as u32).to_le_bytes());
        for &(x, y) in ring {
            out.extend_from_slice(&x.to_le_bytes());
            out.extend_from_slice(&y.to_le_bytes());
        }
    }
    let points: usize = parts.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(9 + parts.len() * 13 + points * 16);
    if let [only] = parts {
        polygon(&mut out, only);
    } else {
        out.push(1);
        out.extend_from_slice(&WKB_MULTIPOLYGON.to_le_bytes());
        out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
        for part in parts {
            polygon(&mut out, part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // zone 33, a z17 chip at 15°E, 30.85°N (tests/test_geoparquet.py's NORTH), corner from PROJ
    const NORTH: &str = "03131313131313131";

    #[test]
    fn central_meridian_and_equator() {
        let (lon, lat) = utm_to_lonlat(33, false, 500_000.0, 0.0);
        assert!((lon - 15.0).abs() < 1e-12 && lat.abs() < 1e-12);
        let (lon, lat) = utm_to_lonlat(33, true, 500_000.0, 10_000_000.0);
        assert!((lon - 15.0).abs() < 1e-12 && lat.abs() < 1e-12);
    }

    #[test]
    fn a_corner_agrees_with_proj() {
        let f = footprint(33, NORTH).unwrap();
        let x = f64::from_le_bytes(f.wkb[13..21].try_into().unwrap());
        let y = f64::from_le_bytes(f.wkb[21..29].try_into().unwrap());
        assert!((x - 14.998_365_798_684_524).abs() < 1e-9, "{x}");
        assert!((y - 30.852_733_102_716_91).abs() < 1e-9, "{y}");
        assert_eq!(f.parts, 1);
        assert_eq!(f.wkb.len(), 9 + 4 + 5 * 16);
    }

    #[test]
    fn big_chips_are_densified() {
        let f = footprint(33, &NORTH[..12]).unwrap();
        assert_eq!(f.wkb.len(), 9 + 4 + (4 * 32 + 1) * 16);
    }

    #[test]
    fn refusals_name_the_chip() {
        let err = footprints(&[61], &[NORTH], None).unwrap_err().to_string();
        assert!(
            err.starts_with("Z61-03131313131313131: no footprint (UTM zone 61"),
            "{err}"
        );
        let err = footprints(&[33], &["0314"], Some(&["x.jpg"])).unwrap_err();
        assert!(err.to_string().starts_with("x.jpg: no footprint"), "{err}");
        let err = footprints(&[33], &[NORTH], Some(&[])).unwrap_err();
        assert_eq!(err.to_string(), "0 names for 1 quadkeys");
    }

    #[test]
    fn clipping_a_square_across_180() {
        let square = vec![
            (179.0, 0.0),
            (181.0, 0.0),
            (181.0, 1.0),
            (179.0, 1.0),
            (179.0, 0.0),
        ];
        let parts = split_antimeridian(&square);
        assert_eq!(parts.len(), 2);
        assert_eq!(bounds(&parts[..1]), [-180.0, 0.0, -179.0, 1.0]);
        assert_eq!(bounds(&parts[1..]), [179.0, 0.0, 180.0, 1.0]);
        assert!(parts
            .iter()
            .all(|p| ring_area(p) > 0.0 && p.first() == p.last()));
    }
}
