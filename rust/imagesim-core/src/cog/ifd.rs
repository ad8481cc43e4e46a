//! TIFF / BigTIFF structure: header, IFD chain and tag values, read with positional reads.
//!
//! Everything here is defensive: the file may be hostile. Counts are bounded before anything is
//! allocated, every offset is checked against the file size, and the IFD chain is walked with a
//! visited-set so loops end instead of spinning.
use super::source::Source;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};

/// Most IFDs we follow in the main chain (real COGs have < 20: image, overviews, masks).
pub const MAX_IFDS: usize = 1024;
/// Most entries in one IFD (classic TIFF cannot exceed 65,535; BigTIFF could claim 2^64).
const MAX_ENTRIES: u64 = 65_535;
/// Largest tag value we read (tile offset arrays of a 20k x 20k COG are a few hundred KiB).
const MAX_TAG_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    Little,
    Big,
}

/// The file plus what every read needs: its size, byte order and flavour.
#[derive(Debug)]
pub struct TiffFile {
    pub source: Source,
    pub len: u64,
    pub order: ByteOrder,
    pub bigtiff: bool,
}

/// One raw IFD entry: the value bytes are either inline (`inline`) or at `offset`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub typ: u16,
    pub count: u64,
    /// The 4 (classic) or 8 (BigTIFF) value/offset bytes as stored.
    pub raw: [u8; 8],
}

/// A parsed IFD: its tags by number, and where it sits in the file.
#[derive(Debug, Clone)]
pub struct Ifd {
    /// File offset of the IFD (for messages and debugging).
    #[allow(dead_code)]
    pub offset: u64,
    pub entries: BTreeMap<u16, Entry>,
}

fn type_size(typ: u16) -> Option<u64> {
    Some(match typ {
        1 | 2 | 6 | 7 => 1,   // BYTE, ASCII, SBYTE, UNDEFINED
        3 | 8 => 2,           // SHORT, SSHORT
        4 | 9 | 11 | 13 => 4, // LONG, SLONG, FLOAT, IFD
        5 | 10 | 12 => 8,     // RATIONAL, SRATIONAL, DOUBLE
        16..=18 => 8,         // LONG8, SLONG8, IFD8
        _ => return None,
    })
}

impl TiffFile {
    pub fn open(path: &Path) -> Result<TiffFile> {
        let (source, len) = Source::open(path).map_err(|e| Error::io(path, e))?;
        let mut t = TiffFile {
            source,
            len,
            order: ByteOrder::Little,
            bigtiff: false,
        };
        let head = t
            .read_exact_at(path, 0, 8)
            .map_err(|_| Error::corrupt(path, "file too short for a TIFF header"))?;
        t.order = match &head[0..2] {
            b"II" => ByteOrder::Little,
            b"MM" => ByteOrder::Big,
            _ => {
                return Err(Error::corrupt(
                    path,
                    "not a TIFF file (bad byte-order mark)",
                ))
            }
        };
        match t.u16(&head[2..4]) {
            42 => {}
            43 => t.bigtiff = true,
            m => return Err(Error::corrupt(path, format!("not a TIFF file (magic {m})"))),
        }
        Ok(t)
    }

