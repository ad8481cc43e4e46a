//! Bindings of `imagesim_core::store`: the few object-store calls Python needs for manifests,
//! indexes and listings (chips and COGs travel through the Rust readers and writers directly).
use std::borrow::Cow;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::release::detached;

fn failed(url: &str, e: std::io::Error) -> imagesim_core::Error {
    imagesim_core::Error::io(url, e)
}

/// Objects under a store URL prefix (`s3://bucket/prefix`, `gs://…`, `az://…`, `https://…`):
/// `(url, size, last modified ns)` tuples, at most `limit` of them when given.
#[pyfunction]
#[pyo3(signature = (prefix, limit=None))]
fn list_objects(
    py: Python<'_>,
    prefix: String,
    limit: Option<usize>,
) -> PyResult<Vec<(String, u64, i64)>> {
    detached(py, || {
        imagesim_core::store::list(&prefix, limit).map_err(|e| failed(&prefix, e))
    })
}

/// The bytes of an object.
#[pyfunction]
fn store_get<'py>(py: Python<'py>, url: String) -> PyResult<Bound<'py, PyBytes>> {
    let path = std::path::PathBuf::from(&url);
    let data = detached(py, || {
        imagesim_core::store::read(&path).map_err(|e| failed(&url, e))
    })?;
    Ok(PyBytes::new(py, &data))
}

/// Write an object in one request (readers see the old object or the new one).
#[pyfunction]
fn store_put(py: Python<'_>, url: String, data: Cow<'_, [u8]>) -> PyResult<()> {
    let data = data.into_owned();
    detached(py, || {
        imagesim_core::store::put(&url, data).map_err(|e| failed(&url, e))
    })
}

/// Upload a local file as an object (multipart, streamed, above 64 MiB).
#[pyfunction]
fn store_put_file(py: Python<'_>, url: String, path: std::path::PathBuf) -> PyResult<()> {
    detached(py, || {
        imagesim_core::store::put_file(&url, &path).map_err(|e| failed(&url, e))
    })
}

/// Download an object into a local file, streamed (the object is never whole in memory); the bytes written.
#[pyfunction]
fn store_get_file(py: Python<'_>, url: String, path: std::path::PathBuf) -> PyResult<u64> {
    detached(py, || {
        imagesim_core::store::get_file(&url, &path).map_err(|e| failed(&url, e))
    })
}

/// `(size, last modified ns)` of an object, or None when there is none.
#[pyfunction]
fn store_head(py: Python<'_>, url: String) -> PyResult<Option<(u64, i64)>> {
    detached(py, || {
        imagesim_core::store::head(&url).map_err(|e| failed(&url, e))
    })
}

/// Remove an object (an absent one is not an error).
#[pyfunction]
fn store_delete(py: Python<'_>, url: String) -> PyResult<()> {
    detached(py, || {
        imagesim_core::store::delete(&url).map_err(|e| failed(&url, e))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(list_objects, m)?)?;
    m.add_function(wrap_pyfunction!(store_get, m)?)?;
    m.add_function(wrap_pyfunction!(store_put, m)?)?;
    m.add_function(wrap_pyfunction!(store_put_file, m)?)?;
    m.add_function(wrap_pyfunction!(store_get_file, m)?)?;
    m.add_function(wrap_pyfunction!(store_head, m)?)?;
    m.add_function(wrap_pyfunction!(store_delete, m)?)?;
    Ok(())
}
