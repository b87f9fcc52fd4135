//! Keeps a client on the proxy: Graph answers carry absolute URLs (`@odata.nextLink`,
//! `@odata.deltaLink`, `Location`) to the upstream, and a client following them would
//! leave the proxy and stop being recorded or replayed. In reverse mode these are
//! rewritten on the way out to the proxy's own address; cassettes keep what was recorded.
//!
//! Only the origin is replaced: path and query (with `$skiptoken` / `$deltatoken`) stay
//! byte for byte, so the followed link matches its recording exactly.

use bytes::Bytes;
use serde_json::Value;

/// JSON members that hold links a client follows.
const LINK_MEMBERS: [&str; 2] = ["@odata.nextLink", "@odata.deltaLink"];

/// Where links point and where they should point instead.
#[derive(Debug, Clone)]
pub struct Rewrite<'a> {
    /// `scheme://authority` of the upstream (its links are rewritten too).
    pub upstream_origin: &'a str,
    /// `scheme://authority` of the proxy as the client reached it.
    pub proxy_origin: &'a str,
}

impl Rewrite<'_> {
    /// The link pointed at the proxy, when it points at the upstream or a Graph host.
    pub fn link(&self, link: &str) -> Option<String> {
        let rest = self.strip_known_origin(link)?;
        // Only absolute paths: a bare origin or `origin?x` would change meaning.
        if rest.is_empty() || rest.starts_with('/') {
            Some(format!("{}{rest}", self.proxy_origin))
        } else {
            None
        }
    }

    fn strip_known_origin<'l>(&self, link: &'l str) -> Option<&'l str> {
        if let Some(rest) = strip_prefix_ignore_case(link, self.upstream_origin) {
            return Some(rest);
        }
        let after_scheme = strip_prefix_ignore_case(link, "https://")
            .or_else(|| strip_prefix_ignore_case(link, "http://"))?;
        let end = after_scheme.find('/').unwrap_or(after_scheme.len());
        let authority = &after_scheme[..end];
        let host = authority.split(':').next().unwrap_or(authority);
        super::GRAPH_HOSTS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(host))
            .then(|| &after_scheme[end..])
    }

    /// The body with its link members rewritten, or `None` when nothing changed (the
    /// caller then sends the original bytes untouched). `body` must not be compressed.
    pub fn body(&self, body: &[u8]) -> Option<Bytes> {
        let looks_json = matches!(
            body.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        );
        // Cheap pre-check before parsing: no link member, nothing to do.
        if !looks_json || !LINK_FINDERS.iter().any(|f| f.find(body).is_some()) {
            return None;
        }
        let mut value: Value = serde_json::from_slice(body).ok()?;
        if !self.rewrite_value(&mut value) {
            return None;
        }
        serde_json::to_vec(&value).ok().map(Bytes::from)
    }

    /// Rewrites link members anywhere in `value` (batch answers nest them in `body`).
    pub fn rewrite_value(&self, value: &mut Value) -> bool {
        let mut changed = false;
        match value {
            Value::Object(map) => {
                for (name, item) in map.iter_mut() {
                    if LINK_MEMBERS.contains(&name.as_str()) {
                        if let Some(new) = item.as_str().and_then(|l| self.link(l)) {
                            *item = Value::String(new);
                            changed = true;
                        }
                    } else {
                        changed |= self.rewrite_value(item);
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    changed |= self.rewrite_value(item);
                }
            }
            _ => {}
        }
        changed
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Every JSON answer is scanned for [`LINK_MEMBERS`] with a SIMD substring search, set
/// up once: building a searcher per answer cost about as much as the search.
static LINK_FINDERS: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 2]> =
    std::sync::LazyLock::new(|| LINK_MEMBERS.map(memchr::memmem::Finder::new));

#[cfg(test)]
mod tests {
    use super::*;

    const REWRITE: Rewrite<'static> = Rewrite {
        upstream_origin: "http://127.0.0.1:9000",
        proxy_origin: "http://127.0.0.1:7878",
    };

    fn check(link: &str, expected: Option<&str>) {
        assert_eq!(REWRITE.link(link).as_deref(), expected, "{link}");
    }

    #[test]
    fn links() {
        check(
            "http://127.0.0.1:9000/v1.0/x?$skiptoken=a%2Bb+c",
            Some("http://127.0.0.1:7878/v1.0/x?$skiptoken=a%2Bb+c"),
        );
        check(
            "https://graph.microsoft.com/beta/x?$deltatoken=Zz",
            Some("http://127.0.0.1:7878/beta/x?$deltatoken=Zz"),
        );
        check(
            "https://dod-graph.microsoft.us/v1.0/y",
            Some("http://127.0.0.1:7878/v1.0/y"),
        );
        check(
            "https://MicrosoftGraph.ChinaCloudApi.cn:443/v1.0/y",
            Some("http://127.0.0.1:7878/v1.0/y"),
        );
        check("https://example.com/v1.0/x", None);
        check("https://graph.microsoft.com.evil.example/v1.0/x", None);
        check("http://127.0.0.1:90001/x", None);
        check("/v1.0/relative", None);
    }

    #[test]
    fn bodies() {
        let body = br#"{"value":[{"id":"a"}],"@odata.nextLink":"https://graph.microsoft.com/v1.0/x?$skiptoken=T"}"#;
        let out = REWRITE.body(body).expect("rewritten");
        let value: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            value["@odata.nextLink"],
            "http://127.0.0.1:7878/v1.0/x?$skiptoken=T"
        );
        assert_eq!(value["value"][0]["id"], "a");
        assert!(REWRITE.body(br#"{"value":[]}"#).is_none());
        assert!(REWRITE
            .body(br#"{"@odata.nextLink":"https://example.com/x"}"#)
            .is_none());
        assert!(REWRITE.body(b"not json @odata.nextLink").is_none());
    }
}
