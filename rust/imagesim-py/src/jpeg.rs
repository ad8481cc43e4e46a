//! Bindings of `imagesim_core::jpeg` and `imagesim_core::batch`: model input batches decoded
//! straight into a caller's (reused) numpy buffer, GIL released, in parallel.
use std::path::PathBuf;

use imagesim_core::batch;
use imagesim_core::pool::run_in_pool;
use numpy::{PyReadwriteArray1, PyReadwriteArray4, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::release::detached;

/// Decode and resize `paths` into `out` (uint8, shape `(len(paths), size, size, 3)`, C-contiguous).
/// Returns one entry per path: `None`, or the error message (that slot is zeroed).
/// `nodata_threshold`: fill each chip's no-data pixels (every band <= it) with its valid pixels'
/// mean; `valid` (float32, `len(paths)`) then receives each chip's valid share (NaN where it failed).
#[pyfunction]
#[pyo3(signature = (paths, out, *, threads=0, nodata_threshold=None, valid=None))]
fn decode_batch(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    mut out: PyReadwriteArray4<'_, u8>,
    threads: usize,
    nodata_threshold: Option<u8>,
    valid: Option<PyReadwriteArray1<'_, f32>>,
) -> PyResult<Vec<Option<String>>> {
    let shape = out.shape().to_vec();
    if shape[0] != paths.len() || shape[1] != shape[2] || shape[3] != 3 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "out has shape {shape:?}; need ({}, size, size, 3)",
            paths.len()
        )));
    }
    let mut valid = valid;
    let shares = match valid.as_mut() {
        None => None,
        Some(_) if nodata_threshold.is_none() => {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "valid needs nodata_threshold (the rule that tells no-data from data)",
            ))
        }
        Some(v) => {
            let slice = v.as_slice_mut().map_err(|_| {
                pyo3::exceptions::PyValueError::new_err(
                    "valid must be a C-contiguous, writable float32 array",
                )
            })?;
            if slice.len() != paths.len() {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "valid has {} entries; need {} (one per path)",
                    slice.len(),
                    paths.len()
                )));
            }
            Some(slice)
        }
    };
    let size = shape[1];
    let buf = out.as_slice_mut().map_err(|_| {
        pyo3::exceptions::PyValueError::new_err("out must be a C-contiguous, writable uint8 array")
    })?;
    let results = detached(py, || {
        run_in_pool(threads, || {
            batch::decode_batch(&paths, size, buf, nodata_threshold)
        })?
    })?;
    if let Some(shares) = shares {
        for (share, r) in shares.iter_mut().zip(&results) {
            *share = match r {
                Ok(Some(s)) => *s,
                _ => f32::NAN,
            };
        }
    }
    Ok(results.into_iter().map(|r| r.err()).collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_batch, m)?)?;
    Ok(())
}
