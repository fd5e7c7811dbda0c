//! The hub's HTTP API, for callers that want no WebSocket or Automerge: [`fetch_flow`],
//! and [`FlowApi`] for typed edits as JSON, diffs, restore, history and named versions
//! (`docs/PROTOCOL.md`, "HTTP").

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

/// The answer to [`FlowApi::edit`] and [`FlowApi::restore`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EditsApplied {
    /// Hex hash of the change the edits made (or had made, `replayed`).
    pub change: String,
    /// The flow's heads after it.
    pub heads: Vec<String>,
    /// The idempotency key named an earlier request: nothing was applied now.
    pub replayed: bool,
}

/// One flow's HTTP API (`POST …/edits`, `GET …/diff`, `POST …/restore`,
/// `GET …/history`, `…/versions`). Versions are written as the hub reads them:
/// comma-separated hex heads, `version:NAME` or `run:RUN_ID`.
#[derive(Debug, Clone)]
pub struct FlowApi {
    base: url::Url,
    token: String,
}

impl FlowApi {
    /// `base_url` as for [`fetch_flow`] (`ws://` maps to `http://`).
    pub fn new(base_url: &str, flow_id: &str, token: &str) -> Result<Self, ClientError> {
        Ok(FlowApi {
            base: flow_url(base_url, flow_id)?,
            token: token.to_owned(),
        })
    }

    fn url(&self, tail: &[&str]) -> Result<url::Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| ClientError::Connect("the hub url cannot take a path".into()))?
            .extend(tail);
        Ok(url)
    }

    /// Applies typed edits as one change made by the hub for this token's user;
    /// with a key, a retry applies nothing and answers with the first change.
    pub async fn edit(
        &self,
        edits: &[flowhub_crdt::Edit],
        idempotency_key: Option<&str>,
    ) -> Result<EditsApplied, ClientError> {
        let body = serde_json::json!({"edits": edits, "idempotency_key": idempotency_key});
        let value = send(self.post(self.url(&["edits"])?, &body)).await?;
        parse(value)
    }

    /// The typed diff from one version to another (`to: None`: now).
    pub async fn diff(
        &self,
        from: &str,
        to: Option<&str>,
    ) -> Result<flowhub_crdt::FlowDiff, ClientError> {
        let mut url = self.url(&["diff"])?;
        url.query_pairs_mut().append_pair("from", from);
        if let Some(to) = to {
            url.query_pairs_mut().append_pair("to", to);
        }
        parse(send(self.get(url)).await?)
    }

    /// Makes the flow equal to an earlier version, as one new change.
    pub async fn restore(
        &self,
        to: &str,
        idempotency_key: Option<&str>,
    ) -> Result<EditsApplied, ClientError> {
        let body = serde_json::json!({"to": to, "idempotency_key": idempotency_key});
        parse(send(self.post(self.url(&["restore"])?, &body)).await?)
    }

    /// A page of the flow's history (`{sessions, next_before}`, see PROTOCOL.md).
    pub async fn history(
        &self,
        limit: usize,
        before: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut url = self.url(&["history"])?;
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string());
        if let Some(before) = before {
            url.query_pairs_mut().append_pair("before", before);
        }
        send(self.get(url)).await
    }

    /// Pins the current heads under `name`.
    pub async fn name_version(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        send(self.post(self.url(&["versions"])?, &serde_json::json!({"name": name}))).await
    }

    /// The named versions, oldest first.
    pub async fn versions(&self) -> Result<serde_json::Value, ClientError> {
        send(self.get(self.url(&["versions"])?)).await
    }

    /// Deletes a named version.
    pub async fn delete_version(&self, name: &str) -> Result<(), ClientError> {
        let request = reqwest::Client::new()
            .delete(self.url(&["versions", name])?)
            .bearer_auth(&self.token)
            .timeout(DEFAULT_TIMEOUT);
        send(request).await.map(|_| ())
    }

    /// Follows the flow as JSON over Server-Sent Events (`GET …/stream`): the whole
    /// flow, then JSON patches applied here. `resume`: the heads and flow of a
    /// previous stream ([`JsonFlowStream::into_resume`]), to continue with one patch.
    pub async fn watch_json(
        &self,
        resume: Option<(String, serde_json::Value)>,
    ) -> Result<JsonFlowStream, ClientError> {
        let (since, flow) = match resume {
            Some((heads, flow)) => (Some(heads), flow),
            None => (None, serde_json::Value::Null),
        };
        let mut request = reqwest::Client::new()
            .get(self.url(&["stream"])?)
            .bearer_auth(&self.token);
        if let Some(since) = since.as_deref().filter(|h| !h.is_empty()) {
            request = request.header("last-event-id", since);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response.bytes().await.unwrap_or_default();
            return Err(error_from_body(status, &body));
        }
        Ok(JsonFlowStream {
            response,
            buf: String::new(),
            flow,
            heads: since.unwrap_or_default(),
        })
    }

    fn get(&self, url: url::Url) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .get(url)
            .bearer_auth(&self.token)
            .timeout(DEFAULT_TIMEOUT)
    }

    fn post(&self, url: url::Url, body: &serde_json::Value) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(&self.token)
            .timeout(DEFAULT_TIMEOUT)
            .json(body)
    }
}

