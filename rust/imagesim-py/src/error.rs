//! Core errors to `imagesim.errors` exceptions. The classes are defined in Python (one
//! hierarchy, inheriting builtins) and imported here by name.
use imagesim_core::Error;
use pyo3::PyErr;

pyo3::import_exception!(imagesim.errors, GridError);
pyo3::import_exception!(imagesim.errors, ImagesimFileNotFoundError);
pyo3::import_exception!(imagesim.errors, ImagesimIOError);
pyo3::import_exception!(imagesim.errors, ImagesimPermissionError);
pyo3::import_exception!(imagesim.errors, CorruptTiffError);
pyo3::import_exception!(imagesim.errors, UnsupportedTiffError);
pyo3::import_exception!(imagesim.errors, GeoreferenceError);
pyo3::import_exception!(imagesim.errors, WindowError);
pyo3::import_exception!(imagesim.errors, JpegError);
pyo3::import_exception!(imagesim.errors, InvalidArgumentError);
pyo3::import_exception!(imagesim.errors, TableError);

pub fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::Grid(_) => GridError::new_err(msg),
        Error::NotFound { .. } => ImagesimFileNotFoundError::new_err(msg),
        Error::Io { .. } => ImagesimIOError::new_err(msg),
        Error::PermissionDenied { .. } => ImagesimPermissionError::new_err(msg),
        Error::CorruptTiff { .. } | Error::CorruptCog { .. } => CorruptTiffError::new_err(msg),
        Error::UnsupportedTiff { .. } => UnsupportedTiffError::new_err(msg),
        Error::Georeference { .. } => GeoreferenceError::new_err(msg),
        Error::Window { .. } => WindowError::new_err(msg),
        Error::Jpeg { .. } => JpegError::new_err(msg),
        Error::Table { .. } => TableError::new_err(msg),
        Error::InvalidArgument(_) => InvalidArgumentError::new_err(msg),
    }
}
