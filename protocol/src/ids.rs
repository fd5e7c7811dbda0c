//! Flow ids appear in URLs, frame headers (one length byte) and store keys, so they are
//! restricted to a short, URL-safe alphabet.

use crate::ProtocolError;

/// Longest accepted flow id, in bytes.
pub const MAX_FLOW_ID_LEN: usize = 128;

/// Accepts `[A-Za-z0-9_.:-]{1,128}`, except `.` and `..`: as a URL path segment
/// (`/v1/flows/{id}`) those name the parent, so such a flow could never be read over
/// HTTP.
pub fn validate_flow_id(id: &str) -> Result<(), ProtocolError> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= MAX_FLOW_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::InvalidFlowId(truncate(id, 40)))
    }
}

/// Shortens untrusted text before it is echoed in an error message.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_reasonable_ids() {
        for id in [
            "demo",
            "flow-1",
            "org:acme.flow_2",
            "...",
            ".a",
            &"a".repeat(128),
        ] {
            assert!(validate_flow_id(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_bad_ids() {
        for id in ["", "a b", "../etc", "é", &"a".repeat(129), "x/y", ".", ".."] {
            assert!(validate_flow_id(id).is_err(), "{id}");
        }
    }
}
