//! The Maxar ARD grid: a quadtree per UTM zone over a fixed square in zone metres
//! (DESIGN.md §2). Quadkey digits are Bing-style, most significant first.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// West edge of the quadtree square, in zone metres.
pub const ORIGIN_X: f64 = -9_740_000.0;
/// North edge of the quadtree square, in zone metres.
pub const ORIGIN_Y: f64 = 10_240_000.0;
/// Side of the quadtree square (zoom 0 tile), metres.
pub const EXTENT: f64 = 20_480_000.0;
/// False northing applied to southern-hemisphere tiles (EPSG:327zz).
pub const SOUTH_SHIFT: f64 = 10_000_000.0;
/// Zoom of an ARD cell (one COG per cell and acquisition).
pub const CELL_ZOOM: u8 = 12;
/// Pixels across a cell's interior.
pub const CELL_PIXELS: u32 = 16_384;
/// Apron of extra pixels around the cell in each COG.
pub const APRON: u32 = 512;
/// Pixels across a whole cell COG (interior + two aprons).
pub const COG_PIXELS: u32 = CELL_PIXELS + 2 * APRON;
/// Ground sample distance of ARD visual COGs, metres.
pub const PIXEL_SIZE: f64 = 5_000.0 / CELL_PIXELS as f64;
/// Deepest zoom we accept (tile coordinates stay in u32).
pub const MAX_ZOOM: u8 = 30;

/// A tile of the ARD quadtree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tile {
    pub x: u32,
    pub y: u32,
    pub z: u8,
}

/// Tile bounds in zone metres (after the southern shift, so they are real coordinates).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub west: f64,
    pub south: f64,
    pub east: f64,
    pub north: f64,
}

/// A pixel window inside a COG: offset and size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub col_off: u32,
    pub row_off: u32,
    pub width: u32,
    pub height: u32,
}

impl Tile {
    pub fn new(x: u32, y: u32, z: u8) -> Result<Tile> {
        if z > MAX_ZOOM {
            return Err(Error::Grid(format!(
                "zoom {z} is above the maximum {MAX_ZOOM}"
            )));
        }
        let n = 1u64 << z;
        if u64::from(x) >= n || u64::from(y) >= n {
            return Err(Error::Grid(format!(
                "tile ({x}, {y}) is outside the {n}x{n} grid at zoom {z}"
            )));
        }
        Ok(Tile { x, y, z })
    }

    pub fn from_quadkey(quadkey: &str) -> Result<Tile> {
        if quadkey.len() > MAX_ZOOM as usize {
            return Err(Error::Grid(format!(
                "quadkey {quadkey:?} is longer than {MAX_ZOOM} digits"
            )));
        }
        let (mut x, mut y) = (0u32, 0u32);
        for ch in quadkey.chars() {
            let digit = match ch {
                '0'..='3' => ch as u32 - '0' as u32,
                _ => {
                    return Err(Error::Grid(format!(
                        "quadkey {quadkey:?} has digit {ch:?}; only 0-3 are allowed"
                    )))
                }
            };
            x = (x << 1) | (digit & 1);
            y = (y << 1) | (digit >> 1);
        }
        Ok(Tile {
            x,
            y,
            z: quadkey.len() as u8,
        })
    }

    pub fn quadkey(&self) -> String {
        (1..=self.z)
            .rev()
            .map(|i| {
                let mask = 1u32 << (i - 1);
                let digit = u8::from(self.x & mask != 0) + 2 * u8::from(self.y & mask != 0);
                char::from(b'0' + digit)
            })
            .collect()
    }

    /// Southern tiles are those in the lower half of the quadtree (quadkey starting 2 or 3).
    pub fn is_south(&self) -> bool {
        self.z >= 1 && (self.y >> (self.z - 1)) & 1 == 1
    }

    /// Side length in metres.
    pub fn side(&self) -> f64 {
        EXTENT / (1u64 << self.z) as f64
    }

