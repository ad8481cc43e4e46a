//! Where a TIFF's bytes come from: a local file (positional reads) or an object in a store
//! (`s3://`, `gs://`, `az://`, `https://`) read with HTTP range requests through `object_store`.
//!
//! Stores, credentials and retries: [`crate::store`].
//!
//! A remote object's first [`HEAD_BYTES`] are fetched once at open, so parsing the COG header
//! (IFDs, tile offsets) costs one request; chunk reads are then served from merged, aligned
//! blocks read ahead in the background.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::store::{io_error, is_url, locate, runtime};

/// Bytes read at open from a remote object (COG headers sit at the start of the file).
pub const HEAD_BYTES: u64 = 64 * 1024;
/// Chunk reads are merged into aligned blocks of this size: a COG's tiles lie in order in the
/// file, so one request serves many neighbouring tiles (a 512 px JPEG tile is ~100-200 kB).
/// 16 MiB is at the top of the range sizes AWS recommends for throughput from S3; fewer, larger
/// requests also cost a server less (a request's overhead does not grow with its size).
pub const BLOCK_BYTES: u64 = 16 * 1024 * 1024;
/// Blocks kept per open object (bounded memory: at most 8 x 16 MiB, touched blocks only).
const BLOCKS_KEPT: usize = 8;
/// Blocks fetched ahead, concurrently, while the current one is decoded.
const READ_AHEAD: u64 = 2;

/// The bytes of one TIFF.
#[derive(Debug)]
pub enum Source {
    Local(File),
    Remote(Remote),
}

pub struct Remote {
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
    len: u64,
    head: Vec<u8>,
    /// Recently used blocks, most recent last. A block is fetched once even when several
    /// threads want it (the cell is shared), and the next block is fetched ahead in the
    /// background while this one is decoded.
    blocks: Mutex<Vec<(u64, Block)>>,
}

type Block = Arc<tokio::sync::OnceCell<bytes::Bytes>>;

async fn fetch(
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
    start: u64,
    end: u64,
) -> object_store::Result<bytes::Bytes> {
    store.get_range(&location, start..end).await
}

impl Remote {
    /// The cell of block `index` (created when absent) and whether it was created now.
    fn cell(&self, index: u64) -> (Block, bool) {
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = blocks.iter().position(|(i, _)| *i == index) {
            let entry = blocks.remove(pos);
            let cell = entry.1.clone();
            blocks.push(entry);
            return (cell, false);
        }
        if blocks.len() >= BLOCKS_KEPT {
            blocks.remove(0);
        }
        let cell: Block = Arc::default();
        blocks.push((index, cell.clone()));
        (cell, true)
    }

    fn range(&self, index: u64) -> (u64, u64) {
        let start = index * BLOCK_BYTES;
        (start, (start + BLOCK_BYTES).min(self.len))
    }

    fn block(&self, index: u64) -> std::io::Result<bytes::Bytes> {
        let (cell, _) = self.cell(index);
        for next in index + 1..=index + READ_AHEAD {
            if next * BLOCK_BYTES >= self.len {
                break;
            }
            let (ahead, created) = self.cell(next);
            if created {
                let (store, location) = (self.store.clone(), self.location.clone());
                let (start, end) = self.range(next);
                runtime().spawn(async move {
                    // A failure here is retried by whoever needs the block.
                    let _ = ahead
                        .get_or_try_init(|| fetch(store, location, start, end))
                        .await;
                });
            }
        }
        let (start, end) = self.range(index);
        let (store, location) = (self.store.clone(), self.location.clone());
        let bytes = runtime()
            .block_on(cell.get_or_try_init(|| fetch(store, location, start, end)))
            .map_err(io_error)?
            .clone();
        if bytes.len() as u64 != end - start {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "store returned {} bytes for a {}-byte range",
                    bytes.len(),
                    end - start
                ),
            ));
        }
        Ok(bytes)
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.location)
    }
}

/// The object's size and first [`HEAD_BYTES`], in one request: a range GET answers with the total
/// size too (`Content-Range`), so no HEAD is needed (one round trip per COG saved).
async fn open_remote(
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
) -> object_store::Result<(u64, Vec<u8>)> {
    let options = object_store::GetOptions {
        range: Some(object_store::GetRange::Bounded(0..HEAD_BYTES)),
        ..Default::default()
    };
    match store.get_opts(&location, options).await {
        Ok(got) => {
            let len = got.meta.size;
            Ok((len, got.bytes().await?.to_vec()))
        }
        Err(e @ object_store::Error::NotFound { .. }) => Err(e),
        // An empty object has no range to give (416), and some servers refuse ranges at the
        // start: ask its size, then read.
        Err(_) => {
            let len = store.head(&location).await?.size;
            if len == 0 {
                return Ok((0, Vec::new()));
            }
            let bytes = store.get_range(&location, 0..len.min(HEAD_BYTES)).await?;
            Ok((len, bytes.to_vec()))
        }
    }
}

impl Source {
    /// Open a local file, or (for a URL) fetch the object's size and its first bytes.
    pub fn open(path: &Path) -> std::io::Result<(Source, u64)> {
        if !is_url(path) {
            let file = File::open(path)?;
            let len = file.metadata()?.len();
            return Ok((Source::Local(file), len));
        }
        let text = path.to_str().expect("is_url checked it is UTF-8");
        let (store, location) = locate(text)?;
        let (len, head) = runtime()
            .block_on(open_remote(store.clone(), location.clone()))
            .map_err(io_error)?;
        Ok((
            Source::Remote(Remote {
                store,
                location,
                len,
                head,
                blocks: Mutex::new(Vec::new()),
            }),
            len,
        ))
    }

    /// Fill `buf` from `offset` (the caller has checked the range is inside the object).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Source::Local(file) => file.read_exact_at(buf, offset),
            Source::Remote(r) => {
                let end = offset + buf.len() as u64;
                if end <= r.head.len() as u64 {
                    buf.copy_from_slice(&r.head[offset as usize..end as usize]);
                    return Ok(());
                }
                // Served from merged, aligned blocks (several requests only across block edges).
                let mut pos = offset;
                while pos < end {
                    let index = pos / BLOCK_BYTES;
                    let block = r.block(index)?;
                    let from = (pos - index * BLOCK_BYTES) as usize;
                    let take = ((end - pos) as usize).min(block.len() - from);
                    let at = (pos - offset) as usize;
                    buf[at..at + take].copy_from_slice(&block[from..from + take]);
                    pos += take as u64;
                }
                Ok(())
            }
        }
    }
}
