//! One error type for the whole core. Every variant names the file (when there is one) so the
//! Python side can print a single clear line. The binding crate maps each kind to one exception
//! class of `imagesim.errors`.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A quadkey, tile, zone or chip name that does not follow the ARD grid rules.
    #[error("{0}")]
    Grid(String),

    /// The file does not exist (or a chip's COG could not be found).
    #[error("{path}: {msg}")]
    NotFound { path: PathBuf, msg: String },

    /// Access refused: file permissions, or an object store rejecting the credentials.
    #[error("{path}: {msg}")]
    PermissionDenied { path: PathBuf, msg: String },

    /// Operating-system I/O failure on a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The TIFF structure or a tile is damaged (truncated, bad offsets, IFD loops, bad codec data).
    #[error("{path}: corrupt TIFF: {msg}")]
    CorruptTiff { path: PathBuf, msg: String },

    /// A problem of a whole image found while decoding one of its tiles, true of every tile
    /// (zeroed JPEGTables, JPEG tiles without the tables they need): `chip` fails the COG once
    /// instead of every chip.
    #[error("{path}: corrupt TIFF: {msg}")]
    CorruptCog { path: PathBuf, msg: String },

    /// A valid TIFF that uses something we do not read (sample format, compression, layout).
    #[error("{path}: unsupported TIFF: {msg}")]
    UnsupportedTiff { path: PathBuf, msg: String },

    /// The COG's georeferencing does not match the ARD cell it is filed under.
    #[error("{path}: georeference mismatch: {msg}")]
    Georeference { path: PathBuf, msg: String },

    /// A window or overview level outside the image.
    #[error("{path}: {msg}")]
    Window { path: PathBuf, msg: String },

    /// JPEG encode failure, or a chip file that does not decode (`msg` is a
    /// [`crate::jpeg::Problem`]: empty file, truncated JPEG, not a JPEG, …).
    #[error("{path}: {msg}")]
    Jpeg { path: PathBuf, msg: String },

    /// A Parquet table that cannot be read or written (damaged, or a column of a type not read).
    #[error("{path}: {msg}")]
    Table { path: PathBuf, msg: String },

    /// A caller supplied an invalid option value.
    #[error("{0}")]
    InvalidArgument(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            return Error::NotFound {
                path: path.as_ref().to_path_buf(),
                msg: "no such file or directory".into(),
            };
        }
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            return Error::PermissionDenied {
                path: path.as_ref().to_path_buf(),
                msg: source.to_string(),
            };
        }
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn corrupt(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::CorruptTiff {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn corrupt_cog(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::CorruptCog {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    /// True of the whole image, not one tile: a COG whose chips would all fail this way fails once.
    pub fn is_whole_image(&self) -> bool {
        matches!(
            self,
            Error::CorruptCog { .. } | Error::UnsupportedTiff { .. }
        )
    }
    pub fn unsupported(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::UnsupportedTiff {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn jpeg(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Jpeg {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn window(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Window {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}