    pub fn bounds(&self) -> Bounds {
        let side = self.side();
        let shift = if self.is_south() { SOUTH_SHIFT } else { 0.0 };
        let west = ORIGIN_X + f64::from(self.x) * side;
        let north = ORIGIN_Y - f64::from(self.y) * side + shift;
        Bounds {
            west,
            south: north - side,
            east: west + side,
            north,
        }
    }

    /// The ancestor at `zoom` (zoom <= self.z).
    pub fn parent_at(&self, zoom: u8) -> Result<Tile> {
        if zoom > self.z {
            return Err(Error::Grid(format!(
                "zoom {zoom} is deeper than the tile's zoom {}",
                self.z
            )));
        }
        let shift = self.z - zoom;
        Ok(Tile {
            x: self.x >> shift,
            y: self.y >> shift,
            z: zoom,
        })
    }

    /// All descendants at `zoom`, row-major (north to south, west to east), matching the order
    /// of the tiles inside a COG.
    pub fn children_at(&self, zoom: u8) -> Result<Vec<Tile>> {
        if zoom < self.z || zoom > MAX_ZOOM {
            return Err(Error::Grid(format!(
                "children zoom {zoom} must be in {}..={MAX_ZOOM}",
                self.z
            )));
        }
        let shift = zoom - self.z;
        if shift > 12 {
            return Err(Error::Grid(format!(
                "children {shift} levels down would be {} tiles; at most 12 levels",
                1u64 << (2 * shift)
            )));
        }
        let n = 1u32 << shift;
        let (x0, y0) = (self.x << shift, self.y << shift);
        Ok((0..n)
            .flat_map(|dy| {
                (0..n).map(move |dx| Tile {
                    x: x0 + dx,
                    y: y0 + dy,
                    z: zoom,
                })
            })
            .collect())
    }

    /// EPSG code of the tile's CRS in `zone`: WGS 84 / UTM north (326zz) or south (327zz).
    pub fn epsg(&self, zone: u8) -> Result<u32> {
        check_zone(zone)?;
        Ok(if self.is_south() { 32700 } else { 32600 } + u32::from(zone))
    }
}

pub fn check_zone(zone: u8) -> Result<u8> {
    if (1..=60).contains(&zone) {
        Ok(zone)
    } else {
        Err(Error::Grid(format!("UTM zone {zone} is outside 1..60")))
    }
}

/// The pixel window of a chip tile inside its level-12 cell COG (apron included).
pub fn chip_window(chip: &Tile) -> Result<Window> {
    if chip.z < CELL_ZOOM {
        return Err(Error::Grid(format!(
            "chip zoom {} is below the cell zoom {CELL_ZOOM}",
            chip.z
        )));
    }
    let levels = chip.z - CELL_ZOOM;
    if levels > 14 {
        return Err(Error::Grid(format!(
            "chip zoom {} would make chips smaller than one pixel",
            chip.z
        )));
    }
    let cell = chip.parent_at(CELL_ZOOM)?;
    let size = CELL_PIXELS >> levels;
    let col = chip.x - (cell.x << levels);
    let row = chip.y - (cell.y << levels);
    Ok(Window {
        col_off: APRON + col * size,
        row_off: APRON + row * size,
        width: size,
        height: size,
    })
}

/// GDAL-order geotransform of a cell COG: (x0, dx, 0, y0, 0, -dy), apron included.
pub fn cell_geotransform(cell: &Tile) -> Result<[f64; 6]> {
    if cell.z != CELL_ZOOM {
        return Err(Error::Grid(format!(
            "cell quadkey must have {CELL_ZOOM} digits, got {}",
            cell.z
        )));
    }
    let b = cell.bounds();
    let apron = f64::from(APRON) * PIXEL_SIZE;
    Ok([
        b.west - apron,
        PIXEL_SIZE,
        0.0,
        b.north + apron,
        0.0,
        -PIXEL_SIZE,
    ])
}

/// A parsed chip file name: `Z<zone>-<quadkey>_<catalog-id>.jpg`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChipName {
    pub zone: u8,
    pub quadkey: String,
    pub catalog_id: String,
}

