//! Flow ids and automerge-repo DocumentIds, both ways: a DocumentId is the
//! base58check (`bs58check`, as automerge-repo encodes them) of the flow id's bytes.
//! [`DocumentIds`] remembers them for the whole hub.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flowhub_protocol::validate_flow_id;

/// base58check, as automerge-repo encodes DocumentIds (`bs58check`).
pub fn base58check_encode(payload: &[u8]) -> String {
    bs58::encode(payload).with_check().into_string()
}

pub fn base58check_decode(s: &str) -> Option<Vec<u8>> {
    bs58::decode(s).with_check(None).into_vec().ok()
}

/// The automerge-repo DocumentId of a flow: base58check of the flow id's bytes.
pub fn flow_document_id(flow_id: &str) -> String {
    base58check_encode(flow_id.as_bytes())
}

/// The flow a DocumentId names, if any. DocumentIds made by `repo.create()` (16
/// random bytes) name no flow.
pub fn flow_of_document_id(document_id: &str) -> Option<String> {
    let bytes = base58check_decode(document_id)?;
    let flow_id = String::from_utf8(bytes).ok()?;
    validate_flow_id(&flow_id).ok()?;
    Some(flow_id)
}

/// Most DocumentIds [`DocumentIds`] remembers each way; a full memo is cleared.
const DOCUMENT_ID_MEMO: usize = 4096;

/// flow id <-> DocumentId, remembered for the whole hub and shared by every
/// automerge-repo connection. Every message of a peer names its document, and
/// base58check hashes twice (SHA-256) each way: about half of what this transport
/// added to an open of a 1,000-node flow. Shared rather than per connection, so an
/// idle session keeps no copy (issue #13 counts its bytes).
///
/// Bounded: an id is always recomputable, so when either side holds 4,096 entries
/// (`DOCUMENT_ID_MEMO`) it is cleared, and a peer naming many flows costs hashing,
/// never memory. DocumentIds that name no flow are not remembered.
#[derive(Default)]
pub struct DocumentIds {
    memo: Mutex<DocumentIdMemo>,
}

#[derive(Default)]
struct DocumentIdMemo {
    flow_of: HashMap<Box<str>, Arc<str>>,
    document_of: HashMap<Arc<str>, Arc<str>>,
}

impl DocumentIds {
    /// [`flow_of_document_id`], remembered.
    pub fn flow_of(&self, document_id: &str) -> Option<Arc<str>> {
        if let Some(flow) = self.lock().flow_of.get(document_id) {
            return Some(Arc::clone(flow));
        }
        let flow: Arc<str> = flow_of_document_id(document_id)?.into();
        let mut memo = self.lock();
        if memo.flow_of.len() >= DOCUMENT_ID_MEMO {
            memo.flow_of.clear();
        }
        memo.flow_of.insert(document_id.into(), Arc::clone(&flow));
        Some(flow)
    }

    /// [`flow_document_id`], remembered.
    pub fn document_of(&self, flow_id: &str) -> Arc<str> {
        if let Some(id) = self.lock().document_of.get(flow_id) {
            return Arc::clone(id);
        }
        let id: Arc<str> = flow_document_id(flow_id).into();
        let mut memo = self.lock();
        if memo.document_of.len() >= DOCUMENT_ID_MEMO {
            memo.document_of.clear();
        }
        memo.document_of.insert(flow_id.into(), Arc::clone(&id));
        id
    }

    /// Plants a pair in the memo, so a test can tell an answer from the memo from a
    /// computed one.
    #[cfg(test)]
    pub(crate) fn plant(&self, flow_id: &str, document_id: &str) {
        let mut memo = self.lock();
        memo.flow_of.insert(document_id.into(), flow_id.into());
        memo.document_of.insert(flow_id.into(), document_id.into());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DocumentIdMemo> {
        // The memo holds only recomputable ids: one poisoned by a panic elsewhere is
        // still correct.
        self.memo.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids_match_bs58check() {
        // Vectors from the `bs58check` npm package automerge-repo uses.
        assert_eq!(flow_document_id("demo"), "HnyCRLDpoJx");
        assert_eq!(flow_document_id("flow-1"), "6kkcGYqhk4c772");
        assert_eq!(base58check_encode(&[0u8; 16]), "11111111111111114Ki9Gx");
        assert_eq!(flow_of_document_id("HnyCRLDpoJx").as_deref(), Some("demo"));
        assert_eq!(
            base58check_decode("11111111111111114Ki9Gx"),
            Some(vec![0u8; 16])
        );
    }

    #[test]
    fn random_and_corrupt_document_ids_name_no_flow() {
        // A repo.create() id: 16 bytes that are not a valid flow id.
        let random =
            base58check_encode(&[0x9c, 0x01, 0xff, 0x10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(flow_of_document_id(&random), None);
        assert_eq!(flow_of_document_id("HnyCRLDpoJy"), None); // bad checksum
        assert_eq!(flow_of_document_id("0OIl"), None); // not base58
        assert_eq!(flow_of_document_id(""), None);
    }

    #[test]
    fn the_memo_answers_as_the_functions_do_and_stays_bounded() {
        let ids = DocumentIds::default();
        for round in 0..2 {
            assert_eq!(&*ids.document_of("demo"), "HnyCRLDpoJx", "round {round}");
            assert_eq!(ids.flow_of("HnyCRLDpoJx").as_deref(), Some("demo"));
            // Ids that name no flow are answered, never remembered.
            assert_eq!(ids.flow_of("HnyCRLDpoJy"), None);
            assert_eq!(ids.flow_of(""), None);
        }
        assert_eq!(ids.lock().flow_of.len(), 1);
        // Answered from the memo, not computed again.
        ids.plant("planted-flow", "planted-id");
        assert_eq!(&*ids.document_of("planted-flow"), "planted-id");
        assert_eq!(ids.flow_of("planted-id").as_deref(), Some("planted-flow"));
        for i in 0..DOCUMENT_ID_MEMO + 10 {
            let flow = format!("flow-{i}");
            let id = ids.document_of(&flow);
            assert_eq!(*id, flow_document_id(&flow));
            assert_eq!(ids.flow_of(&id).as_deref(), Some(flow.as_str()));
        }
        let memo = ids.lock();
        assert!(memo.flow_of.len() <= DOCUMENT_ID_MEMO);
        assert!(memo.document_of.len() <= DOCUMENT_ID_MEMO);
    }
}
