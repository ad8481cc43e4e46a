//! Bindings of `imagesim_core::table`: Parquet tables as dicts of Python lists (no dataframe library).
use std::path::PathBuf;
use std::sync::Mutex;

use imagesim_core::table::{self, Column, Kind, TableReader, TableWriter};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::release::{attached, detached};

/// One float column from Python (None for null).
type Floats = Vec<Option<f64>>;

/// The top-level column names of the Parquet file `path`.
#[pyfunction]
fn parquet_columns(py: Python<'_>, path: PathBuf) -> PyResult<Vec<String>> {
    detached(py, || table::column_names(&path))
}

/// Batches of a Parquet file's `columns` (dicts of lists), at most `batch_rows` rows each, in file order.
#[pyclass(name = "ParquetBatches", frozen, module = "imagesim._imagesim")]
struct PyParquetBatches {
    inner: Mutex<TableReader>,
}

#[pymethods]
impl PyParquetBatches {
    #[new]
    #[pyo3(signature = (path, columns, batch_rows=16_384))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        columns: Vec<String>,
        batch_rows: usize,
    ) -> PyResult<Self> {
        let reader = detached(py, || table::read_columns(&path, &columns, batch_rows))?;
        Ok(Self {
            inner: Mutex::new(reader),
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let next = {
            let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let reader: &mut TableReader = &mut guard;
            py.detach(|| reader.next())
        };
        let Some(batch) = next else { return Ok(None) };
        let out = PyDict::new(py);
        for (name, column) in attached(batch)? {
            out.set_item(name, to_list(py, column)?)?;
        }
        Ok(Some(out))
    }
}

fn to_list(py: Python<'_>, column: Column) -> PyResult<Bound<'_, PyAny>> {
    Ok(match column {
        Column::Str(v) => v.into_pyobject(py)?.into_any(),
        Column::Int(v) => v.into_pyobject(py)?.into_any(),
        Column::UInt(v) => v.into_pyobject(py)?.into_any(),
        Column::Float(v) => v.into_pyobject(py)?.into_any(),
        Column::Bool(v) => v.into_pyobject(py)?.into_any(),
        Column::Binary(v) => {
            let items: Vec<Option<Bound<'_, PyBytes>>> = v
                .iter()
                .map(|x| x.as_ref().map(|b| PyBytes::new(py, b)))
                .collect();
            PyList::new(py, items)?.into_any()
        }
        Column::Bbox(v) => v
            .into_iter()
            .map(|b| b.map(|b| (b[0], b[1], b[2], b[3])))
            .collect::<Vec<_>>()
            .into_pyobject(py)?
            .into_any(),
    })
}

/// A Parquet file written batch by batch: `fields` (name, type) with types `str`, `i32`, `i64`, `u8`,
/// `u16`, `u32`, `u64`, `f32`, `f64`, `bool`, `binary` and `bbox` (a GeoParquet covering, given as
/// four lists `[xmin, ymin, xmax, ymax]`, a row null where `xmin` is None); row groups of `row_group`
/// rows; key-value metadata added on `close`.
#[pyclass(name = "ParquetWriter", frozen, module = "imagesim._imagesim")]
struct PyParquetWriter {
    kinds: Vec<(String, Kind)>,
    inner: Mutex<TableWriter>,
}

#[pymethods]
impl PyParquetWriter {
    #[new]
    #[pyo3(signature = (path, fields, row_group=16_384))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        fields: Vec<(String, String)>,
        row_group: usize,
    ) -> PyResult<Self> {
        let kinds = fields
            .into_iter()
            .map(|(name, kind)| Ok((name, Kind::parse(&kind)?)))
            .collect::<imagesim_core::Result<Vec<_>>>();
        let kinds = attached(kinds)?;
        let writer = detached(py, || TableWriter::create(&path, &kinds, row_group))?;
        Ok(Self {
            kinds,
            inner: Mutex::new(writer),
        })
    }

    /// Append rows: `columns`, one list per field in order, all of one length.
    fn write(&self, py: Python<'_>, columns: Vec<Bound<'_, PyAny>>) -> PyResult<()> {
        if columns.len() != self.kinds.len() {
            return Err(PyTypeError::new_err(format!(
                "{} columns given for a table of {}",
                columns.len(),
                self.kinds.len()
            )));
        }
        let values = columns
            .iter()
            .zip(&self.kinds)
            .map(|(list, (name, kind))| {
                from_list(list, *kind)
                    .map_err(|e| PyTypeError::new_err(format!("column {name:?} ({kind:?}): {e}")))
            })
            .collect::<PyResult<Vec<Column>>>()?;
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let writer: &mut TableWriter = &mut guard;
        detached(py, || writer.write(values))
    }

    /// Add `metadata` to the footer and close the file (a second close does nothing).
    #[pyo3(signature = (metadata=None))]
    fn close(&self, py: Python<'_>, metadata: Option<Vec<(String, String)>>) -> PyResult<()> {
        let metadata = metadata.unwrap_or_default();
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let writer: &mut TableWriter = &mut guard;
        detached(py, || writer.close(&metadata))
    }
}

fn from_list(list: &Bound<'_, PyAny>, kind: Kind) -> PyResult<Column> {
    Ok(match kind {
        Kind::Str => Column::Str(list.extract()?),
        Kind::I32 | Kind::I64 => Column::Int(list.extract()?),
        Kind::U8 | Kind::U16 | Kind::U32 | Kind::U64 => Column::UInt(list.extract()?),
        Kind::F32 | Kind::F64 => Column::Float(list.extract()?),
        Kind::Bool => Column::Bool(list.extract()?),
        Kind::Binary => {
            let items: Vec<Option<Bound<'_, PyBytes>>> = list.extract()?;
            Column::Binary(
                items
                    .into_iter()
                    .map(|b| b.map(|b| b.as_bytes().to_vec()))
                    .collect(),
            )
        }
        Kind::Bbox => {
            let [xmin, ymin, xmax, ymax]: [Floats; 4] = list.extract()?;
            let n = xmin.len();
            if ymin.len() != n || xmax.len() != n || ymax.len() != n {
                return Err(PyTypeError::new_err("the four bbox lists differ in length"));
            }
            Column::Bbox(
                (0..n)
                    .map(|i| match (xmin[i], ymin[i], xmax[i], ymax[i]) {
                        (Some(a), Some(b), Some(c), Some(d)) => Some([a, b, c, d]),
                        _ => None,
                    })
                    .collect(),
            )
        }
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(parquet_columns, m)?)?;
    m.add_class::<PyParquetBatches>()?;
    m.add_class::<PyParquetWriter>()?;
    Ok(())
}
