//! Parquet tables as plain columns: the chip tables (`chips.parquet`, `nodata.parquet`) read and
//! written without a dataframe library, so the commands that only pass rows through (`nodata-index`)
//! start without loading one (polars takes ~0.3 s to import).
//!
//! A column is a vector of optional values of one [`Kind`]; every width of integer reads as `i64`
//! or `u64` (what Python holds anyway). Files are written as polars writes them — zstd, one Arrow
//! type per column, all nullable — so a table reads back with the same dtypes whichever wrote it.
//! The `bbox` kind is GeoParquet 1.1's covering: a struct of `xmin`, `ymin`, `xmax`, `ymax` (f64).
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray, StructArray, UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

/// The fields of a bbox covering, in order.
pub const BBOX_FIELDS: [&str; 4] = ["xmin", "ymin", "xmax", "ymax"];
/// polars' default zstd level.
const ZSTD_LEVEL: i32 = 3;

/// The type of a column written: polars' dtype names (`str`, `u64`, …) plus `bbox`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
    Bool,
    Binary,
    Bbox,
}

impl Kind {
    pub fn parse(name: &str) -> Result<Kind> {
        Ok(match name {
            "str" => Kind::Str,
            "i32" => Kind::I32,
            "i64" => Kind::I64,
            "u8" => Kind::U8,
            "u16" => Kind::U16,
            "u32" => Kind::U32,
            "u64" => Kind::U64,
            "f32" => Kind::F32,
            "f64" => Kind::F64,
            "bool" => Kind::Bool,
            "binary" => Kind::Binary,
            "bbox" => Kind::Bbox,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "column type {other:?} is not one of str, i32, i64, u8, u16, u32, u64, f32, f64, bool, binary, bbox"
                )))
            }
        })
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Str => DataType::Utf8,
            Kind::I32 => DataType::Int32,
            Kind::I64 => DataType::Int64,
            Kind::U8 => DataType::UInt8,
            Kind::U16 => DataType::UInt16,
            Kind::U32 => DataType::UInt32,
            Kind::U64 => DataType::UInt64,
            Kind::F32 => DataType::Float32,
            Kind::F64 => DataType::Float64,
            Kind::Bool => DataType::Boolean,
            Kind::Binary => DataType::Binary,
            Kind::Bbox => DataType::Struct(bbox_fields()),
        }
    }
}

fn bbox_fields() -> Fields {
    BBOX_FIELDS
        .iter()
        .map(|name| Field::new(*name, DataType::Float64, true))
        .collect()
}

/// The values of one column.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    Str(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    UInt(Vec<Option<u64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Binary(Vec<Option<Vec<u8>>>),
    Bbox(Vec<Option<[f64; 4]>>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Str(v) => v.len(),
            Column::Int(v) => v.len(),
            Column::UInt(v) => v.len(),
            Column::Float(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Binary(v) => v.len(),
            Column::Bbox(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values at `rows` (None where `null(i)`): a dictionary column's values looked up by key.
    fn take(&self, rows: &[usize], null: impl Fn(usize) -> bool) -> Column {
        fn pick<T: Clone>(
            v: &[Option<T>],
            rows: &[usize],
            null: impl Fn(usize) -> bool,
        ) -> Vec<Option<T>> {
            rows.iter()
                .enumerate()
                .map(|(i, &r)| {
                    if null(i) {
                        None
                    } else {
                        v.get(r).cloned().flatten()
                    }
                })
                .collect()
        }
        match self {
            Column::Str(v) => Column::Str(pick(v, rows, null)),
            Column::Int(v) => Column::Int(pick(v, rows, null)),
            Column::UInt(v) => Column::UInt(pick(v, rows, null)),
            Column::Float(v) => Column::Float(pick(v, rows, null)),
            Column::Bool(v) => Column::Bool(pick(v, rows, null)),
            Column::Binary(v) => Column::Binary(pick(v, rows, null)),
            Column::Bbox(v) => Column::Bbox(pick(v, rows, null)),
        }
    }
}

fn table_error(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Table {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| table_error(path, format!("not a readable Parquet file ({e})")))
}

/// The top-level column names of a Parquet file.
pub fn column_names(path: &Path) -> Result<Vec<String>> {
    let builder = open(path)?;
    Ok(builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect())
}

/// Batches of at most `batch_rows` rows of the named columns of a Parquet file, in file order.
pub struct TableReader {
    path: PathBuf,
    names: Vec<String>,
    inner: ParquetRecordBatchReader,
}

/// Open `path` to read `columns` (each must be in the file; InvalidArgument naming the first that is not).
pub fn read_columns(path: &Path, columns: &[String], batch_rows: usize) -> Result<TableReader> {
    let builder = open(path)?;
    let roots: Vec<usize> = columns
        .iter()
        .map(|name| {
            builder
                .parquet_schema()
                .root_schema()
                .get_fields()
                .iter()
                .position(|f| f.name() == name)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("{}: no column {name:?}", path.display()))
                })
        })
        .collect::<Result<_>>()?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let inner = builder
        .with_projection(mask)
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(|e| table_error(path, e))?;
    Ok(TableReader {
        path: path.to_path_buf(),
        names: columns.to_vec(),
        inner,
    })
}

