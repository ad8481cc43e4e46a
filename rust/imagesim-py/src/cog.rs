//! Bindings of `imagesim_core::cog`: the `Cog` class. Opening and reading run with the GIL
//! released (`detached`); pixels come back as numpy arrays `(height, width, bands)` that take
//! ownership of the Rust buffer (no copy).
use std::path::PathBuf;
use std::sync::Arc;

use imagesim_core::cog::{Cog, Level, RasterData, SampleFormat};
use imagesim_core::grid::Window;
use numpy::ndarray::Array3;
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::release::detached;

/// A GeoTIFF / COG opened for reading (thread-safe; reads release the GIL).
#[pyclass(name = "Cog", frozen, module = "imagesim._imagesim")]
pub struct PyCog {
    inner: Arc<Cog>,
}

fn sample_format_name(f: SampleFormat) -> &'static str {
    match f {
        SampleFormat::Uint => "uint",
        SampleFormat::Int => "int",
        SampleFormat::Float => "float",
    }
}

fn level_dict<'py>(py: Python<'py>, l: &Level) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("width", l.width)?;
    d.set_item("height", l.height)?;
    d.set_item("bands", l.bands)?;
    d.set_item("bits_per_sample", l.bits_per_sample)?;
    d.set_item("sample_format", sample_format_name(l.sample_format))?;
    d.set_item("compression", l.compression)?;
    d.set_item("photometric", l.photometric)?;
    d.set_item("planar", l.planar)?;
    d.set_item("tiled", l.tiled)?;
    d.set_item("chunk_width", l.chunk_width)?;
    d.set_item("chunk_height", l.chunk_height)?;
    Ok(d)
}

fn to_array<T: numpy::Element>(
    py: Python<'_>,
    shape: (usize, usize, usize),
    v: Vec<T>,
) -> PyResult<Py<PyAny>> {
    let a = Array3::from_shape_vec(shape, v)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("bad raster shape: {e}")))?;
    Ok(a.into_pyarray(py).into_any().unbind())
}

#[pymethods]
impl PyCog {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let cog = detached(py, move || Cog::open(&path))?;
        Ok(PyCog {
            inner: Arc::new(cog),
        })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    /// Level 0 (full resolution) then the internal overviews, as dicts.
    #[getter]
    fn levels<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.inner
            .levels()
            .iter()
            .map(|l| level_dict(py, l))
            .collect()
    }

    /// GDAL-order geotransform, or None.
    #[getter]
    fn geotransform(&self) -> Option<(f64, f64, f64, f64, f64, f64)> {
        self.inner
            .geo()
            .geotransform
            .map(|g| (g[0], g[1], g[2], g[3], g[4], g[5]))
    }

    #[getter]
    fn epsg(&self) -> Option<u32> {
        self.inner.geo().epsg
    }

    #[getter]
    fn nodata(&self) -> Option<f64> {
        self.inner.geo().nodata
    }

    /// Read a window `(col_off, row_off, width, height)` (None = whole level) of `level` as a
    /// numpy array shaped (height, width, bands) in the file's sample type.
    #[pyo3(signature = (window=None, level=0))]
    fn read(
        &self,
        py: Python<'_>,
        window: Option<(u32, u32, u32, u32)>,
        level: usize,
    ) -> PyResult<Py<PyAny>> {
        let cog = Arc::clone(&self.inner);
        let raster = detached(py, move || {
            let window = match window {
                Some((col_off, row_off, width, height)) => Window {
                    col_off,
                    row_off,
                    width,
                    height,
                },
                None => {
                    let l = cog.levels().get(level).ok_or_else(|| {
                        imagesim_core::Error::window(
                            cog.path(),
                            format!("level {level} does not exist"),
                        )
                    })?;
                    Window {
                        col_off: 0,
                        row_off: 0,
                        width: l.width,
                        height: l.height,
                    }
                }
            };
            cog.read_window(level, window)
        })?;
        let shape = (
            raster.height as usize,
            raster.width as usize,
            raster.bands as usize,
        );
        match raster.data {
            RasterData::U8(v) => to_array(py, shape, v),
            RasterData::I8(v) => to_array(py, shape, v),
            RasterData::U16(v) => to_array(py, shape, v),
            RasterData::I16(v) => to_array(py, shape, v),
            RasterData::U32(v) => to_array(py, shape, v),
            RasterData::I32(v) => to_array(py, shape, v),
            RasterData::F32(v) => to_array(py, shape, v),
            RasterData::F64(v) => to_array(py, shape, v),
        }
    }

    fn __repr__(&self) -> String {
        let l = &self.inner.levels()[0];
        format!(
            "Cog({:?}, {}x{}x{}, {} levels)",
            self.inner.path(),
            l.width,
            l.height,
            l.bands,
            self.inner.levels().len()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCog>()?;
    Ok(())
}
