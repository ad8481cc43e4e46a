//! Bindings of `imagesim_core::grid`. Tiles cross the boundary as `(x, y, z)` tuples,
//! bounds as `(west, south, east, north)`, windows as `(col_off, row_off, width, height)`.
use std::path::PathBuf;

use imagesim_core::grid::{self, ChipName, Tile};
use pyo3::prelude::*;

use crate::release::{attached, detached};

type TileTuple = (u32, u32, u8);

fn tile_of(t: TileTuple) -> PyResult<Tile> {
    attached(Tile::new(t.0, t.1, t.2))
}

#[pyfunction]
fn quadkey_to_tile(quadkey: &str) -> PyResult<TileTuple> {
    let t = attached(Tile::from_quadkey(quadkey))?;
    Ok((t.x, t.y, t.z))
}

#[pyfunction]
fn tile_to_quadkey(tile: TileTuple) -> PyResult<String> {
    Ok(tile_of(tile)?.quadkey())
}

#[pyfunction]
fn quadkey_bounds(quadkey: &str) -> PyResult<(f64, f64, f64, f64)> {
    let b = attached(Tile::from_quadkey(quadkey))?.bounds();
    Ok((b.west, b.south, b.east, b.north))
}

#[pyfunction]
fn quadkey_epsg(quadkey: &str, zone: u8) -> PyResult<u32> {
    attached(Tile::from_quadkey(quadkey).and_then(|t| t.epsg(zone)))
}

#[pyfunction]
fn quadkey_children(quadkey: &str, zoom: u8) -> PyResult<Vec<String>> {
    let kids = attached(Tile::from_quadkey(quadkey).and_then(|t| t.children_at(zoom)))?;
    Ok(kids.iter().map(Tile::quadkey).collect())
}

#[pyfunction]
fn chip_window(quadkey: &str) -> PyResult<(u32, u32, u32, u32)> {
    let w = attached(Tile::from_quadkey(quadkey).and_then(|t| grid::chip_window(&t)))?;
    Ok((w.col_off, w.row_off, w.width, w.height))
}

#[pyfunction]
fn cell_geotransform(quadkey: &str) -> PyResult<[f64; 6]> {
    attached(Tile::from_quadkey(quadkey).and_then(|t| grid::cell_geotransform(&t)))
}

#[pyfunction]
fn chip_name(zone: u8, quadkey: &str, catalog_id: &str) -> PyResult<String> {
    Ok(attached(ChipName::new(zone, quadkey, catalog_id))?.file_name())
}

/// Parse a chip file name into `(zone, quadkey, catalog_id)`.
#[pyfunction]
fn parse_chip_name(name: &str) -> PyResult<(u8, String, String)> {
    let c = attached(ChipName::parse(name))?;
    Ok((c.zone, c.quadkey, c.catalog_id))
}

/// The `-visual.tif` a chip was cut from; `chip` is a chip name (`.jpg` optional) or a chip's path,
/// `ard_root` the delivery or one zone folder of it.
#[pyfunction]
fn cog_path_from_chip(py: Python<'_>, chip: PathBuf, ard_root: PathBuf) -> PyResult<PathBuf> {
    detached(py, move || {
        grid::cog_path_from_chip(&chip.to_string_lossy(), &ard_root)
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quadkey_to_tile, m)?)?;
    m.add_function(wrap_pyfunction!(tile_to_quadkey, m)?)?;
    m.add_function(wrap_pyfunction!(quadkey_bounds, m)?)?;
    m.add_function(wrap_pyfunction!(quadkey_epsg, m)?)?;
    m.add_function(wrap_pyfunction!(quadkey_children, m)?)?;
    m.add_function(wrap_pyfunction!(chip_window, m)?)?;
    m.add_function(wrap_pyfunction!(cell_geotransform, m)?)?;
    m.add_function(wrap_pyfunction!(chip_name, m)?)?;
    m.add_function(wrap_pyfunction!(parse_chip_name, m)?)?;
    m.add_function(wrap_pyfunction!(cog_path_from_chip, m)?)?;
    m.add("ORIGIN_X", grid::ORIGIN_X)?;
    m.add("ORIGIN_Y", grid::ORIGIN_Y)?;
    m.add("EXTENT", grid::EXTENT)?;
    m.add("CELL_ZOOM", grid::CELL_ZOOM)?;
    m.add("CELL_PIXELS", grid::CELL_PIXELS)?;
    m.add("APRON", grid::APRON)?;
    m.add("COG_PIXELS", grid::COG_PIXELS)?;
    m.add("PIXEL_SIZE", grid::PIXEL_SIZE)?;
    Ok(())
}
