//! [`Targets`]: the hub nodes of a run, and which one each client uses.

use crate::error::{Error, Result};

/// Hub base URLs (`ws://host:port`), in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    urls: Vec<String>,
}

impl Targets {
    pub fn parse(list: &[String]) -> Result<Self> {
        let mut urls = Vec::new();
        for raw in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let url = ws_base(raw)?;
            urls.push(url);
        }
        if urls.is_empty() {
            return Err(Error::usage("--targets names no hub"));
        }
        Ok(Targets { urls })
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The target of client `i` (round-robin).
    pub fn url(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    pub fn all(&self) -> &[String] {
        &self.urls
    }
}

/// `ws://…` (or `wss://…`) without a trailing slash; `http(s)://` is mapped.
pub fn ws_base(url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    let mapped = if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if url.starts_with("ws://") || url.starts_with("wss://") {
        url.to_owned()
    } else {
        return Err(Error::usage(format!(
            "target `{url}`: expected ws://host:port (or http://)"
        )));
    };
    Ok(mapped)
}

/// The HTTP base of a hub base URL.
pub fn http_base(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_spreads_round_robin() {
        let t = Targets::parse(&["ws://a:1/".into(), " http://b:2 ".into()]).unwrap();
        assert_eq!(t.all(), ["ws://a:1", "ws://b:2"]);
        assert_eq!(t.url(0), "ws://a:1");
        assert_eq!(t.url(3), "ws://b:2");
        assert_eq!(http_base(t.url(1)), "http://b:2");
        assert!(Targets::parse(&[]).is_err());
        assert!(Targets::parse(&["ftp://x".into()]).is_err());
    }
}