/// A flow followed as JSON ([`FlowApi::watch_json`]).
pub struct JsonFlowStream {
    response: reqwest::Response,
    buf: String,
    flow: serde_json::Value,
    heads: String,
}

impl JsonFlowStream {
    /// The flow's next version: waits for the next event and applies it. `None` when
    /// the hub ended the stream (it drains: reconnect with [`JsonFlowStream::heads`]).
    pub async fn next(&mut self) -> Result<Option<&serde_json::Value>, ClientError> {
        loop {
            let Some(end) = self.buf.find("\n\n") else {
                match self
                    .response
                    .chunk()
                    .await
                    .map_err(|e| ClientError::Http(e.to_string()))?
                {
                    Some(chunk) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                    None => return Ok(None),
                }
                continue;
            };
            let block: String = self.buf.drain(..end + 2).collect();
            let (mut kind, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            let bad = |e: String| ClientError::Protocol(format!("flow stream: {e}"));
            match kind.as_str() {
                "flow" => {
                    self.flow = serde_json::from_str(&data).map_err(|e| bad(e.to_string()))?;
                }
                "patch" => {
                    #[derive(Deserialize)]
                    struct Patch {
                        patch: Vec<flowhub_protocol::json_patch::PatchOp>,
                    }
                    let patch: Patch =
                        serde_json::from_str(&data).map_err(|e| bad(e.to_string()))?;
                    flowhub_protocol::json_patch::apply(&mut self.flow, &patch.patch)
                        .map_err(|e| bad(e.to_string()))?;
                }
                "error" => {
                    return Err(match serde_json::from_str::<ErrorDetail>(&data) {
                        Ok(ErrorDetail { code, message }) => ClientError::Server { code, message },
                        Err(e) => bad(e.to_string()),
                    })
                }
                // Keep-alive comments and unknown events.
                _ => continue,
            }
            self.heads = id;
            return Ok(Some(&self.flow));
        }
    }

    /// The heads of the last version returned (comma-separated).
    pub fn heads(&self) -> &str {
        &self.heads
    }

    /// What [`FlowApi::watch_json`] needs to continue where this stream ended.
    pub fn into_resume(self) -> Option<(String, serde_json::Value)> {
        (!self.heads.is_empty() && !self.flow.is_null()).then_some((self.heads, self.flow))
    }
}

/// Sends a request; a 2xx JSON body (or `null` when empty) or the typed error.
async fn send(request: reqwest::RequestBuilder) -> Result<serde_json::Value, ClientError> {
    let response = request
        .send()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| ClientError::Http(format!("reading the body: {e}")))?;
    if !(200..300).contains(&status) {
        return Err(error_from_body(status, &body));
    }
    if body.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::Http(format!("HTTP {status}: body is not JSON: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ClientError> {
    serde_json::from_value(value)
        .map_err(|e| ClientError::Http(format!("unexpected answer from the hub: {e}")))
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