impl Iterator for TableReader {
    type Item = Result<Vec<(String, Column)>>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.inner.next()? {
            Ok(batch) => batch,
            Err(e) => return Some(Err(table_error(&self.path, e))),
        };
        // the projection keeps file order: look each asked column up by name
        let out = self
            .names
            .iter()
            .map(|name| {
                let array = batch.column_by_name(name).ok_or_else(|| {
                    table_error(&self.path, format!("column {name:?} missing from a batch"))
                })?;
                Ok((name.clone(), to_column(array.as_ref(), &self.path, name)?))
            })
            .collect();
        Some(out)
    }
}

/// `value(i)` for each row, None where the array is null.
fn optional<T, F>(len: usize, is_null: impl Fn(usize) -> bool, value: F) -> Vec<Option<T>>
where
    F: Fn(usize) -> T,
{
    (0..len)
        .map(|i| if is_null(i) { None } else { Some(value(i)) })
        .collect()
}

fn to_column(array: &dyn Array, path: &Path, name: &str) -> Result<Column> {
    let n = array.len();
    let null = |i: usize| array.is_null(i);
    Ok(match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            Column::Str(optional(n, null, |i| a.value(i).to_owned()))
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            Column::Str(optional(n, null, |i| a.value(i).to_owned()))
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            Column::Str(optional(n, null, |i| a.value(i).to_owned()))
        }
        DataType::Int8 => {
            let a = array.as_primitive::<Int8Type>();
            Column::Int(optional(n, null, |i| i64::from(a.value(i))))
        }
        DataType::Int16 => {
            let a = array.as_primitive::<Int16Type>();
            Column::Int(optional(n, null, |i| i64::from(a.value(i))))
        }
        DataType::Int32 => {
            let a = array.as_primitive::<Int32Type>();
            Column::Int(optional(n, null, |i| i64::from(a.value(i))))
        }
        DataType::Int64 => {
            let a = array.as_primitive::<Int64Type>();
            Column::Int(optional(n, null, |i| a.value(i)))
        }
        DataType::UInt8 => {
            let a = array.as_primitive::<UInt8Type>();
            Column::UInt(optional(n, null, |i| u64::from(a.value(i))))
        }
        DataType::UInt16 => {
            let a = array.as_primitive::<UInt16Type>();
            Column::UInt(optional(n, null, |i| u64::from(a.value(i))))
        }
        DataType::UInt32 => {
            let a = array.as_primitive::<UInt32Type>();
            Column::UInt(optional(n, null, |i| u64::from(a.value(i))))
        }
        DataType::UInt64 => {
            let a = array.as_primitive::<UInt64Type>();
            Column::UInt(optional(n, null, |i| a.value(i)))
        }
        DataType::Float32 => {
            let a = array.as_primitive::<Float32Type>();
            Column::Float(optional(n, null, |i| f64::from(a.value(i))))
        }
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            Column::Float(optional(n, null, |i| a.value(i)))
        }
        DataType::Boolean => {
            let a = array.as_boolean();
            Column::Bool(optional(n, null, |i| a.value(i)))
        }
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            Column::Binary(optional(n, null, |i| a.value(i).to_vec()))
        }
        DataType::LargeBinary => {
            let a = array.as_binary::<i64>();
            Column::Binary(optional(n, null, |i| a.value(i).to_vec()))
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            Column::Binary(optional(n, null, |i| a.value(i).to_vec()))
        }
        DataType::Struct(fields)
            if fields.len() == 4
                && fields
                    .iter()
                    .zip(BBOX_FIELDS)
                    .all(|(f, want)| f.name() == want && f.data_type() == &DataType::Float64) =>
        {
            let s = array.as_struct();
            let parts: Vec<&Float64Array> = (0..4)
                .map(|k| s.column(k).as_primitive::<Float64Type>())
                .collect();
            Column::Bbox(optional(n, null, |i| {
                [
                    parts[0].value(i),
                    parts[1].value(i),
                    parts[2].value(i),
                    parts[3].value(i),
                ]
            }))
        }
        // categorical columns (pandas' category, polars' Categorical): the values by key
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary();
            let values = to_column(dict.values().as_ref(), path, name)?;
            let rows = if dict.values().is_empty() {
                vec![0; n] // every row null: nothing to look up
            } else {
                dict.normalized_keys()
            };
            values.take(&rows, null)
        }
        other => {
            return Err(table_error(
                path,
                format!("column {name:?} has type {other}, which imagesim does not read"),
            ))
        }
    })
}

