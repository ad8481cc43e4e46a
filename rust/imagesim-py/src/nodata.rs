//! Bindings of `imagesim_core::nodata`: measure many chip JPEGs in one call, GIL released.
use std::path::PathBuf;

use imagesim_core::nodata;
use imagesim_core::pool::run_in_pool;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::chip::Progress;
use crate::release::detached;

/// Count no-data pixels in each JPEG; returns columns `width`, `height`, `nodata_pixels`
/// (None where the file failed), `note` (measured, but greyscale or not its chip name's size)
/// and `error` (`"<file>: <problem>"` in `imagesim_core::jpeg::Problem`'s words).
#[pyfunction]
#[pyo3(signature = (paths, *, threshold=0, threads=0, progress=None))]
fn scan_jpeg_files<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    threshold: u8,
    threads: usize,
    progress: Option<Bound<'py, Progress>>,
) -> PyResult<Bound<'py, PyDict>> {
    let counter = progress.map(|p| p.get().counter()).unwrap_or_default();
    let results = detached(py, || {
        run_in_pool(threads, || {
            nodata::scan_jpeg_files(&paths, threshold, &counter)
        })
    })?;
    let out = PyDict::new(py);
    out.set_item(
        "width",
        results
            .iter()
            .map(|r| r.as_ref().ok().map(|c| c.width))
            .collect::<Vec<_>>(),
    )?;
    out.set_item(
        "height",
        results
            .iter()
            .map(|r| r.as_ref().ok().map(|c| c.height))
            .collect::<Vec<_>>(),
    )?;
    out.set_item(
        "nodata_pixels",
        results
            .iter()
            .map(|r| r.as_ref().ok().map(|c| c.nodata_pixels))
            .collect::<Vec<_>>(),
    )?;
    out.set_item(
        "note",
        results
            .iter()
            .map(|r| r.as_ref().ok().and_then(|c| c.note.as_deref()))
            .collect::<Vec<_>>(),
    )?;
    out.set_item(
        "error",
        results
            .iter()
            .map(|r| r.as_ref().err().map(String::as_str))
            .collect::<Vec<_>>(),
    )?;
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(scan_jpeg_files, m)?)?;
    Ok(())
}