impl ChipName {
    pub fn new(zone: u8, quadkey: &str, catalog_id: &str) -> Result<ChipName> {
        check_zone(zone)?;
        let tile = Tile::from_quadkey(quadkey)?;
        if tile.z < CELL_ZOOM {
            return Err(Error::Grid(format!(
                "chip quadkey {quadkey:?} has fewer than {CELL_ZOOM} digits"
            )));
        }
        check_catalog_id(catalog_id)?;
        Ok(ChipName {
            zone,
            quadkey: quadkey.to_string(),
            catalog_id: catalog_id.to_string(),
        })
    }

    pub fn parse(name: &str) -> Result<ChipName> {
        let bad = |why: &str| {
            Error::Grid(format!(
                "chip name {name:?} {why}; expected Z<zone>-<quadkey>_<catalog-id>.jpg"
            ))
        };
        let stem = name
            .strip_suffix(".jpg")
            .ok_or_else(|| bad("does not end in .jpg"))?;
        let rest = stem
            .strip_prefix('Z')
            .ok_or_else(|| bad("does not start with Z"))?;
        let (zone, rest) = rest
            .split_once('-')
            .ok_or_else(|| bad("has no '-' after the zone"))?;
        let (quadkey, catalog_id) = rest
            .split_once('_')
            .ok_or_else(|| bad("has no '_' before the catalog id"))?;
        if zone.is_empty() || zone.len() > 2 || !zone.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("has a zone that is not a 1-2 digit number"));
        }
        ChipName::new(
            zone.parse().map_err(|_| bad("has a bad zone"))?,
            quadkey,
            catalog_id,
        )
    }

    pub fn file_name(&self) -> String {
        format!("Z{}-{}_{}.jpg", self.zone, self.quadkey, self.catalog_id)
    }

    pub fn tile(&self) -> Tile {
        Tile::from_quadkey(&self.quadkey).expect("validated in ChipName::new")
    }

    pub fn cell_quadkey(&self) -> &str {
        &self.quadkey[..CELL_ZOOM as usize]
    }
}

fn check_catalog_id(catalog_id: &str) -> Result<()> {
    let ok = !catalog_id.is_empty()
        && catalog_id.len() <= 64
        && catalog_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Grid(format!(
            "catalog id {catalog_id:?} must be 1-64 letters, digits or '-'"
        )))
    }
}

