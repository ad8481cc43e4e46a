//! Bindings of `imagesim_core::jpeg` and `imagesim_core::batch`: model input batches decoded
//! straight into a caller's (reused) numpy buffer, GIL released, in parallel.
use std::path::PathBuf;

use imagesim_core::batch;
use imagesim_core::pool::run_in_pool;
use numpy::{PyReadwriteArray4, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::release::detached;

/// Decode and resize `paths` into `out` (uint8, shape `(len(paths), size, size, 3)`, C-contiguous).
/// Returns one entry per path: `None`, or the error message (that slot is zeroed).
#[pyfunction]
#[pyo3(signature = (paths, out, *, threads=0))]
fn decode_batch(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    mut out: PyReadwriteArray4<'_, u8>,
    threads: usize,
) -> PyResult<Vec<Option<String>>> {
    let shape = out.shape().to_vec();
    if shape[0] != paths.len() || shape[1] != shape[2] || shape[3] != 3 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "out has shape {shape:?}; need ({}, size, size, 3)",
            paths.len()
        )));
    }
    let size = shape[1];
    let buf = out.as_slice_mut().map_err(|_| {
        pyo3::exceptions::PyValueError::new_err("out must be a C-contiguous, writable uint8 array")
    })?;
    let results = detached(py, || {
        run_in_pool(threads, || batch::decode_batch(&paths, size, buf))?
    })?;
    Ok(results.into_iter().map(|r| r.err()).collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_batch, m)?)?;
    Ok(())
}
