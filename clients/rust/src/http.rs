//! The hub's HTTP API: [`fetch_flow`].

use flowhub_protocol::ErrorCode;
use serde::Deserialize;

use crate::endpoint::flow_url;
use crate::{ClientError, DEFAULT_TIMEOUT};

/// `GET {base}/v1/flows/{flow_id}` with the token as a bearer token. Returns the flow
/// as JSON: `{id, name, heads, nodes, edges}`.
///
/// `base_url` may be the WebSocket base (`ws://host:port`, mapped to `http://`) or an
/// HTTP one. A typed JSON error body (`{"error":{"code","message"}}`, e.g. `not_found`
/// for an unknown flow) is [`ClientError::Server`]; a 401 is
/// [`ClientError::Unauthorized`]; anything else that fails is [`ClientError::Http`].
pub async fn fetch_flow(
    base_url: &str,
    flow_id: &str,
    token: &str,
) -> Result<serde_json::Value, ClientError> {
    let url = flow_url(base_url, flow_id)?;
    // A client per call: a pooled client outlives the runtime it was first used on,
    // which breaks callers that run one runtime per test.
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .timeout(DEFAULT_TIMEOUT)
        .send()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| ClientError::Http(format!("reading the body: {e}")))?;
    if (200..300).contains(&status) {
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Http(format!("HTTP {status}: body is not JSON: {e}")))
    } else {
        Err(error_from_body(status, &body))
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: ErrorCode,
    message: String,
}

/// The error for a non-2xx response.
fn error_from_body(status: u16, body: &[u8]) -> ClientError {
    if status == 401 {
        return ClientError::Unauthorized;
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error: ErrorDetail { code, message },
        }) => ClientError::Server { code, message },
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            ClientError::Http(format!("HTTP {status}: {text}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_error_bodies_become_server_errors() {
        let body = br#"{"error":{"code":"not_found","message":"no flow `x`"}}"#;
        match error_from_body(404, body) {
            ClientError::Server { code, message } => {
                assert_eq!(code, ErrorCode::NotFound);
                assert_eq!(message, "no flow `x`");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            error_from_body(401, b""),
            ClientError::Unauthorized
        ));
        assert!(
            matches!(error_from_body(502, b"<html>"), ClientError::Http(m) if m.contains("502"))
        );
        assert!(matches!(
            error_from_body(404, br#"{"error":{"code":"weird","message":"m"}}"#),
            ClientError::Http(_)
        ));
    }

    #[tokio::test]
    async fn unreachable_hub_is_an_http_error() {
        // Port 9 (discard) on localhost is essentially never listening.
        let err = fetch_flow("ws://127.0.0.1:9", "f", "t").await.unwrap_err();
        assert!(matches!(err, ClientError::Http(_)), "{err:?}");
        let err = fetch_flow("not a url", "f", "t").await.unwrap_err();
        assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
    }
}
