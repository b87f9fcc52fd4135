//! `$batch` in the emulator: each sub-request is served as if sent on its own, in request
//! order; one whose dependency failed gets 424, as Graph answers.

use std::collections::HashMap;

use http::{Method, StatusCode};
use http_body_util::BodyExt;

use super::{dispatch, Answer, Inner};
use crate::graph::{self, batch, ApiVersion};

pub async fn run(
    inner: &Inner,
    version: ApiVersion,
    body: &[u8],
    origin: &str,
    client_id: Option<&str>,
) -> Answer {
    let parts = match batch::parse(version, body) {
        Ok(parts) => parts,
        Err(error) => {
            return graph::error_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("Invalid batch payload: {error}"),
                client_id,
            )
        }
    };
    let mut answered: HashMap<String, u16> = HashMap::new();
    let mut entries = Vec::with_capacity(parts.len());
    for part in &parts {
        let response = match batch::failed_dependency(part, &answered) {
            Some(dependency) => graph::error_response(
                StatusCode::FAILED_DEPENDENCY,
                "FailedDependency",
                &format!("The dependency '{dependency}' of this request failed."),
                client_id,
            ),
            None => match Method::from_bytes(part.method.as_bytes()) {
                Ok(method) => dispatch(inner, &method, &part.uri, &part.body, origin, client_id),
                Err(_) => graph::error_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("Invalid method '{}'.", part.method),
                    client_id,
                ),
            },
        };
        let (head, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let headers = head
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        let answer = batch::SubAnswer {
            status: head.status.as_u16(),
            headers,
            body,
        };
        answered.insert(part.id.clone(), answer.status);
        entries.push(answer.to_json(&part.id));
    }
    let mut response = http::Response::new(http_body_util::Full::new(batch::assemble(entries)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(graph::JSON_CONTENT_TYPE),
    );
    response
}