    /// Read exactly `n` bytes at `offset`, refusing ranges beyond the end of the file.
    pub fn read_exact_at(&self, path: &Path, offset: u64, n: u64) -> Result<Vec<u8>> {
        let end = offset
            .checked_add(n)
            .ok_or_else(|| Error::corrupt(path, "offset overflow"))?;
        if end > self.len {
            return Err(Error::corrupt(
                path,
                format!(
                    "data at {offset}+{n} runs past the end of the file ({} bytes)",
                    self.len
                ),
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.source
            .read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io(path, e))?;
        Ok(buf)
    }

    pub fn u16(&self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        match self.order {
            ByteOrder::Little => u16::from_le_bytes(a),
            ByteOrder::Big => u16::from_be_bytes(a),
        }
    }
    pub fn u32(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self.order {
            ByteOrder::Little => u32::from_le_bytes(a),
            ByteOrder::Big => u32::from_be_bytes(a),
        }
    }
    pub fn u64(&self, b: &[u8]) -> u64 {
        let a: [u8; 8] = b[..8].try_into().expect("8 bytes");
        match self.order {
            ByteOrder::Little => u64::from_le_bytes(a),
            ByteOrder::Big => u64::from_be_bytes(a),
        }
    }

    /// Offset of the first IFD (from the header).
    pub fn first_ifd_offset(&self, path: &Path) -> Result<u64> {
        if self.bigtiff {
            let h = self.read_exact_at(path, 4, 12)?;
            if self.u16(&h[0..2]) != 8 {
                return Err(Error::corrupt(path, "BigTIFF header: offset size is not 8"));
            }
            Ok(self.u64(&h[4..12]))
        } else {
            let h = self.read_exact_at(path, 4, 4)?;
            Ok(u64::from(self.u32(&h)))
        }
    }

    /// Parse the IFD at `offset`; returns it and the next IFD's offset (0 = end of chain).
    pub fn read_ifd(&self, path: &Path, offset: u64) -> Result<(Ifd, u64)> {
        let (count_size, entry_size, next_size) =
            if self.bigtiff { (8, 20, 8) } else { (2, 12, 4) };
        let cb = self.read_exact_at(path, offset, count_size)?;
        let n = if self.bigtiff {
            self.u64(&cb)
        } else {
            u64::from(self.u16(&cb))
        };
        if n == 0 || n > MAX_ENTRIES {
            return Err(Error::corrupt(
                path,
                format!("IFD at {offset} claims {n} entries"),
            ));
        }
        let body = self.read_exact_at(path, offset + count_size, n * entry_size + next_size)?;
        let mut entries = BTreeMap::new();
        for i in 0..n as usize {
            let e = &body[i * entry_size as usize..(i + 1) * entry_size as usize];
            let tag = self.u16(&e[0..2]);
            let typ = self.u16(&e[2..4]);
            let (count, raw_bytes) = if self.bigtiff {
                (self.u64(&e[4..12]), &e[12..20])
            } else {
                (u64::from(self.u32(&e[4..8])), &e[8..12])
            };
            let mut raw = [0u8; 8];
            raw[..raw_bytes.len()].copy_from_slice(raw_bytes);
            // First occurrence wins (libtiff ignores duplicates too).
            entries.entry(tag).or_insert(Entry { typ, count, raw });
        }
        let nb = &body[(n * entry_size) as usize..];
        let next = if self.bigtiff {
            self.u64(nb)
        } else {
            u64::from(self.u32(nb))
        };
        Ok((Ifd { offset, entries }, next))
    }

    /// Walk the main IFD chain. The first IFD must parse; a broken link later ends the chain
    /// (what libtiff does: it reads directories lazily and warns). Loops end the chain too.
    pub fn read_chain(&self, path: &Path) -> Result<Vec<Ifd>> {
        let mut offset = self.first_ifd_offset(path)?;
        let mut seen = HashSet::new();
        let mut ifds = Vec::new();
        while offset != 0 && ifds.len() < MAX_IFDS && seen.insert(offset) {
            match self.read_ifd(path, offset) {
                Ok((ifd, next)) => {
                    ifds.push(ifd);
                    offset = next;
                }
                Err(e) if ifds.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        if ifds.is_empty() {
            return Err(Error::corrupt(path, "no image file directory"));
        }
        Ok(ifds)
    }

    /// The raw bytes of an entry's value (bounded, inside the file).
    pub fn value_bytes(&self, path: &Path, tag: u16, e: &Entry) -> Result<Vec<u8>> {
        let size = type_size(e.typ)
            .ok_or_else(|| Error::corrupt(path, format!("tag {tag} has unknown type {}", e.typ)))?;
        let total = e
            .count
            .checked_mul(size)
            .filter(|&t| t <= MAX_TAG_BYTES)
            .ok_or_else(|| Error::corrupt(path, format!("tag {tag} claims {} values", e.count)))?;
        let inline = if self.bigtiff { 8 } else { 4 };
        if total <= inline {
            Ok(e.raw[..total as usize].to_vec())
        } else {
            let off = if self.bigtiff {
                self.u64(&e.raw)
            } else {
                u64::from(self.u32(&e.raw))
            };
            self.read_exact_at(path, off, total)
        }
    }

    /// An integer-typed tag as u64 values (BYTE/SHORT/LONG/LONG8/IFD types).
    pub fn uints(&self, path: &Path, ifd: &Ifd, tag: u16) -> Result<Option<Vec<u64>>> {
        let Some(e) = ifd.entries.get(&tag) else {
            return Ok(None);
        };
        let b = self.value_bytes(path, tag, e)?;
        let v = match e.typ {
            1 | 7 => b.iter().map(|&x| u64::from(x)).collect(),
            3 => b.chunks_exact(2).map(|c| u64::from(self.u16(c))).collect(),
            4 | 13 => b.chunks_exact(4).map(|c| u64::from(self.u32(c))).collect(),
            16 | 18 => b.chunks_exact(8).map(|c| self.u64(c)).collect(),
            t => {
                return Err(Error::corrupt(
                    path,
                    format!("tag {tag}: expected an integer type, got type {t}"),
                ))
            }
        };
        Ok(Some(v))
    }

    /// First value of an integer tag.
    pub fn uint(&self, path: &Path, ifd: &Ifd, tag: u16) -> Result<Option<u64>> {
        Ok(self.uints(path, ifd, tag)?.and_then(|v| v.first().copied()))
    }

    /// A DOUBLE (or FLOAT) tag as f64 values.
    pub fn doubles(&self, path: &Path, ifd: &Ifd, tag: u16) -> Result<Option<Vec<f64>>> {
        let Some(e) = ifd.entries.get(&tag) else {
            return Ok(None);
        };
        let b = self.value_bytes(path, tag, e)?;
        let v = match e.typ {
            12 => b
                .chunks_exact(8)
                .map(|c| f64::from_bits(self.u64(c)))
                .collect(),
            11 => b
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_bits(self.u32(c))))
                .collect(),
            t => {
                return Err(Error::corrupt(
                    path,
                    format!("tag {tag}: expected DOUBLE, got type {t}"),
                ))
            }
        };
        Ok(Some(v))
    }

    /// Raw bytes of a BYTE/UNDEFINED/ASCII tag.
    pub fn bytes(&self, path: &Path, ifd: &Ifd, tag: u16) -> Result<Option<Vec<u8>>> {
        let Some(e) = ifd.entries.get(&tag) else {
            return Ok(None);
        };
        Ok(Some(self.value_bytes(path, tag, e)?))
    }
}
