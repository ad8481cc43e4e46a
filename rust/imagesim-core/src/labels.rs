//! Multilabel encodings: sparse class-id lists ⇄ fixed-width bitsets of `u64` words.
//!
//! A row of `words_for(n_classes)` words holds class `c` in bit `c % 64` of word `c / 64`
//! (least significant bit first), so the bytes of a row in little-endian order equal
//! `numpy.packbits(dense_row, bitorder="little")` padded to whole words.
//! Sparse lists use the Arrow layout: a flat `ids` array and `offsets` with one more entry
//! than there are rows.
use crate::error::{Error, Result};

/// Number of `u64` words that hold `n_classes` bits (at least one, so a row always exists).
pub fn words_for(n_classes: usize) -> usize {
    n_classes.div_ceil(64).max(1)
}

fn check_offsets(offsets: &[i64], n_ids: usize) -> Result<usize> {
    let Some((&first, rest)) = offsets.split_first() else {
        return Err(Error::InvalidArgument(
            "label offsets are empty: need rows + 1 entries".into(),
        ));
    };
    if first != 0 {
        return Err(Error::InvalidArgument(format!(
            "label offsets start at {first}, not 0"
        )));
    }
    let mut prev = first;
    for &o in rest {
        if o < prev {
            return Err(Error::InvalidArgument(format!(
                "label offsets decrease ({prev} then {o})"
            )));
        }
        prev = o;
    }
    if prev as usize != n_ids {
        return Err(Error::InvalidArgument(format!(
            "label offsets end at {prev} but there are {n_ids} ids"
        )));
    }
    Ok(offsets.len() - 1)
}

/// Pack sparse rows into bitsets (`rows × words_for(n_classes)` words, row-major).
/// Duplicate ids in a row are harmless; an id `>= n_classes` is an error.
pub fn pack(ids: &[u32], offsets: &[i64], n_classes: usize) -> Result<Vec<u64>> {
    let rows = check_offsets(offsets, ids.len())?;
    let words = words_for(n_classes);
    let mut out = vec![0u64; rows * words];
    for (r, span) in offsets.windows(2).enumerate() {
        let row = &mut out[r * words..(r + 1) * words];
        for &id in &ids[span[0] as usize..span[1] as usize] {
            let c = id as usize;
            if c >= n_classes {
                return Err(Error::InvalidArgument(format!(
                    "label id {id} in row {r} is not below the number of classes ({n_classes})"
                )));
            }
            row[c / 64] |= 1u64 << (c % 64);
        }
    }
    Ok(out)
}

fn check_bits(bits: &[u64], words: usize, n_classes: usize) -> Result<usize> {
    if words != words_for(n_classes) {
        return Err(Error::InvalidArgument(format!(
            "bitsets have {words} words per row, {n_classes} classes need {}",
            words_for(n_classes)
        )));
    }
    if !bits.len().is_multiple_of(words) {
        return Err(Error::InvalidArgument(
            "bitset array is not a whole number of rows".into(),
        ));
    }
    // Bits past the last class would be labels nobody can name.
    let tail = n_classes % 64;
    if tail != 0 || n_classes == 0 {
        let mask = if n_classes == 0 {
            u64::MAX
        } else {
            !0u64 << tail
        };
        for (r, row) in bits.chunks_exact(words).enumerate() {
            if row[words - 1] & mask != 0 {
                return Err(Error::InvalidArgument(format!(
                    "bitset row {r} has bits set beyond class {n_classes}"
                )));
            }
        }
    }
    Ok(bits.len() / words)
}

/// Unpack bitsets into sparse rows: (`ids` ascending per row, `offsets`).
pub fn unpack(bits: &[u64], words: usize, n_classes: usize) -> Result<(Vec<u32>, Vec<i64>)> {
    let rows = check_bits(bits, words, n_classes)?;
    let total: u32 = bits.iter().map(|w| w.count_ones()).sum();
    let mut ids = Vec::with_capacity(total as usize);
    let mut offsets = Vec::with_capacity(rows + 1);
    offsets.push(0i64);
    for row in bits.chunks_exact(words) {
        for (w, &word) in row.iter().enumerate() {
            let mut x = word;
            while x != 0 {
                ids.push((w * 64) as u32 + x.trailing_zeros());
                x &= x - 1;
            }
        }
        offsets.push(ids.len() as i64);
    }
    Ok((ids, offsets))
}

/// Dense 0/1 matrix (`rows × n_classes` bytes) from bitsets.
pub fn to_dense(bits: &[u64], words: usize, n_classes: usize) -> Result<Vec<u8>> {
    let rows = check_bits(bits, words, n_classes)?;
    let mut out = vec![0u8; rows * n_classes];
    for (row, dense) in bits
        .chunks_exact(words)
        .zip(out.chunks_exact_mut(n_classes.max(1)))
    {
        for (c, v) in dense.iter_mut().enumerate() {
            *v = ((row[c / 64] >> (c % 64)) & 1) as u8;
        }
    }
    Ok(out)
}

/// Co-occurrence counts (`n_classes × n_classes`, row-major): entry (i, j) is the number of rows
/// holding both i and j; the diagonal is each class's count.
pub fn cooccurrence(bits: &[u64], words: usize, n_classes: usize) -> Result<Vec<u64>> {
    check_bits(bits, words, n_classes)?;
    let mut out = vec![0u64; n_classes * n_classes];
    let mut present = Vec::with_capacity(n_classes);
    for row in bits.chunks_exact(words) {
        present.clear();
        for (w, &word) in row.iter().enumerate() {
            let mut x = word;
            while x != 0 {
                present.push(w * 64 + x.trailing_zeros() as usize);
                x &= x - 1;
            }
        }
        for &i in &present {
            for &j in &present {
                out[i * n_classes + j] += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_across_word_boundaries() {
        let ids = [0u32, 63, 64, 129, 5, 5];
        let offsets = [0i64, 3, 3, 4, 6];
        let bits = pack(&ids, &offsets, 130).unwrap();
        assert_eq!(bits.len(), 4 * 3);
        assert_eq!(bits[0], 1 | (1 << 63));
        assert_eq!(bits[1], 1);
        let (back, off) = unpack(&bits, 3, 130).unwrap();
        assert_eq!(back, vec![0, 63, 64, 129, 5]);
        assert_eq!(off, vec![0, 3, 3, 4, 5]);
    }

    #[test]
    fn dense_and_cooccurrence() {
        let bits = pack(&[0, 2, 2, 1, 0], &[0, 2, 4, 5], 3).unwrap();
        assert_eq!(
            to_dense(&bits, 1, 3).unwrap(),
            vec![1, 0, 1, 0, 1, 1, 1, 0, 0]
        );
        let co = cooccurrence(&bits, 1, 3).unwrap();
        assert_eq!(co, vec![2, 0, 1, 0, 1, 1, 1, 1, 2]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(pack(&[3], &[0, 1], 3).is_err());
        assert!(pack(&[1], &[1, 1], 3).is_err());
        assert!(pack(&[1], &[0, 2], 3).is_err());
        assert!(pack(&[1], &[], 3).is_err());
        assert!(unpack(&[1 << 5], 1, 3).is_err());
        assert!(unpack(&[1, 2], 2, 3).is_err());
    }
}
