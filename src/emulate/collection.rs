//! The deviceStatuses collection: `$top`, `$skip`, `$select` and server-driven paging
//! with `@odata.nextLink`, over stored and seeded devices.

use base64::Engine as _;
use http::StatusCode;
use serde_json::{Map, Value};

use super::{collection_context, Answer, Inner};
use crate::graph::{self, ApiVersion, DEVICE_STATUS_ODATA_TYPE, DEVICE_STATUS_VALUES};

/// Page size when the client sends no `$top`.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Graph refuses larger pages on Intune collections.
pub const MAX_PAGE_SIZE: usize = 999;

/// Properties a `$select` may name (v1.0; beta adds `platform`).
const PROPERTIES: [&str; 8] = [
    "id",
    "deviceDisplayName",
    "userName",
    "deviceModel",
    "userPrincipalName",
    "complianceGracePeriodExpirationDateTime",
    "lastReportedDateTime",
    "status",
];

const MODELS: [&str; 4] = ["Surface Laptop 5", "Surface Pro 9", "iPhone 15", "Pixel 8"];

/// Seed device number `index`: the same values every run, valid against the schema.
pub fn seed_device(index: usize) -> Map<String, Value> {
    let day = index % 28 + 1;
    let text = |s: String| Value::String(s);
    let mut entity = Map::new();
    entity.insert("@odata.type".into(), text(DEVICE_STATUS_ODATA_TYPE.into()));
    entity.insert("id".into(), text(format!("dev-{index:04}")));
    entity.insert(
        "deviceDisplayName".into(),
        text(format!("DESKTOP-{index:04}")),
    );
    entity.insert("userName".into(), text(format!("User {index}")));
    entity.insert(
        "deviceModel".into(),
        text(MODELS[index % MODELS.len()].into()),
    );
    entity.insert(
        "complianceGracePeriodExpirationDateTime".into(),
        text(format!("2026-12-{day:02}T00:00:00Z")),
    );
    entity.insert(
        "status".into(),
        text(DEVICE_STATUS_VALUES[index % DEVICE_STATUS_VALUES.len()].into()),
    );
    entity.insert(
        "lastReportedDateTime".into(),
        text(format!(
            "2026-11-{day:02}T{:02}:{:02}:00.1234567Z",
            index % 24,
            index % 60
        )),
    );
    entity.insert(
        "userPrincipalName".into(),
        text(format!("user{index}@contoso.example")),
    );
    entity
}

/// Where the collection was asked for, to build the next link from.
pub struct Page<'a> {
    /// The request path as received (ids still encoded).
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: &'a str,
    /// `scheme://host` of the emulator as the client reached it.
    pub origin: &'a str,
}

/// Continuation tokens are opaque to clients; here they encode the next offset.
fn skip_token(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset={offset}"))
}

fn parse_skip_token(token: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("offset=")?
        .parse()
        .ok()
}

fn decode(part: &str) -> String {
    percent_encoding::percent_decode_str(&part.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

pub fn list(
    inner: &Inner,
    version: ApiVersion,
    configuration_id: &str,
    page: &Page<'_>,
    client_id: Option<&str>,
) -> Answer {
    let bad_request = |message: &str| {
        graph::error_response(StatusCode::BAD_REQUEST, "BadRequest", message, client_id)
    };
    let (mut top, mut offset, mut select) = (None, 0usize, None::<Vec<String>>);
    for part in page.query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let (name, value) = (decode(name).to_ascii_lowercase(), decode(value));
        match name.as_str() {
            "$top" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => top = Some(n),
                _ => {
                    return bad_request(&format!(
                        "Invalid value '{value}' for $top: an integer from 1 to {MAX_PAGE_SIZE}."
                    ))
                }
            },
            "$skip" => match value.parse::<usize>() {
                Ok(n) => offset = n,
                Err(_) => return bad_request(&format!("Invalid value '{value}' for $skip.")),
            },
            "$skiptoken" => match parse_skip_token(&value) {
                Some(n) => offset = n,
                None => return bad_request("The $skiptoken is not valid."),
            },
            "$select" => {
                let names: Vec<String> = value
                    .split(',')
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect();
                for name in &names {
                    let known = PROPERTIES.contains(&name.as_str())
                        || (name == "platform" && version == ApiVersion::Beta);
                    if !known {
                        return bad_request(&format!(
                            "Could not find a property named '{name}' on type 'microsoft.graph.deviceConfigurationDeviceStatus'."
                        ));
                    }
                }
                select = Some(names);
            }
            _ => {}
        }
    }
    let size = top.unwrap_or(DEFAULT_PAGE_SIZE);
    let (items, total) = {
        let entities = inner.entities();
        let mine: Vec<&Map<String, Value>> = entities
            .iter()
            .filter(|((configuration, _), _)| configuration == configuration_id)
            .map(|(_, entity)| entity)
            .collect();
        let items: Vec<Value> = mine
            .iter()
            .skip(offset)
            .take(size)
            .map(|entity| Value::Object(project(entity, select.as_deref())))
            .collect();
        (items, mine.len())
    };
    let mut body = Map::new();
    body.insert(
        "@odata.context".to_owned(),
        Value::String(collection_context(version, configuration_id)),
    );
    let next = offset.saturating_add(size);
    if next < total {
        // The next link keeps the client's other options as sent and carries the
        // position in $skiptoken, as Graph's server-driven paging does.
        let kept: Vec<&str> = page
            .query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let name = decode(p.split_once('=').map_or(*p, |(n, _)| n)).to_ascii_lowercase();
                name != "$skip" && name != "$skiptoken"
            })
            .collect();
        let mut query = kept.join("&");
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("$skiptoken=");
        query.push_str(&skip_token(next));
        body.insert(
            "@odata.nextLink".to_owned(),
            Value::String(format!("{}{}?{query}", page.origin, page.path)),
        );
    }
    body.insert("value".to_owned(), Value::Array(items));
    graph::json_response(StatusCode::OK, &Value::Object(body))
}

/// `$select`: only the named properties (and `@odata.type`, as Graph keeps it).
fn project(entity: &Map<String, Value>, select: Option<&[String]>) -> Map<String, Value> {
    match select {
        None => entity.clone(),
        Some(names) => entity
            .iter()
            .filter(|(name, _)| *name == "@odata.type" || names.iter().any(|n| n == *name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_devices_are_valid_and_stable() {
        for index in [0, 1, 27, 249] {
            let entity = Value::Object(seed_device(index));
            let problems = graph::validate_device_status(&entity, ApiVersion::V1);
            assert!(problems.is_empty(), "{index}: {problems:?}");
        }
        assert_eq!(seed_device(7), seed_device(7));
        assert_eq!(parse_skip_token(&skip_token(200)), Some(200));
        assert_eq!(parse_skip_token("nonsense!"), None);
    }
}
