//! The parts of sync messages that depend only on a document's heads, computed once
//! per heads for every peer that needs them (the whole document saved, every change
//! hash sorted, the bloom filter of every change), and the compacted save they share
//! with [`FlowDoc::save`](crate::FlowDoc::save).

use automerge::sync::{self, BloomFilter};
use automerge::{Automerge, ChangeHash, SaveOptions};

/// The document compressed, without changes queued for missing dependencies: what
/// [`FlowDoc::save`](crate::FlowDoc::save) returns and what the hub sends a peer that has nothing.
pub(crate) fn compacted(doc: &Automerge) -> Vec<u8> {
    doc.save_with_options(SaveOptions {
        deflate: true,
        retain_orphans: false,
    })
}

/// What sync messages to peers that share nothing with us take from the whole
/// history, kept for the heads it was computed at (see
/// `FlowDoc::generate_sync_message`). Each part is computed on first use at new
/// heads; until the heads change, every such peer shares it. At 1,000 changes the
/// three cost ~1.3 ms of compression, ~0.5 M instructions of sorting and ~0.4 M
/// of hashing into a bloom filter per peer, and hold ~13 KB, 32 KB and 1.3 KB.
#[derive(Default)]
pub(crate) struct WholeHistoryCache {
    heads: Vec<ChangeHash>,
    /// The document saved without its queued changes (never applied or validated:
    /// Automerge's own save keeps them, and they must not be forwarded).
    pub(crate) saved: Option<Vec<u8>>,
    sorted_hashes: Option<Vec<ChangeHash>>,
    pub(crate) bloom: Option<BloomFilter>,
}

impl WholeHistoryCache {
    /// Forgets what was computed at other heads than `doc`'s.
    fn at(&mut self, doc: &Automerge) -> &mut Self {
        let heads = doc.get_heads();
        self.release_unless_at(&heads);
        self.heads = heads;
        self
    }

    /// Frees everything held unless it was computed at `heads`.
    pub(crate) fn release_unless_at(&mut self, heads: &[ChangeHash]) {
        if self.heads != heads {
            *self = Self::default();
        }
    }

    /// Whether anything is held.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.saved.is_none() && self.sorted_hashes.is_none() && self.bloom.is_none()
    }
}

impl sync::WholeHistory for WholeHistoryCache {
    fn saved(&mut self, doc: &Automerge) -> Vec<u8> {
        self.at(doc)
            .saved
            .get_or_insert_with(|| compacted(doc))
            .clone()
    }

    fn sorted_hashes(&mut self, doc: &Automerge) -> Vec<ChangeHash> {
        self.at(doc)
            .sorted_hashes
            .get_or_insert_with(|| doc.all_hashes_sorted())
            .clone()
    }

    fn bloom(&mut self, doc: &Automerge) -> BloomFilter {
        self.at(doc)
            .bloom
            .get_or_insert_with(|| doc.whole_history_bloom())
            .clone()
    }
}
