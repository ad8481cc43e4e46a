//! Bindings of `imagesim_core::footprint`: chip footprints as WKB with their bboxes, column-wise.
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::release::detached;

/// Footprints of chips `(zones[i], quadkeys[i])` in WGS84: a dict of columns `geometry` (WKB bytes),
/// `xmin`, `ymin`, `xmax`, `ymax` and `parts` (2: a MultiPolygon split at the antimeridian).
/// GridError naming the first chip (by `names[i]` when given) that has no footprint.
#[pyfunction]
#[pyo3(signature = (zones, quadkeys, names=None))]
fn chip_footprints<'py>(
    py: Python<'py>,
    zones: Vec<i64>,
    quadkeys: Vec<String>,
    names: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyDict>> {
    let found = detached(py, || {
        let qks: Vec<&str> = quadkeys.iter().map(String::as_str).collect();
        let labels: Option<Vec<&str>> = names
            .as_ref()
            .map(|n| n.iter().map(String::as_str).collect());
        imagesim_core::footprint::footprints(&zones, &qks, labels.as_deref())
    })?;
    let out = PyDict::new(py);
    let wkb: Vec<Bound<'py, PyBytes>> = found.iter().map(|f| PyBytes::new(py, &f.wkb)).collect();
    out.set_item("geometry", wkb)?;
    for (k, key) in ["xmin", "ymin", "xmax", "ymax"].into_iter().enumerate() {
        out.set_item(key, found.iter().map(|f| f.bbox[k]).collect::<Vec<f64>>())?;
    }
    out.set_item(
        "parts",
        found.iter().map(|f| f.parts).collect::<Vec<usize>>(),
    )?;
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(chip_footprints, m)?)?;
    Ok(())
}