/// A Parquet file written batch by batch (row groups of `row_group` rows), key-value metadata added on
/// [`TableWriter::close`]. The file is written where it is named: callers make it atomic.
pub struct TableWriter {
    path: PathBuf,
    schema: SchemaRef,
    kinds: Vec<Kind>,
    writer: Option<ArrowWriter<File>>,
}

impl TableWriter {
    pub fn create(path: &Path, fields: &[(String, Kind)], row_group: usize) -> Result<TableWriter> {
        if fields.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: a table needs at least one column",
                path.display()
            )));
        }
        let schema: SchemaRef = Arc::new(Schema::new(
            fields
                .iter()
                .map(|(name, kind)| Field::new(name, kind.data_type(), true))
                .collect::<Vec<_>>(),
        ));
        let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(|e| table_error(path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(row_group.max(1)))
            .build();
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| table_error(path, e))?;
        Ok(TableWriter {
            path: path.to_path_buf(),
            schema,
            kinds: fields.iter().map(|(_, k)| *k).collect(),
            writer: Some(writer),
        })
    }

    /// Append rows: one column per field, in order, all of one length.
    pub fn write(&mut self, columns: Vec<Column>) -> Result<()> {
        if columns.len() != self.kinds.len() {
            return Err(Error::InvalidArgument(format!(
                "{}: {} columns given for a table of {}",
                self.path.display(),
                columns.len(),
                self.kinds.len()
            )));
        }
        let rows = columns.first().map_or(0, Column::len);
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
        for ((column, kind), field) in columns
            .into_iter()
            .zip(&self.kinds)
            .zip(self.schema.fields())
        {
            if column.len() != rows {
                return Err(Error::InvalidArgument(format!(
                    "{}: column {:?} has {} values, the first {rows}",
                    self.path.display(),
                    field.name(),
                    column.len()
                )));
            }
            arrays.push(to_array(column, *kind).map_err(|msg| {
                Error::InvalidArgument(format!(
                    "{}: column {:?}: {msg}",
                    self.path.display(),
                    field.name()
                ))
            })?);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| table_error(&self.path, e))?;
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| table_error(&self.path, "written after close"))?;
        writer.write(&batch).map_err(|e| table_error(&self.path, e))
    }

    /// Add `metadata` (key, value) to the file's footer and close it.
    pub fn close(&mut self, metadata: &[(String, String)]) -> Result<()> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        for (key, value) in metadata {
            writer.append_key_value_metadata(KeyValue::new(key.clone(), value.clone()));
        }
        writer.close().map_err(|e| table_error(&self.path, e))?;
        Ok(())
    }
}

fn mismatch(kind: Kind) -> String {
    format!("values do not fit its type {kind:?}")
}

fn narrow<T: TryFrom<u64>>(
    values: Vec<Option<u64>>,
    kind: Kind,
) -> std::result::Result<Vec<Option<T>>, String> {
    values
        .into_iter()
        .map(|v| {
            v.map(|x| T::try_from(x).map_err(|_| format!("{x} is out of range of {kind:?}")))
                .transpose()
        })
        .collect()
}

