//! The single place where Rust work runs without the GIL and core errors become Python
//! exceptions (the idea of polars' `enter_polars`). Every binding that does real work calls
//! [`detached`]; nothing inside the closure may touch Python objects.
use pyo3::prelude::*;

use crate::error::to_py;

/// Run `work` with the GIL released and convert its error to the matching exception.
pub fn detached<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    F: FnOnce() -> imagesim_core::Result<T> + Send,
    T: Send,
{
    py.detach(work).map_err(to_py)
}

/// Convert a core result computed while holding the GIL (cheap calls only).
pub fn attached<T>(result: imagesim_core::Result<T>) -> PyResult<T> {
    result.map_err(to_py)
}
