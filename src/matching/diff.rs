//! Field-level differences between a recorded request and a received one, for miss
//! reports and for volatile-field suggestions.

use std::fmt::Write as _;

use serde_json::Value;

use super::{json_equal, NormalBody, Normalized};

/// One field that differs between a recorded request and a received one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// `method`, `path`, `path segment N`, `query NAME`, `body`, or `body POINTER`.
    pub field: String,
    pub recorded: String,
    pub received: String,
}

/// At most this many differences are reported for one pair.
const MAX_DIFFERENCES: usize = 20;

/// Lists how `received` differs from `recorded`, field by field.
pub fn differences(recorded: &Normalized, received: &Normalized) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut push = |field: String, recorded: String, received: String| {
        if out.len() < MAX_DIFFERENCES {
            out.push(Difference {
                field,
                recorded,
                received,
            });
        }
    };
    if recorded.method != received.method {
        push(
            "method".into(),
            recorded.method.clone(),
            received.method.clone(),
        );
    }
    if recorded.host != received.host {
        push(
            "host".into(),
            recorded.host.clone().unwrap_or_default(),
            received.host.clone().unwrap_or_default(),
        );
    }
    if recorded.path != received.path {
        let a: Vec<&str> = recorded.path.split('/').collect();
        let b: Vec<&str> = received.path.split('/').collect();
        if a.len() == b.len() {
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                if x != y {
                    push(format!("path segment {i}"), (*x).into(), (*y).into());
                }
            }
        } else {
            push("path".into(), recorded.path.clone(), received.path.clone());
        }
    }
    if recorded.query != received.query {
        let mut names: Vec<&String> = recorded
            .query
            .iter()
            .chain(&received.query)
            .map(|(n, _)| n)
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let (a, b) = (values(&recorded.query, name), values(&received.query, name));
            if a != b {
                push(format!("query {name}"), a, b);
            }
        }
    }
    if recorded.headers != received.headers {
        let mut names: Vec<&String> = recorded
            .headers
            .iter()
            .chain(&received.headers)
            .map(|(n, _)| n)
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let (a, b) = (
                values(&recorded.headers, name),
                values(&received.headers, name),
            );
            if a != b {
                push(format!("header {name}"), a, b);
            }
        }
    }
    match (&recorded.body, &received.body) {
        (NormalBody::Json(a), NormalBody::Json(b)) => {
            let mut found = Vec::new();
            json_differences(a, b, &mut String::new(), &mut found);
            for (pointer, x, y) in found {
                push(format!("body {pointer}"), x, y);
            }
        }
        (a, b) if a != b => push("body".into(), describe_body(a), describe_body(b)),
        _ => {}
    }
    out
}

/// Every value of `name` among sorted pairs, joined; `(absent)` when there is none.
fn values(pairs: &[(String, String)], name: &str) -> String {
    let found: Vec<&str> = pairs
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect();
    if found.is_empty() {
        "(absent)".to_owned()
    } else {
        found.join(", ")
    }
}

fn describe_body(body: &NormalBody) -> String {
    match body {
        NormalBody::Empty => "(empty)".to_owned(),
        NormalBody::Json(value) => truncate(&value.to_string()),
        NormalBody::Bytes(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => truncate(text),
            Err(_) => format!("({} bytes, not UTF-8)", bytes.len()),
        },
    }
}

fn truncate(text: &str) -> String {
    const LIMIT: usize = 120;
    if text.len() <= LIMIT {
        return text.to_owned();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn json_differences(
    a: &Value,
    b: &Value,
    pointer: &mut String,
    out: &mut Vec<(String, String, String)>,
) {
    if out.len() >= MAX_DIFFERENCES || json_equal(a, b) {
        return;
    }
    let shown = |v: Option<&Value>| v.map_or("(absent)".to_owned(), |v| truncate(&v.to_string()));
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&crate::graph::escape_pointer_token(name));
                match (x.get(name), y.get(name)) {
                    (Some(p), Some(q)) => json_differences(p, q, pointer, out),
                    (p, q) => out.push((pointer.clone(), shown(p), shown(q))),
                }
                pointer.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                let len = pointer.len();
                let _ = write!(pointer, "/{i}");
                json_differences(p, q, pointer, out);
                pointer.truncate(len);
            }
        }
        _ => {
            let at = if pointer.is_empty() { "/" } else { pointer };
            out.push((at.to_owned(), shown(Some(a)), shown(Some(b))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::{normalize, MatchRules, RequestView};

    fn view<'a>(method: &'a str, uri: &'a str, body: &'a [u8]) -> RequestView<'a> {
        RequestView {
            method,
            host: None,
            path_and_query: uri,
            content_type: Some("application/json"),
            content_encoding: None,
            headers: &[],
            body,
        }
    }

    #[test]
    fn differences_name_the_pointer() {
        let a = normalize(
            &view(
                "PATCH",
                "/v1.0/d/1?x=1",
                br#"{"status":"compliant","n":{"m":[1,2]}}"#,
            ),
            &MatchRules::default(),
        );
        let b = normalize(
            &view(
                "PATCH",
                "/v1.0/d/2?x=2",
                br#"{"status":"error","n":{"m":[1,3]}}"#,
            ),
            &MatchRules::default(),
        );
        let fields: Vec<String> = differences(&a, &b).into_iter().map(|d| d.field).collect();
        assert_eq!(
            fields,
            vec!["path segment 3", "query x", "body /n/m/1", "body /status"]
        );
        assert!(differences(&a, &a).is_empty());
    }

    #[test]
    fn header_differences_are_named() {
        let rules = MatchRules {
            headers: vec!["prefer".into()],
            ..MatchRules::default()
        };
        let with = |value: &str| {
            let headers = vec![crate::record::Header::new("Prefer", value.as_bytes())];
            let mut request = view("GET", "/x", b"");
            request.headers = &headers;
            normalize(&request, &rules)
        };
        let fields: Vec<String> = differences(&with("a"), &with("b"))
            .into_iter()
            .map(|d| d.field)
            .collect();
        assert_eq!(fields, vec!["header prefer"]);
        assert_ne!(with("a").key(), with("b").key());
    }
}
