//! Bindings of `imagesim_core::chip`: one call chips one whole COG with the GIL released.
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use imagesim_core::chip::{self, ChipOptions, CogJob};
use imagesim_core::pool::run_in_pool;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::release::detached;

/// A counter Rust workers bump as chips finish; Python polls `.value` from another thread to
/// drive a progress bar (Rust never calls back into Python).
#[pyclass(frozen)]
#[derive(Clone, Default)]
pub struct Progress {
    count: Arc<AtomicU64>,
}

#[pymethods]
impl Progress {
    #[new]
    fn new() -> Self {
        Progress::default()
    }
    #[getter]
    fn value(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Progress {
    /// The shared counter, for Rust work to increment.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }
}

/// Chip one cell COG; returns the per-chip records as a dict of equal-length columns.
#[pyfunction]
#[pyo3(signature = (cog_path, zone, cell_quadkey, catalog_id, out_dir, *, zoom=17, quality=90, passthrough=false,
    nodata_threshold=0, overwrite=false, skip_empty=false, measure=true, known=HashSet::new(), existing=None, threads=0, progress=None))]
#[allow(clippy::too_many_arguments)]
fn chip_cog<'py>(
    py: Python<'py>,
    cog_path: PathBuf,
    zone: u8,
    cell_quadkey: String,
    catalog_id: String,
    out_dir: PathBuf,
    zoom: u8,
    quality: u8,
    passthrough: bool,
    nodata_threshold: u8,
    overwrite: bool,
    skip_empty: bool,
    measure: bool,
    known: HashSet<String>,
    existing: Option<HashSet<String>>,
    threads: usize,
    progress: Option<Bound<'py, Progress>>,
) -> PyResult<Bound<'py, PyDict>> {
    let job = CogJob {
        cog_path,
        zone,
        cell_quadkey,
        catalog_id,
        out_dir,
        existing,
    };
    let opts = ChipOptions {
        zoom,
        quality,
        passthrough,
        nodata_threshold,
        overwrite,
        skip_empty,
        measure,
    };
    let counter = progress.map(|p| p.get().counter()).unwrap_or_default();
    let records = detached(py, || {
        run_in_pool(threads, || chip::chip_cog(&job, &opts, &known, &counter))?
    })?;

    let out = PyDict::new(py);
    out.set_item(
        "chip",
        records.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
    )?;
    out.set_item(
        "quadkey",
        records
            .iter()
            .map(|r| r.quadkey.as_str())
            .collect::<Vec<_>>(),
    )?;
    out.set_item(
        "col_off",
        records.iter().map(|r| r.window.col_off).collect::<Vec<_>>(),
    )?;
    out.set_item(
        "row_off",
        records.iter().map(|r| r.window.row_off).collect::<Vec<_>>(),
    )?;
    out.set_item(
        "width",
        records.iter().map(|r| r.window.width).collect::<Vec<_>>(),
    )?;
    out.set_item(
        "height",
        records.iter().map(|r| r.window.height).collect::<Vec<_>>(),
    )?;
    out.set_item(
        "status",
        records
            .iter()
            .map(|r| r.status.as_str())
            .collect::<Vec<_>>(),
    )?;
    out.set_item(
        "encoding",
        records
            .iter()
            .map(|r| r.encoding.as_str())
            .collect::<Vec<_>>(),
    )?;
    out.set_item(
        "nodata_pixels",
        records.iter().map(|r| r.nodata_pixels).collect::<Vec<_>>(),
    )?;
    out.set_item(
        "total_pixels",
        records.iter().map(|r| r.total_pixels).collect::<Vec<_>>(),
    )?;
    out.set_item("bytes", records.iter().map(|r| r.bytes).collect::<Vec<_>>())?;
    out.set_item(
        "error",
        records
            .iter()
            .map(|r| r.error.as_deref())
            .collect::<Vec<_>>(),
    )?;
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Progress>()?;
    m.add_function(wrap_pyfunction!(chip_cog, m)?)?;
    Ok(())
}