fn to_array(column: Column, kind: Kind) -> std::result::Result<ArrayRef, String> {
    Ok(match (kind, column) {
        (Kind::Str, Column::Str(v)) => Arc::new(StringArray::from(v)),
        (Kind::Binary, Column::Binary(v)) => {
            Arc::new(v.iter().map(|x| x.as_deref()).collect::<BinaryArray>())
        }
        (Kind::Bool, Column::Bool(v)) => Arc::new(BooleanArray::from(v)),
        (Kind::F64, Column::Float(v)) => Arc::new(Float64Array::from(v)),
        (Kind::F32, Column::Float(v)) => Arc::new(Float32Array::from(
            v.into_iter()
                .map(|x| x.map(|f| f as f32))
                .collect::<Vec<_>>(),
        )),
        (Kind::I64, Column::Int(v)) => Arc::new(Int64Array::from(v)),
        (Kind::I32, Column::Int(v)) => Arc::new(Int32Array::from(
            v.into_iter()
                .map(|x| {
                    x.map(|i| i32::try_from(i).map_err(|_| format!("{i} is out of range of I32")))
                        .transpose()
                })
                .collect::<std::result::Result<Vec<_>, _>>()?,
        )),
        (Kind::U64, Column::UInt(v)) => Arc::new(UInt64Array::from(v)),
        (Kind::U32, Column::UInt(v)) => Arc::new(UInt32Array::from(narrow::<u32>(v, kind)?)),
        (Kind::U16, Column::UInt(v)) => Arc::new(UInt16Array::from(narrow::<u16>(v, kind)?)),
        (Kind::U8, Column::UInt(v)) => Arc::new(UInt8Array::from(narrow::<u8>(v, kind)?)),
        (Kind::Bbox, Column::Bbox(v)) => {
            let nulls = NullBuffer::from(v.iter().map(Option::is_some).collect::<Vec<bool>>());
            let children: Vec<ArrayRef> = (0..4)
                .map(|k| {
                    Arc::new(Float64Array::from(
                        v.iter().map(|b| b.map(|b| b[k])).collect::<Vec<_>>(),
                    )) as ArrayRef
                })
                .collect();
            Arc::new(
                StructArray::try_new(bbox_fields(), children, Some(nulls))
                    .map_err(|e| e.to_string())?,
            )
        }
        (kind, _) => return Err(mismatch(kind)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("imagesim-table-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("t.parquet")
    }

    #[test]
    fn round_trip_every_kind() {
        let path = temp("round");
        let fields: Vec<(String, Kind)> = [
            ("s", Kind::Str),
            ("u8", Kind::U8),
            ("u64", Kind::U64),
            ("i32", Kind::I32),
            ("f", Kind::F64),
            ("b", Kind::Bool),
            ("w", Kind::Binary),
            ("bbox", Kind::Bbox),
        ]
        .into_iter()
        .map(|(n, k)| (n.to_string(), k))
        .collect();
        let columns = vec![
            Column::Str(vec![Some("a".into()), None, Some("ü".into())]),
            Column::UInt(vec![Some(255), Some(0), None]),
            Column::UInt(vec![Some(u64::MAX), None, Some(7)]),
            Column::Int(vec![Some(-3), Some(i64::from(i32::MAX)), None]),
            Column::Float(vec![Some(0.5), None, Some(-1e300)]),
            Column::Bool(vec![None, Some(true), Some(false)]),
            Column::Binary(vec![Some(vec![1, 2]), None, Some(vec![])]),
            Column::Bbox(vec![
                Some([1.0, 2.0, 3.0, 4.0]),
                None,
                Some([-180.0, -1.0, 180.0, 1.0]),
            ]),
        ];
        let mut writer = TableWriter::create(&path, &fields, 2).unwrap();
        writer.write(columns.clone()).unwrap();
        writer.close(&[("geo".into(), "{}".into())]).unwrap();

        let names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(column_names(&path).unwrap(), names);
        let mut got: Vec<Column> = Vec::new();
        for batch in read_columns(&path, &names, 1024).unwrap() {
            for (k, (_, column)) in batch.unwrap().into_iter().enumerate() {
                match (got.get_mut(k), column) {
                    (None, c) => got.push(c),
                    (Some(Column::Str(a)), Column::Str(b)) => a.extend(b),
                    (Some(Column::UInt(a)), Column::UInt(b)) => a.extend(b),
                    (Some(Column::Int(a)), Column::Int(b)) => a.extend(b),
                    (Some(Column::Float(a)), Column::Float(b)) => a.extend(b),
                    (Some(Column::Bool(a)), Column::Bool(b)) => a.extend(b),
                    (Some(Column::Binary(a)), Column::Binary(b)) => a.extend(b),
                    (Some(Column::Bbox(a)), Column::Bbox(b)) => a.extend(b),
                    _ => panic!("kinds changed between batches"),
                }
            }
        }
        assert_eq!(got, columns);
        // two row groups of 2 and 1 rows
        let reader = open(&path).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 2);
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap();
        assert!(kv
            .iter()
            .any(|k| k.key == "geo" && k.value.as_deref() == Some("{}")));
    }

    #[test]
    fn refusals_name_the_file_and_column() {
        let path = temp("refuse");
        let fields = vec![("n".to_string(), Kind::U8)];
        let mut writer = TableWriter::create(&path, &fields, 10).unwrap();
        let err = writer
            .write(vec![Column::UInt(vec![Some(256)])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"n\"") && err.contains("256"), "{err}");
        let err = writer
            .write(vec![Column::Str(vec![None])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not fit"), "{err}");
        writer.close(&[]).unwrap();
        let err = read_columns(&path, &["missing".to_string()], 10)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no column \"missing\""), "{err}");
        std::fs::write(&path, b"not parquet").unwrap();
        let err = column_names(&path).unwrap_err().to_string();
        assert!(
            err.contains("not a readable Parquet file") && err.contains("t.parquet"),
            "{err}"
        );
        assert!(Kind::parse("date").is_err());
    }
}
