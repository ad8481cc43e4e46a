//! `imagesim._imagesim`: the thin PyO3 layer over imagesim-core. Argument conversion lives in
//! the per-concern files; `release.rs` is the one place that drops the GIL and converts errors.
use pyo3::prelude::*;

mod chip;
mod cog;
mod error;
mod footprint;
mod grid;
mod jpeg;
mod labels;
mod masks;
mod nodata;
mod release;
mod store;
mod table;

#[pymodule]
fn _imagesim(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    grid::register(m)?;
    footprint::register(m)?;
    cog::register(m)?;
    jpeg::register(m)?;
    chip::register(m)?;
    nodata::register(m)?;
    labels::register(m)?;
    masks::register(m)?;
    store::register(m)?;
    table::register(m)?;
    Ok(())
}
