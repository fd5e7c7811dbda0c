//! Splitting raw Automerge storage bytes into chunks.
//!
//! A sync message's `changes` field is a list of byte blobs, and each blob may
//! itself be several concatenated chunks: automerge 0.12 packs a batch of
//! changes into one blob (v2 messages) or sends a whole saved document. We need
//! the individual changes to report which ones a message applied and to decide
//! whether it carries anything new, so we walk the chunk headers ourselves:
//!
//! `magic (4) | checksum (4) | type (1) | uleb128 length | data (length)`

use automerge::Change;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const TYPE_DOCUMENT: u8 = 0;
const TYPE_CHANGE: u8 = 1;
const TYPE_COMPRESSED_CHANGE: u8 = 2;
const TYPE_BUNDLE: u8 = 3;

/// One chunk of a storage byte sequence.
pub(crate) enum Chunk<'a> {
    /// A single (possibly compressed) change, decoded.
    Change(Box<Change>),
    /// A whole document or a bundle of changes, left encoded: decoding one costs
    /// as much as loading it, so callers only do that when they must.
    Container(&'a [u8]),
}

/// Decode an unsigned LEB128; `None` on truncation or values past u64.
fn uleb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        let part = u64::from(byte & 0x7f);
        let shift = 7 * i as u32;
        if shift == 63 && part > 1 {
            return None;
        }
        value |= part << shift;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Split `bytes` into chunks, decoding every change chunk. Any malformed or
/// unknown chunk makes the whole input an error, so callers never act on a
/// partially understood message.
pub(crate) fn split(bytes: &[u8]) -> Result<Vec<Chunk<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 9 || rest[..4] != MAGIC {
            return Err("chunk does not start with the Automerge magic bytes".into());
        }
        let chunk_type = rest[8];
        let (len, len_size) = uleb128(&rest[9..]).ok_or("bad chunk length")?;
        let total = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(9 + len_size))
            .filter(|total| *total <= rest.len())
            .ok_or("chunk length exceeds input")?;
        let (chunk, tail) = rest.split_at(total);
        out.push(match chunk_type {
            TYPE_CHANGE | TYPE_COMPRESSED_CHANGE => Chunk::Change(Box::new(
                Change::try_from(chunk).map_err(|e| format!("bad change chunk: {e}"))?,
            )),
            TYPE_DOCUMENT | TYPE_BUNDLE => Chunk::Container(chunk),
            other => return Err(format!("unknown chunk type {other}")),
        });
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uleb128_decodes_and_rejects_overflow() {
        assert_eq!(uleb128(&[0x05]), Some((5, 1)));
        assert_eq!(uleb128(&[0xe5, 0x8e, 0x26]), Some((624_485, 3)));
        assert_eq!(uleb128(&[0x80]), None);
        assert_eq!(uleb128(&[0xff; 11]), None);
        assert_eq!(
            uleb128(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Some((u64::MAX, 10))
        );
        assert_eq!(
            uleb128(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            None
        );
    }

    #[test]
    fn split_rejects_garbage_and_truncation() {
        assert!(split(b"nope").is_err());
        let mut truncated = MAGIC.to_vec();
        truncated.extend([0, 0, 0, 0, TYPE_CHANGE, 100]);
        assert!(split(&truncated).is_err());
        assert!(split(&[]).is_ok_and(|c| c.is_empty()));
    }
}
