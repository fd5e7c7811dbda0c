//! Building the hub's URLs from one base URL.
//!
//! A base URL names the hub (`ws://127.0.0.1:7878`, optionally with a path prefix such
//! as `ws://proxy/flowhub`). The WebSocket endpoint is `{base}/v1/ws?token=...` with a
//! `ws`/`wss` scheme, and the HTTP API lives under the same prefix with the matching
//! `http`/`https` scheme, so either kind of base works for both.

use url::Url;

use crate::ClientError;

/// `{base}/v1/ws?token={token}` with a `ws` or `wss` scheme.
pub fn ws_url(base: &str, token: &str) -> Result<Url, ClientError> {
    let mut url = with_scheme(base, Kind::WebSocket)?;
    push_path(&mut url, &["v1", "ws"])?;
    url.query_pairs_mut().clear().append_pair("token", token);
    Ok(url)
}

/// `{base}/v1/flows/{flow_id}` with an `http` or `https` scheme. The flow id is
/// percent-encoded as one path segment.
pub fn flow_url(base: &str, flow_id: &str) -> Result<Url, ClientError> {
    let mut url = with_scheme(base, Kind::Http)?;
    push_path(&mut url, &["v1", "flows", flow_id])?;
    url.set_query(None);
    Ok(url)
}

#[derive(Clone, Copy)]
enum Kind {
    WebSocket,
    Http,
}

fn with_scheme(base: &str, kind: Kind) -> Result<Url, ClientError> {
    let mut url =
        Url::parse(base).map_err(|e| ClientError::Connect(format!("invalid url `{base}`: {e}")))?;
    let secure = match url.scheme() {
        "ws" | "http" => false,
        "wss" | "https" => true,
        other => {
            return Err(ClientError::Connect(format!(
                "unsupported scheme `{other}` in `{base}` (expected ws, wss, http or https)"
            )))
        }
    };
    let scheme = match (kind, secure) {
        (Kind::WebSocket, false) => "ws",
        (Kind::WebSocket, true) => "wss",
        (Kind::Http, false) => "http",
        (Kind::Http, true) => "https",
    };
    // Switching between these special schemes is always accepted by `url`.
    url.set_scheme(scheme)
        .map_err(|()| ClientError::Connect(format!("cannot use scheme {scheme} for `{base}`")))?;
    url.set_fragment(None);
    Ok(url)
}

fn push_path(url: &mut Url, segments: &[&str]) -> Result<(), ClientError> {
    let shown = url.to_string();
    let mut path = url
        .path_segments_mut()
        .map_err(|()| ClientError::Connect(format!("`{shown}` cannot be a base url")))?;
    path.pop_if_empty().extend(segments);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_url_appends_path_and_token() {
        let url = ws_url("ws://127.0.0.1:7878", "a.b.c").unwrap();
        assert_eq!(url.as_str(), "ws://127.0.0.1:7878/v1/ws?token=a.b.c");
    }

    #[test]
    fn websocket_url_keeps_prefix_and_maps_http() {
        let url = ws_url("http://example.com/hub/", "t").unwrap();
        assert_eq!(url.as_str(), "ws://example.com/hub/v1/ws?token=t");
        let url = ws_url("https://example.com", "t").unwrap();
        assert_eq!(url.as_str(), "wss://example.com/v1/ws?token=t");
    }

    #[test]
    fn token_is_query_encoded() {
        let url = ws_url("ws://h:1", "a b&c=d").unwrap();
        assert_eq!(url.as_str(), "ws://h:1/v1/ws?token=a+b%26c%3Dd");
        let token: Vec<_> = url.query_pairs().collect();
        assert_eq!(token[0].1, "a b&c=d");
    }

    #[test]
    fn flow_url_maps_ws_to_http() {
        let url = flow_url("ws://127.0.0.1:7878", "demo-1").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:7878/v1/flows/demo-1");
        let url = flow_url("wss://h/p?x=1", "a:b").unwrap();
        assert_eq!(url.as_str(), "https://h/p/v1/flows/a:b");
    }

    #[test]
    fn flow_id_is_one_segment() {
        let url = flow_url("ws://h", "../x y").unwrap();
        assert_eq!(url.as_str(), "http://h/v1/flows/..%2Fx%20y");
    }

    #[test]
    fn bad_bases_are_errors() {
        assert!(matches!(ws_url("nope", "t"), Err(ClientError::Connect(_))));
        assert!(matches!(
            ws_url("ftp://h", "t"),
            Err(ClientError::Connect(_))
        ));
        assert!(matches!(
            flow_url("mailto:x@y", "f"),
            Err(ClientError::Connect(_))
        ));
    }
}
