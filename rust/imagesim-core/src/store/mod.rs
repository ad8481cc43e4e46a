//! Object stores (`s3://`, `gs://`, `az://`, `https://`) through `object_store`, driven from one
//! small tokio runtime so the rest of the core stays synchronous.
//!
//! Credentials and endpoints come from the standard environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`:
//! keys, `AWS_ENDPOINT` for S3-compatible stores, `AWS_ALLOW_HTTP`, `AWS_SKIP_SIGNATURE` for public
//! buckets), then for S3 from the `AWS_PROFILE` (or `default`) profile of `~/.aws/credentials` and
//! `~/.aws/config` (the private `profile` module), then instance metadata / web identity as
//! `object_store` does.
//! `object_store` retries 5xx answers, dropped connections and timeouts with exponential backoff.
//!
//! Paths stay `Path`s: a path whose text starts with `scheme://` names an object, anything else a
//! local file. [`read`], [`fetch_many`] and [`Uploads`] accept both.
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

mod profile;

/// Requests in flight at once for batch reads and chip uploads: enough to hide a store's latency
/// (tens of ms on S3) behind a few cores' worth of decoding.
pub const CONCURRENCY: usize = 32;

/// Whether a path names an object in a store rather than a local file.
pub fn is_url(path: &Path) -> bool {
    path.to_str().is_some_and(|s| {
        s.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric())
        })
    })
}

pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imagesim-io")
            .enable_all()
            .build()
            .expect("the I/O runtime starts")
    })
}

pub(crate) fn io_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            io::Error::new(io::ErrorKind::NotFound, e.to_string())
        }
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("access denied (check the credentials): {e}"),
        ),
        other => {
            let text = other.to_string();
            // S3 answers a wrong key or signature with 403 and an error code, which object_store
            // reports as a generic error: give it the kind it is.
            let denied = [
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "403 Forbidden",
            ];
            if denied.iter().any(|code| text.contains(code)) {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("access denied (check the credentials): {text}"),
                )
            } else {
                io::Error::other(text)
            }
        }
    }
}

/// The store holding a URL and the object's path in it. One store per bucket / host and settings,
/// shared by every object in it (one connection pool); new credentials or another endpoint in the
/// environment get a store of their own.
pub(crate) fn locate(text: &str) -> io::Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let url = url::Url::parse(text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("not a URL: {e}")))?;
    let mut options: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .collect();
    if matches!(url.scheme(), "s3" | "s3a") {
        let from_profile = profile::options(&options);
        options.extend(from_profile);
    }
    if url.scheme() == "http" {
        // An http:// URL is an explicit choice of plain HTTP (object_store refuses it by default).
        options.push(("allow_http".into(), "true".into()));
    }
    options.sort();
    let mut key = format!("{}://{}", url.scheme(), url.authority());
    for (k, v) in &options {
        key.push_str(&format!("|{k}={v}"));
    }
    let (store, location) = object_store::parse_url_opts(&url, options)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let shared = stores
        .entry(key)
        .or_insert_with(|| Arc::from(store))
        .clone();
    Ok((shared, location))
}

fn url_text(path: &Path) -> &str {
    path.to_str().expect("is_url checked it is UTF-8")
}

/// List the objects under a URL prefix (at most `limit` when given): `(url, size, last modified in
/// ns since the epoch)`.
pub fn list(prefix: &str, limit: Option<usize>) -> io::Result<Vec<(String, u64, i64)>> {
    let url = url::Url::parse(prefix)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("not a URL: {e}")))?;
    let (store, location) = locate(prefix)?;
    let base = format!("{}://{}", url.scheme(), url.authority());
    let stream = store.list(Some(&location));
    let listed: object_store::Result<Vec<object_store::ObjectMeta>> =
        runtime().block_on(async move {
            match limit {
                Some(n) => stream.take(n).try_collect().await,
                None => stream.try_collect().await,
            }
        });
    let items = match listed {
        Ok(items) => items,
        // Plain web servers cannot list; object_store lists HTTP with WebDAV (PROPFIND).
        Err(e)
            if url.scheme().starts_with("http")
                && !matches!(e, object_store::Error::NotFound { .. }) =>
        {
            return Err(io::Error::other(format!(
                "cannot list an http(s) location ({e}); listing needs a WebDAV server: use the \
                 s3://, gs:// or az:// URL of the bucket, or open single COGs by URL"
            )))
        }
        Err(e) => return Err(io_error(e)),
    };
    Ok(items
        .into_iter()
        .map(|m| {
            let ns = m.last_modified.timestamp_nanos_opt().unwrap_or(0);
            (format!("{base}/{}", m.location), m.size, ns)
        })
        .collect())
}

/// Size and last-modified time (ns) of an object; `None` when there is none.
pub fn head(url: &str) -> io::Result<Option<(u64, i64)>> {
    let (store, location) = locate(url)?;
    match runtime().block_on(store.head(&location)) {
        Ok(m) => Ok(Some((
            m.size,
            m.last_modified.timestamp_nanos_opt().unwrap_or(0),
        ))),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(io_error(e)),
    }
}

/// Write a whole object (a single PUT: readers see the old object or the new one, never a part).
pub fn put(url: &str, data: Vec<u8>) -> io::Result<()> {
    let (store, location) = locate(url)?;
    runtime()
        .block_on(store.put(&location, PutPayload::from(data)))
        .map(|_| ())
        .map_err(io_error)
}

/// Files up to this size go up in one PUT; larger ones in parts (S3 takes at most 5 GB per PUT,
/// and a part at a time keeps memory flat).
const MULTIPART_FROM: u64 = 64 * 1024 * 1024;
const PART_BYTES: usize = 16 * 1024 * 1024;

