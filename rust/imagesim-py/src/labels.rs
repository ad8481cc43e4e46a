//! Bindings of `imagesim_core::labels`: sparse ⇄ bitset ⇄ dense multilabel encodings on numpy
//! arrays, whole columns per call with the GIL released.
use imagesim_core::labels;
use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::release::detached;

fn to_2d<'py, T: numpy::Element>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
    v: Vec<T>,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let a = Array2::from_shape_vec((rows, cols), v)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("bad label shape: {e}")))?;
    Ok(a.into_pyarray(py))
}

fn contiguous<'a, T: numpy::Element>(
    a: &'a PyReadonlyArray2<'_, T>,
    what: &str,
) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!("{what} must be a C-contiguous array"))
    })
}

/// Number of u64 words per bitset row for `n_classes`.
#[pyfunction]
fn label_words(n_classes: usize) -> usize {
    labels::words_for(n_classes)
}

/// Sparse rows (flat `ids`, `offsets` with rows + 1 entries) to bitsets `(rows, words)` u64.
#[pyfunction]
fn pack_labels<'py>(
    py: Python<'py>,
    ids: PyReadonlyArray1<'py, u32>,
    offsets: PyReadonlyArray1<'py, i64>,
    n_classes: usize,
) -> PyResult<Bound<'py, PyArray2<u64>>> {
    let ids = ids
        .as_slice()
        .map_err(|_| pyo3::exceptions::PyValueError::new_err("ids must be contiguous"))?;
    let offsets = offsets
        .as_slice()
        .map_err(|_| pyo3::exceptions::PyValueError::new_err("offsets must be contiguous"))?;
    let rows = offsets.len().saturating_sub(1);
    let bits = detached(py, || labels::pack(ids, offsets, n_classes))?;
    to_2d(py, rows, labels::words_for(n_classes), bits)
}

/// Sparse rows as numpy arrays: flat `ids` (u32) and `offsets` (i64, rows + 1 entries).
type SparseRows<'py> = (Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<i64>>);

/// Bitsets `(rows, words)` to sparse rows: `(ids u32, offsets i64)`, ids ascending per row.
#[pyfunction]
fn unpack_labels<'py>(
    py: Python<'py>,
    bits: PyReadonlyArray2<'py, u64>,
    n_classes: usize,
) -> PyResult<SparseRows<'py>> {
    let words = bits.shape()[1];
    let flat = contiguous(&bits, "bitsets")?;
    let (ids, offsets) = detached(py, || labels::unpack(flat, words, n_classes))?;
    Ok((ids.into_pyarray(py), offsets.into_pyarray(py)))
}

/// Bitsets `(rows, words)` to a dense 0/1 `(rows, n_classes)` u8 matrix.
#[pyfunction]
fn dense_labels<'py>(
    py: Python<'py>,
    bits: PyReadonlyArray2<'py, u64>,
    n_classes: usize,
) -> PyResult<Bound<'py, PyArray2<u8>>> {
    let (rows, words) = (bits.shape()[0], bits.shape()[1]);
    let flat = contiguous(&bits, "bitsets")?;
    let dense = detached(py, || labels::to_dense(flat, words, n_classes))?;
    to_2d(py, rows, n_classes, dense)
}

/// Co-occurrence counts `(n_classes, n_classes)` u64 (the diagonal holds each class's count).
#[pyfunction]
fn label_cooccurrence<'py>(
    py: Python<'py>,
    bits: PyReadonlyArray2<'py, u64>,
    n_classes: usize,
) -> PyResult<Bound<'py, PyArray2<u64>>> {
    let words = bits.shape()[1];
    let flat = contiguous(&bits, "bitsets")?;
    let co = detached(py, || labels::cooccurrence(flat, words, n_classes))?;
    to_2d(py, n_classes, n_classes, co)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(label_words, m)?)?;
    m.add_function(wrap_pyfunction!(pack_labels, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_labels, m)?)?;
    m.add_function(wrap_pyfunction!(dense_labels, m)?)?;
    m.add_function(wrap_pyfunction!(label_cooccurrence, m)?)?;
    Ok(())
}