/// Find the `-visual.tif` a chip was cut from: `<root>/<zone>/<qk12>/<date>/<catid>-visual.tif`.
///
/// `chip` is a chip file name (`Z33-…_<catid>.jpg`), the same without `.jpg`, or a path to a chip
/// (`/x/chips/33/Z33-…_<catid>.jpg`: only its file name counts). `ard_root` is the delivery root or
/// one zone's folder of it (`ard/33`, as the original tool took it): a root whose own name is the
/// chip's zone is searched as that zone folder too. Zone folders may be written with or without a
/// leading zero.
pub fn cog_path_from_chip(chip: &str, ard_root: &Path) -> Result<PathBuf> {
    let name = Path::new(chip)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(chip);
    // A catalog id holds no '.', so a name without one is a chip name without its `.jpg`.
    let name = if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.jpg")
    };
    let parsed = ChipName::parse(&name)?;
    let file = format!("{}-visual.tif", parsed.catalog_id);
    let zone_names = [parsed.zone.to_string(), format!("{:02}", parsed.zone)];
    let mut zone_dirs: Vec<PathBuf> = zone_names
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|z| ard_root.join(z))
        .collect();
    let root_is_zone = ard_root
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| zone_names.iter().any(|z| z == n));
    if root_is_zone {
        zone_dirs.push(ard_root.to_path_buf());
    }
    for zone_dir in zone_dirs {
        let cell_dir = zone_dir.join(parsed.cell_quadkey());
        let Ok(entries) = std::fs::read_dir(&cell_dir) else {
            continue;
        };
        let mut dates: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dates.sort();
        if let Some(found) = dates
            .into_iter()
            .map(|d| d.join(&file))
            .find(|p| p.is_file())
        {
            return Ok(found);
        }
    }
    let zone_dir = if root_is_zone {
        ard_root.to_path_buf()
    } else {
        ard_root.join(parsed.zone.to_string())
    };
    Err(Error::NotFound {
        path: zone_dir
            .join(parsed.cell_quadkey())
            .join("<date>")
            .join(file),
        msg: format!("no COG found for chip {chip}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_check_values() {
        let b = Tile::from_quadkey("120020223032").unwrap().bounds();
        assert_eq!(
            (b.west, b.east, b.south, b.north),
            (550_000.0, 555_000.0, 4_180_000.0, 4_185_000.0)
        );
        let t = Tile::from_quadkey("300000000000").unwrap();
        assert!(t.is_south());
        let b = t.bounds();
        assert_eq!(
            (b.west, b.east, b.south, b.north),
            (500_000.0, 505_000.0, 9_995_000.0, 10_000_000.0)
        );
        assert_eq!(t.epsg(33).unwrap(), 32733);
        assert_eq!(
            Tile::from_quadkey("120020223032")
                .unwrap()
                .epsg(10)
                .unwrap(),
            32610
        );
    }

    #[test]
    fn tile_sides() {
        assert_eq!(Tile::from_quadkey("120020223032").unwrap().side(), 5_000.0);
        assert_eq!(
            Tile::from_quadkey("12002022303201230").unwrap().side(),
            156.25
        );
    }

    #[test]
    fn quadkey_round_trip() {
        for qk in [
            "",
            "0",
            "3",
            "120020223032",
            "30000000000012303",
            "0123012301230123012301",
        ] {
            assert_eq!(Tile::from_quadkey(qk).unwrap().quadkey(), qk);
        }
        for z in 0..=20u8 {
            let n = 1u32 << z;
            for (x, y) in [
                (0, 0),
                (n - 1, 0),
                (0, n - 1),
                (n / 3, n / 2),
                (n - 1, n - 1),
            ] {
                let t = Tile::new(x, y, z).unwrap();
                assert_eq!(Tile::from_quadkey(&t.quadkey()).unwrap(), t);
            }
        }
    }

    #[test]
    fn bad_quadkeys() {
        assert!(Tile::from_quadkey("1204").is_err());
        assert!(Tile::from_quadkey("12a").is_err());
        assert!(Tile::from_quadkey(&"1".repeat(31)).is_err());
        assert!(Tile::new(4, 0, 2).is_err());
    }

    #[test]
    fn windows() {
        let cell = Tile::from_quadkey("120020223032").unwrap();
        let kids = cell.children_at(17).unwrap();
        assert_eq!(kids.len(), 1024);
        assert_eq!(
            chip_window(&kids[0]).unwrap(),
            Window {
                col_off: 512,
                row_off: 512,
                width: 512,
                height: 512
            }
        );
        assert_eq!(
            chip_window(&kids[33]).unwrap(),
            Window {
                col_off: 1024,
                row_off: 1024,
                width: 512,
                height: 512
            }
        );
        assert_eq!(chip_window(&kids[1023]).unwrap().col_off, 512 + 31 * 512);
        let z18 = Tile::from_quadkey("120020223032000001").unwrap();
        assert_eq!(
            chip_window(&z18).unwrap(),
            Window {
                col_off: 512 + 256,
                row_off: 512,
                width: 256,
                height: 256
            }
        );
        assert_eq!(
            chip_window(&cell).unwrap(),
            Window {
                col_off: 512,
                row_off: 512,
                width: 16384,
                height: 16384
            }
        );
        assert!(chip_window(&Tile::from_quadkey("12002022303").unwrap()).is_err());
        // Every child lies inside its parent, in quadkey terms too.
        for k in &kids {
            assert!(k.quadkey().starts_with("120020223032"));
            assert_eq!(k.parent_at(12).unwrap(), cell);
        }
    }

    #[test]
    fn geotransform_matches_bounds() {
        let cell = Tile::from_quadkey("120020223032").unwrap();
        let gt = cell_geotransform(&cell).unwrap();
        assert_eq!(gt[0] + 512.0 * gt[1], 550_000.0);
        assert_eq!(gt[3] + 512.0 * gt[5], 4_185_000.0);
        assert_eq!(
            gt[0] + f64::from(COG_PIXELS) * gt[1],
            555_000.0 + 512.0 * PIXEL_SIZE
        );
    }

    #[test]
    fn chip_names() {
        let c = ChipName::parse("Z33-12002022303213012_103001005D31F500.jpg").unwrap();
        assert_eq!(c.zone, 33);
        assert_eq!(c.cell_quadkey(), "120020223032");
        assert_eq!(c.file_name(), "Z33-12002022303213012_103001005D31F500.jpg");
        let c = ChipName::parse("Z7-120020223032130_ABC.jpg").unwrap();
        assert_eq!(c.zone, 7);
        for bad in [
            "Z61-12002022303213012_A.jpg",
            "Z0-12002022303213012_A.jpg",
            "Z33-1200202230_A.jpg",
            "Z33-12002022303213012_A.png",
            "33-12002022303213012_A.jpg",
            "Z33-12002022303213012_.jpg",
            "Z33-12002022303213012_../x.jpg",
            "Z333-12002022303213012_A.jpg",
        ] {
            assert!(ChipName::parse(bad).is_err(), "{bad}");
        }
    }

    /// Names, zones and quadkeys take ASCII digits only: `char::is_numeric` (and Python's `\d`)
    /// would also take full-width "１０", Arabic-Indic "١٠", Devanagari "१०" or superscript "²".
    #[test]
    fn non_ascii_digits_are_rejected() {
        for bad in [
            "Z１０-12002022303213012_A.jpg",
            "Z١٠-12002022303213012_A.jpg",
            "Z१०-12002022303213012_A.jpg",
            "Z1²-12002022303213012_A.jpg",
            "Z²-12002022303213012_A.jpg",
            "Z1０-12002022303213012_A.jpg",
            "Z+7-12002022303213012_A.jpg",
            "Z10-1200202230321301２_A.jpg",
            "Z10-١٢٠٠٢٠٢٢٣٠٣٢١٣٠١٢_A.jpg",
            "Z10-12002022303213012_A１.jpg",
            "Z10-12002022303213012_Aé.jpg",
        ] {
            let err = ChipName::parse(bad).unwrap_err();
            assert!(matches!(err, Error::Grid(_)), "{bad}: {err}");
        }
        for bad in ["１２", "١٢", "1²", "12\u{0663}", "１２００２０２２３０３２"] {
            assert!(Tile::from_quadkey(bad).is_err(), "{bad}");
        }
        assert!(ChipName::new(10, "120020223032", "AB١").is_err());
        assert!(ChipName::parse("Z10-12002022303213012_AB-1.jpg").is_ok());
    }

    #[test]
    fn finds_cog_for_chip() {
        let root = std::env::temp_dir().join(format!("imagesim-grid-{}", std::process::id()));
        let date = root.join("7").join("120020223032").join("2020-01-02");
        std::fs::create_dir_all(&date).unwrap();
        std::fs::write(date.join("ABC-visual.tif"), b"x").unwrap();
        let p = cog_path_from_chip("Z7-12002022303213012_ABC.jpg", &root).unwrap();
        assert_eq!(p, date.join("ABC-visual.tif"));
        let err = cog_path_from_chip("Z7-12002022303213012_DEF.jpg", &root).unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }));
        // A chip path, a name without `.jpg`, and the zone folder as the root.
        let want = Some(date.join("ABC-visual.tif"));
        for chip in [
            "/x/chips/7/Z7-12002022303213012_ABC.jpg",
            "chips/Z7-12002022303213012_ABC.jpg",
            "Z7-12002022303213012_ABC",
        ] {
            assert_eq!(cog_path_from_chip(chip, &root).ok(), want, "{chip}");
            assert_eq!(
                cog_path_from_chip(chip, &root.join("7")).ok(),
                want,
                "{chip} in the zone folder"
            );
        }
        // A zone folder of another zone is not searched as this chip's zone.
        let err = cog_path_from_chip("Z8-12002022303213012_ABC.jpg", &root.join("7")).unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }));
        assert!(matches!(
            cog_path_from_chip("Z7-12002022303213012_ABC.png", &root),
            Err(Error::Grid(_))
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