/// Upload a local file as an object: one PUT, or a multipart upload streamed from the file
/// (4 parts in flight; aborted on failure, so no partial object is ever visible).
pub fn put_file(url: &str, file: &Path) -> io::Result<()> {
    use std::io::Read;

    let len = std::fs::metadata(file)?.len();
    if len <= MULTIPART_FROM {
        return put(url, std::fs::read(file)?);
    }
    let (store, location) = locate(url)?;
    let mut source = std::fs::File::open(file)?;
    runtime().block_on(async move {
        let upload = store.put_multipart(&location).await.map_err(io_error)?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; PART_BYTES];
        let sent: io::Result<()> = async {
            loop {
                let n = source.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                writer.wait_for_capacity(4).await.map_err(io_error)?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        match sent {
            Ok(()) => writer.finish().await.map(|_| ()).map_err(io_error),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    })
}

/// Download an object into a local file a chunk at a time (memory holds one chunk, not the object);
/// the bytes written. The file is created (or truncated) first; on an error it is left for the caller
/// to remove.
pub fn get_file(url: &str, file: &Path) -> io::Result<u64> {
    use futures_util::StreamExt;
    use std::io::Write;

    let (store, location) = locate(url)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    runtime().block_on(async move {
        let got = store.get(&location).await.map_err(io_error)?;
        let mut chunks = got.into_stream();
        let mut written = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(io_error)?;
            out.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        out.flush()?;
        Ok(written)
    })
}

/// Remove an object (absent objects are not an error).
pub fn delete(url: &str) -> io::Result<()> {
    let (store, location) = locate(url)?;
    match runtime().block_on(store.delete(&location)) {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(io_error(e)),
    }
}

async fn get_async(path: PathBuf) -> io::Result<Bytes> {
    if !is_url(&path) {
        return std::fs::read(&path).map(Bytes::from);
    }
    let (store, location) = locate(url_text(&path))?;
    let got = store.get(&location).await.map_err(io_error)?;
    got.bytes().await.map_err(io_error)
}

/// The bytes of a local file or an object.
pub fn read(path: &Path) -> io::Result<Bytes> {
    if !is_url(path) {
        return std::fs::read(path).map(Bytes::from);
    }
    runtime().block_on(get_async(path.to_path_buf()))
}

/// Reads of many files or objects started in the background ([`CONCURRENCY`] in flight), in order.
pub struct Fetch(tokio::task::JoinHandle<Vec<io::Result<Bytes>>>);

impl Fetch {
    pub fn wait(self) -> Vec<io::Result<Bytes>> {
        runtime()
            .block_on(self.0)
            .unwrap_or_else(|e| panic!("an I/O task died: {e}"))
    }
}

/// Start reading `paths` (objects concurrently); [`Fetch::wait`] gives the bytes in order.
pub fn fetch_many(paths: &[PathBuf]) -> Fetch {
    let paths = paths.to_vec();
    Fetch(runtime().spawn(async move {
        futures_util::stream::iter(paths.into_iter().map(get_async))
            .buffered(CONCURRENCY)
            .collect()
            .await
    }))
}

/// Objects written in the background while the caller goes on; at most [`CONCURRENCY`] in flight
/// (a caller with more waits), so memory stays bounded.
pub struct Uploads {
    slots: Arc<tokio::sync::Semaphore>,
    pending: Mutex<Vec<(String, tokio::task::JoinHandle<io::Result<()>>)>>,
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads {
            slots: Arc::new(tokio::sync::Semaphore::new(CONCURRENCY)),
            pending: Mutex::new(Vec::new()),
        }
    }
}

impl Uploads {
    /// Queue `data` for `url`; `key` names the upload in [`Uploads::finish`]'s failures.
    pub fn put(&self, key: String, url: &str, data: Vec<u8>) -> io::Result<()> {
        let (store, location) = locate(url)?;
        let slot = runtime()
            .block_on(self.slots.clone().acquire_owned())
            .expect("the semaphore is never closed");
        let task = runtime().spawn(async move {
            let result = store.put(&location, PutPayload::from(data)).await;
            drop(slot);
            result.map(|_| ()).map_err(io_error)
        });
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key, task));
        Ok(())
    }

    /// Wait for every upload; the ones that failed, with why.
    pub fn finish(self) -> Vec<(String, io::Error)> {
        let pending = self.pending.into_inner().unwrap_or_else(|p| p.into_inner());
        runtime().block_on(async move {
            let mut failed = Vec::new();
            for (key, task) in pending {
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failed.push((key, e)),
                    Err(e) => {
                        failed.push((key, io::Error::other(format!("upload task died: {e}"))))
                    }
                }
            }
            failed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_local_paths() {
        assert!(is_url(Path::new("s3://bucket/key.tif")));
        assert!(is_url(Path::new("https://host/x.tif")));
        assert!(!is_url(Path::new("/data/ard/10/x.tif")));
        assert!(!is_url(Path::new("relative/path")));
        assert!(!is_url(Path::new("://nothing")));
    }

    #[test]
    fn local_files_read_through_the_same_calls() {
        let dir = std::env::temp_dir().join(format!("imagesim-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.bin");
        std::fs::write(&a, b"abc").unwrap();
        assert_eq!(&read(&a).unwrap()[..], b"abc");
        let got = fetch_many(&[a.clone(), dir.join("missing")]).wait();
        assert_eq!(&got[0].as_ref().unwrap()[..], b"abc");
        assert_eq!(got[1].as_ref().unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
