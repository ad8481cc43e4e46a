//! Bindings of `imagesim_core::masks`: area of polygon rings in every square of a grid, GIL released.
use imagesim_core::masks::{self, GridSpec};
use imagesim_core::Error;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::release::{attached, detached};

fn invalid<T>(msg: String) -> PyResult<T> {
    attached(Err(Error::InvalidArgument(msg)))
}

/// Signed area of the rings in each square of an `nx × ny` grid whose north-west corner is
/// `(x0, y_top)`, as a `(ny, nx)` float64 array (north row first). `xy`: `(n, 2)` float64,
/// C-contiguous; `ring_offsets`: int64, rings + 1 entries (`shapely.to_ragged_array`'s ring
/// offsets). Counter-clockwise rings count positive, clockwise ones negative.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn grid_coverage<'py>(
    py: Python<'py>,
    xy: PyReadonlyArray2<'py, f64>,
    ring_offsets: PyReadonlyArray1<'py, i64>,
    x0: f64,
    y_top: f64,
    cell: f64,
    nx: usize,
    ny: usize,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    if xy.shape()[1] != 2 {
        return invalid(format!("`xy` has shape {:?}: need (points, 2)", xy.shape()));
    }
    let Ok(flat) = xy.as_slice() else {
        return invalid("`xy` must be a C-contiguous array".into());
    };
    let Ok(offsets) = ring_offsets.as_slice() else {
        return invalid("`ring_offsets` must be a contiguous array".into());
    };
    let Some(offsets) = offsets
        .iter()
        .map(|&o| usize::try_from(o).ok())
        .collect::<Option<Vec<usize>>>()
    else {
        return invalid("`ring_offsets` holds a negative offset".into());
    };
    let grid = GridSpec {
        x0,
        y_top,
        cell,
        nx,
        ny,
    };
    let area = detached(py, || masks::grid_coverage(flat, &offsets, &grid))?;
    let a = Array2::from_shape_vec((ny, nx), area)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("bad grid shape: {e}")))?;
    Ok(a.into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(grid_coverage, m)?)?;
    Ok(())
}
