//! The built-in Microsoft Graph emulator: the deviceStatuses routes served from memory, so
//! recording, replay, demos and tests work with no tenant and no network.
//!
//! It follows what Graph documents (and, where the docs are silent, what Intune does), so a
//! cassette recorded against it looks like one recorded against the real service: the
//! error envelope, `request-id` / `client-request-id`, `@odata.context`, the 401 challenge.

mod batch;
mod collection;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use serde_json::{Map, Value};

use crate::graph::{
    self, ApiVersion, DeviceStatusRoute, CLIENT_REQUEST_ID, DEVICE_STATUS_ODATA_TYPE, REQUEST_ID,
};
use crate::server::{self, Handler, ResponseFuture};

/// Largest request body accepted; Graph refuses far smaller entity updates, so anything
/// bigger is a client bug or abuse, not a payload worth buffering.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Graph's base URL for `@odata.context`, which always names the public service.
const ODATA_CONTEXT_BASE: &str = "https://graph.microsoft.com";

/// Graph's diagnostic header, with values that make an emulated answer recognisable.
const AGS_DIAGNOSTIC: &str = r#"{"ServerInfo":{"DataCenter":"graphvcr emulator","Slice":"E","Ring":"0","ScaleUnit":"000","RoleInstance":"emulator"}}"#;

/// The challenge Graph sends with a 401, so SDK auth handlers react as they do live.
const WWW_AUTHENTICATE: &str = r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000""#;

/// How the emulator answers where Graph itself is not consistent or where tests need slack.
#[derive(Debug, Clone, Default)]
pub struct EmulatorOptions {
    /// PATCH answers 204 No Content instead of the documented 200 with the entity, as
    /// some Intune back ends do.
    pub patch_no_content: bool,
    /// Requests without an `Authorization: Bearer <token>` get 401, as from Graph.
    /// `Default` leaves it off; [`EmulatorOptions::new`] is what the CLI uses.
    pub require_auth: bool,
    /// Each configuration id starts with this many device statuses (`dev-0000`, …),
    /// generated deterministically, so collections and paging have data without setup.
    pub seed_devices: usize,
    /// When non-zero, the 1st, (N+1)th, (2N+1)th … request is answered 429 with
    /// `Retry-After`, as a throttled Graph does, so retry logic can be recorded.
    pub throttle_every: u64,
    /// `Retry-After` seconds of throttled answers.
    pub retry_after: u64,
    /// The emulator serves HTTPS: its `@odata.nextLink`s use `https://`.
    pub https: bool,
}

impl EmulatorOptions {
    /// Graph-like defaults: a bearer token is required, PATCH answers 200 with the entity.
    pub fn new() -> Self {
        Self {
            require_auth: true,
            retry_after: 1,
            ..Self::default()
        }
    }
}

/// Stored entities keyed by (configuration id, status id): the key ignores the API
/// version because v1.0 and beta are two views of the same Intune data. The map's
/// order gives collections sorted by id for free.
type Entities = BTreeMap<(String, String), Map<String, Value>>;

struct Inner {
    options: EmulatorOptions,
    entities: Mutex<Entities>,
    /// Configuration ids whose seed devices were created (once, on first use).
    seeded: Mutex<HashSet<String>>,
    /// Requests received, for the throttling switch.
    requests: AtomicU64,
}

impl Inner {
    /// A poisoned lock only means another request panicked mid-update; the map is still
    /// usable, and one bad request must not take the emulator down.
    fn entities(&self) -> MutexGuard<'_, Entities> {
        self.entities.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the seed devices of `configuration_id` the first time it is used.
    fn ensure_seeded(&self, configuration_id: &str) {
        if self.options.seed_devices == 0 {
            return;
        }
        let first_use = self
            .seeded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(configuration_id.to_owned());
        if first_use {
            let mut entities = self.entities();
            for index in 0..self.options.seed_devices {
                let entity = collection::seed_device(index);
                let id = entity
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                entities.insert((configuration_id.to_owned(), id), entity);
            }
        }
    }

    /// Whether this request is one the throttling switch answers with 429.
    fn throttled(&self) -> bool {
        let every = self.options.throttle_every;
        let seen = self.requests.fetch_add(1, Ordering::Relaxed);
        every > 0 && seen % every == 0
    }
}

/// The emulator; cheap to share behind an `Arc`, as [`crate::server::serve`] wants.
pub struct Emulator {
    inner: Arc<Inner>,
}

impl Emulator {
    pub fn new(options: EmulatorOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                entities: Mutex::new(BTreeMap::new()),
                seeded: Mutex::new(HashSet::new()),
                requests: AtomicU64::new(0),
            }),
        }
    }
}

impl Handler for Emulator {
    fn call(&self, request: Request<Incoming>, _peer: SocketAddr) -> ResponseFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let client_request_id = header_text(request.headers(), CLIENT_REQUEST_ID)
                .filter(|value| !value.is_empty())
                .map(str::to_owned);
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let response = handle(&inner, request, client_request_id.as_deref()).await;
            let response = decorate(response, client_request_id.as_deref());
            tracing::debug!(%method, %path, status = response.status().as_u16(), "emulator answered");
            server::whole(response)
        })
    }
}

type Answer = Response<Full<Bytes>>;

async fn handle(inner: &Inner, request: Request<Incoming>, client_id: Option<&str>) -> Answer {
    let error =
        |status, code: &str, message: &str| graph::error_response(status, code, message, client_id);

    if inner.options.require_auth {
        if let Err(message) = check_bearer(request.headers()) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                message,
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(WWW_AUTHENTICATE),
            );
            return response;
        }
    }

    if inner.throttled() {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Too many requests. Retry after the time given in Retry-After.",
        );
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(inner.options.retry_after),
        );
        return response;
    }

    let (parts, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(response) => return response(client_id),
    };
    let origin = origin(inner, &parts.headers);
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    if let Some(version) = graph::batch::detect(parts.method.as_str(), parts.uri.path()) {
        return batch::run(inner, version, &body, &origin, client_id).await;
    }
    dispatch(inner, &parts.method, target, &body, &origin, client_id)
}

/// `scheme://host` the client reached the emulator at, for `@odata.nextLink`.
fn origin(inner: &Inner, headers: &HeaderMap) -> String {
    let scheme = if inner.options.https { "https" } else { "http" };
    match header_text(headers, header::HOST.as_str()) {
        Some(host) => format!("{scheme}://{host}"),
        None => ODATA_CONTEXT_BASE.to_owned(),
    }
}

/// Serves one request (a top-level one, or a `$batch` sub-request) once its body is read.
fn dispatch(
    inner: &Inner,
    method: &Method,
    target: &str,
    body: &[u8],
    origin: &str,
    client_id: Option<&str>,
) -> Answer {
    let error =
        |status, code: &str, message: &str| graph::error_response(status, code, message, client_id);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let route = match resolve(path) {
        Ok(route) => route,
        Err(unmatched) => return unmatched.response(path, client_id),
    };
    let (configuration_id, status_id) = match decode_ids(&route) {
        Some(ids) => ids,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "The request URI holds an id that is not valid percent-encoded UTF-8.",
            )
        }
    };
    inner.ensure_seeded(&configuration_id);

    match (status_id, method.clone()) {
        (None, Method::GET) => collection::list(
            inner,
            route.version,
            &configuration_id,
            &collection::Page {
                path,
                query,
                origin,
            },
            client_id,
        ),
        (Some(status_id), Method::GET) => {
            let key = (configuration_id, status_id);
            let entity = inner.entities().get(&key).cloned();
            match entity {
                Some(entity) => entity_response(route.version, &key.0, entity),
                None => not_found(&key.1, client_id),
            }
        }
        (Some(status_id), Method::DELETE) => {
            let key = (configuration_id, status_id);
            let removed = inner.entities().remove(&key);
            match removed {
                Some(_) => empty(StatusCode::NO_CONTENT),
                None => not_found(&key.1, client_id),
            }
        }
        (Some(status_id), Method::PATCH) => patch(
            inner,
            route.version,
            configuration_id,
            status_id,
            body,
            client_id,
        ),
        _ => error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "No method match route template",
        ),
    }
}

/// Why a path is not one of the emulated routes.
enum Unmatched {
    /// The first segment is not a Graph version.
    Version(String),
    /// A valid version, but nothing the emulator serves.
    Route,
}

impl Unmatched {
    fn response(&self, path: &str, client_id: Option<&str>) -> Answer {
        let message = match self {
            Self::Version(segment) => format!("Invalid version: {segment}"),
            Self::Route => format!("Resource not found for the path '{path}'."),
        };
        graph::error_response(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &message,
            client_id,
        )
    }
}

/// Matches a path against the deviceStatuses routes. The version segment is matched
/// case-insensitively like the other fixed segments, then passed on in canonical form
/// so the route parser (which knows only `v1.0` and `beta`) accepts it.
fn resolve(path: &str) -> Result<DeviceStatusRoute, Unmatched> {
    let trimmed = path.trim_start_matches('/');
    let (first, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    let Some(version) = ApiVersion::parse(&first.to_ascii_lowercase()) else {
        return Err(Unmatched::Version(first.to_owned()));
    };
    graph::parse_device_status_route(&format!("/{}/{rest}", version.as_str()))
        .ok_or(Unmatched::Route)
}

/// Ids arrive percent-encoded in the path; Graph stores and echoes them decoded.
fn decode_ids(route: &DeviceStatusRoute) -> Option<(String, Option<String>)> {
    let decode = |raw: &str| {
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .ok()
            .map(|text| text.into_owned())
    };
    let configuration_id = decode(&route.configuration_id)?;
    let status_id = match &route.status_id {
        Some(raw) => Some(decode(raw)?),
        None => None,
    };
    Some((configuration_id, status_id))
}

/// Accepts `Bearer <token>` with any non-empty token: the emulator checks that a client
/// authenticates the way it must against Graph, not who it is.
fn check_bearer(headers: &HeaderMap) -> Result<(), &'static str> {
    const EMPTY: &str = "Access token is empty.";
    const INVALID: &str = "Access token validation failure.";
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(EMPTY);
    };
    let text = value.to_str().map_err(|_| INVALID)?.trim();
    if text.is_empty() {
        return Err(EMPTY);
    }
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return Err(INVALID);
    }
    if token.trim().is_empty() {
        return Err(EMPTY);
    }
    Ok(())
}

/// Builds the error response once the caller's correlation id is at hand.
type ErrorFn = Box<dyn FnOnce(Option<&str>) -> Answer + Send>;

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`] with Graph's 413.
async fn read_body<B>(body: B) -> Result<Bytes, ErrorFn>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large: ErrorFn = Box::new(|client_id| {
        graph::error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!("The request body exceeds the limit of {MAX_BODY_BYTES} bytes."),
            client_id,
        )
    });
    // A declared Content-Length over the limit is refused before anything is read.
    let declared = body.size_hint().lower();
    if usize::try_from(declared).map_or(true, |n| n > MAX_BODY_BYTES) {
        return Err(too_large);
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large),
        Err(error) => {
            let message = format!("The request body could not be read: {error}");
            Err(Box::new(move |client_id| {
                graph::error_response(StatusCode::BAD_REQUEST, "BadRequest", &message, client_id)
            }))
        }
    }
}

/// Upserts one entity. Content-Type is not checked (SDKs differ), the body is: it must be
/// a JSON object that fits the schema of the route's version.
fn patch(
    inner: &Inner,
    version: ApiVersion,
    configuration_id: String,
    status_id: String,
    body: &[u8],
    client_id: Option<&str>,
) -> Answer {
    let bad_request = |message: &str| {
        graph::error_response(StatusCode::BAD_REQUEST, "BadRequest", message, client_id)
    };
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => return bad_request(&format!("The request body is not valid JSON: {error}")),
    };
    let violations = graph::validate_device_status(&value, version);
    if !violations.is_empty() {
        let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
        return bad_request(&format!(
            "Invalid microsoft.graph.deviceConfigurationDeviceStatus: {}",
            listed.join("; ")
        ));
    }
    let Value::Object(patch) = value else {
        return bad_request("The request body must be a JSON object.");
    };
    if let Some(id) = patch.get("id") {
        if id.as_str() != Some(status_id.as_str()) {
            return bad_request(&format!(
                "The id in the body ({id}) does not match the id in the URI ('{status_id}')."
            ));
        }
    }

    let entity = {
        let mut entities = inner.entities();
        let entity = entities
            .entry((configuration_id.clone(), status_id.clone()))
            .or_insert_with(|| {
                let mut fresh = Map::new();
                fresh.insert(
                    "@odata.type".to_owned(),
                    Value::String(DEVICE_STATUS_ODATA_TYPE.to_owned()),
                );
                fresh.insert("id".to_owned(), Value::String(status_id));
                fresh
            });
        graph::merge_device_status(entity, &patch);
        entity.clone()
    };
    if inner.options.patch_no_content {
        return empty(StatusCode::NO_CONTENT);
    }
    entity_response(version, &configuration_id, entity)
}

/// The entity with `@odata.context` first, as Graph orders it; the context depends on
/// the version asked for, so it is added here rather than stored.
fn entity_response(
    version: ApiVersion,
    configuration_id: &str,
    entity: Map<String, Value>,
) -> Answer {
    let mut body = Map::new();
    body.insert(
        "@odata.context".to_owned(),
        Value::String(format!(
            "{}/$entity",
            collection_context(version, configuration_id)
        )),
    );
    body.extend(entity);
    graph::json_response(StatusCode::OK, &Value::Object(body))
}

/// OData string keys double their single quotes inside `('...')`.
fn collection_context(version: ApiVersion, configuration_id: &str) -> String {
    let configuration_id = configuration_id.replace('\'', "''");
    format!(
        "{ODATA_CONTEXT_BASE}/{}/$metadata#deviceManagement/deviceConfigurations('{configuration_id}')/deviceStatuses",
        version.as_str()
    )
}

fn not_found(id: &str, client_id: Option<&str>) -> Answer {
    graph::error_response(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
        client_id,
    )
}

fn empty(status: StatusCode) -> Answer {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Adds the headers Graph puts on every answer, success or error, in one place so no
/// path can forget them. Ids already set (by [`graph::error_response`], which also put
/// them in the body) are kept so headers and `innerError` agree.
fn decorate(mut response: Answer, client_request_id: Option<&str>) -> Answer {
    let headers = response.headers_mut();
    let request_id = match header_text(headers, REQUEST_ID) {
        Some(existing) => existing.to_owned(),
        None => {
            let fresh = graph::new_request_id();
            insert(headers, REQUEST_ID, &fresh);
            fresh
        }
    };
    if !headers.contains_key(CLIENT_REQUEST_ID) {
        insert(
            headers,
            CLIENT_REQUEST_ID,
            client_request_id.unwrap_or(&request_id),
        );
    }
    headers.insert(
        "x-ms-ags-diagnostic",
        HeaderValue::from_static(AGS_DIAGNOSTIC),
    );
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    // Every JSON body here comes from graph::json_response, so it already has Graph's
    // content type; OData-Version goes with it.
    let is_json = header_text(headers, header::CONTENT_TYPE.as_str())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        headers.insert("odata-version", HeaderValue::from_static("4.0"));
    }
    response
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::Full;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use serde_json::json;
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;
    use crate::server::{serve, Limits};

    const TEST_TIMEOUT: Duration = Duration::from_secs(20);
    const TOKEN: (&str, &str) = ("authorization", "Bearer test-token");
    const SEED: &str = graph::SEED_PATCH_BODY;

    fn item(version: &str, config: &str, id: &str) -> String {
        format!("/{version}/deviceManagement/deviceConfigurations/{config}/deviceStatuses/{id}")
    }

    fn context(version: &str, config: &str) -> String {
        format!(
            "https://graph.microsoft.com/{version}/$metadata#deviceManagement/deviceConfigurations('{config}')/deviceStatuses"
        )
    }

    /// Serves a fresh emulator, runs `test` against it, stops the server, and fails if
    /// any of that takes too long.
    async fn with_emulator<F, Fut>(options: EmulatorOptions, test: F)
    where
        F: FnOnce(Running) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let (stop, stopped) = oneshot::channel::<()>();
            let emulator = Arc::new(Emulator::new(options));
            let server = tokio::spawn(serve(listener, None, Limits::default(), emulator, async {
                let _ = stopped.await;
            }));
            let client = Client::builder(TokioExecutor::new()).build_http();
            test(Running { addr, client }).await;
            let _ = stop.send(());
            server.await.expect("server task");
        })
        .await
        .expect("test timed out");
    }

    struct Running {
        addr: SocketAddr,
        client: Client<HttpConnector, Full<Bytes>>,
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Reply {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap_or_else(|error| {
                panic!(
                    "not JSON ({error}): {}",
                    String::from_utf8_lossy(&self.body)
                )
            })
        }

        fn header(&self, name: &str) -> Option<&str> {
            header_text(&self.headers, name)
        }

        fn error_code(&self) -> String {
            self.json()["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    }

    impl Running {
        async fn send(
            &self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: &str,
        ) -> Reply {
            let mut builder = Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.addr));
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            let request = builder
                .body(Full::new(Bytes::from(body.to_owned())))
                .expect("request");
            let response = self.client.request(request).await.expect("send");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        }

        async fn patch(&self, path: &str, body: &str) -> Reply {
            self.send(
                "PATCH",
                path,
                &[TOKEN, ("content-type", "application/json")],
                body,
            )
            .await
        }

        async fn get(&self, path: &str) -> Reply {
            self.send("GET", path, &[TOKEN], "").await
        }
    }

    #[tokio::test]
    async fn seed_patch_then_get() {
        with_emulator(EmulatorOptions::new(), |emu| async move {
            let path = item("v1.0", "cfg-1", "50d7942b-942b-50d7-2b94-d7502b94d750");
            let patched = emu.patch(&path, SEED).await;
            assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.body);
            assert_eq!(
                patched.header("content-type"),
                Some(graph::JSON_CONTENT_TYPE)
            );
            assert_eq!(patched.header("odata-version"), Some("4.0"));
            let entity = patched.json();
            assert_eq!(entity["id"], "50d7942b-942b-50d7-2b94-d7502b94d750");
            assert_eq!(entity["@odata.type"], DEVICE_STATUS_ODATA_TYPE);
            assert_eq!(
                entity["@odata.context"],
                format!("{}/$entity", context("v1.0", "cfg-1"))
            );
            let seed: Value = serde_json::from_str(SEED).expect("seed");
            for (name, value) in seed.as_object().expect("object") {
                assert_eq!(&entity[name], value, "{name}");
            }

            let fetched = emu.get(&path).await;
            assert_eq!(fetched.status, StatusCode::OK);
            assert_eq!(fetched.json(), entity);

            // A partial PATCH changes only what it names.
            let again = emu.patch(&path, r#"{"status":"error"}"#).await;
            assert_eq!(again.status, StatusCode::OK);
            assert_eq!(again.json()["status"], "error");
            assert_eq!(again.json()["userName"], "User Name value");
        })
        .await;
    }

    #[tokio::test]
    async fn beta_double_slash_and_case_insensitive_segments() {
        with_emulator(EmulatorOptions::new(), |emu| async move {
            let patched = emu
                .patch(
                    "/beta//DEVICEMANAGEMENT/deviceconfigurations/cfg-b/DeviceStatuses/dev-b",
                    r#"{"status":"nonCompliant","platform":2}"#,
                )
                .await;
            assert_eq!(patched.status, StatusCode::OK, "{:?}", patched.body);
            let entity = patched.json();
            assert_eq!(entity["platform"], 2);
            assert_eq!(
                entity["@odata.context"],
                format!("{}/$entity", context("beta", "cfg-b"))
            );
            // The entity is shared across versions; the context follows the request.
            let v1 = emu.get(&item("v1.0", "cfg-b", "dev-b")).await;
            assert_eq!(v1.status, StatusCode::OK);
            assert_eq!(
                v1.json()["@odata.context"],
                format!("{}/$entity", context("v1.0", "cfg-b"))
            );
            // Ids are case-sensitive.
            let other_case = emu.get(&item("beta", "cfg-b", "DEV-B")).await;
            assert_eq!(other_case.status, StatusCode::NOT_FOUND);
            // `platform` exists in beta only.
            let v1_platform = emu
                .patch(&item("v1.0", "cfg-b", "dev-b"), r#"{"platform":2}"#)
                .await;
            assert_eq!(v1_platform.status, StatusCode::BAD_REQUEST);
        })
        .await;
    }

    #[tokio::test]
    async fn invalid_patch_bodies_are_bad_requests() {
        with_emulator(EmulatorOptions::new(), |emu| async move {
            let cases: &[(&str, &str, &[&str])] = &[
                ("malformed JSON", r#"{"status": "#, &[]),
                ("empty body", "", &[]),
                ("not an object", r#"["compliant"]"#, &[]),
                ("unknown property", r#"{"bogus": 1}"#, &["/bogus"]),
                ("bad enum", r#"{"status": "String"}"#, &["/status"]),
                (
                    "bad date",
                    r#"{"lastReportedDateTime": "yesterday"}"#,
                    &["/lastReportedDateTime"],
                ),
                ("wrong type", r#"{"userName": 5}"#, &["/userName"]),
                (
                    "wrong odata.type",
                    r##"{"@odata.type": "#microsoft.graph.user"}"##,
                    &["/@odata.type"],
                ),
                ("id mismatch", r#"{"id": "someone-else"}"#, &[]),
                (
                    "every violation listed",
                    r#"{"bogus": 1, "status": "nope", "deviceModel": false}"#,
                    &["/bogus", "/status", "/deviceModel"],
                ),
            ];
            let path = item("v1.0", "cfg-bad", "dev-bad");
            for (name, body, pointers) in cases {
                let reply = emu.patch(&path, body).await;
                assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name}");
                assert_eq!(reply.error_code(), "BadRequest", "{name}");
                let message = reply.json()["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                for pointer in *pointers {
                    assert!(message.contains(pointer), "{name}: {message}");
                }
            }
            // Nothing was stored by the rejected PATCHes.
            assert_eq!(emu.get(&path).await.status, StatusCode::NOT_FOUND);
            // A matching body id and nulls are fine.
            let ok = emu
                .patch(&path, r#"{"id": "dev-bad", "userName": null}"#)
                .await;
            assert_eq!(ok.status, StatusCode::OK);
        })
        .await;
    }

    #[tokio::test]
    async fn auth_errors() {
        with_emulator(EmulatorOptions::new(), |emu| async move {
            let path = item("v1.0", "cfg-a", "dev-a");
            let cases: &[&[(&str, &str)]] = &[
                &[],
                &[("authorization", "")],
                &[("authorization", "Bearer ")],
                &[("authorization", "Basic dXNlcjpwdw==")],
            ];
            for headers in cases {
                // Auth comes before routing: even an unknown route or method gets 401.
                for (method, path) in [("GET", path.as_str()), ("PUT", "/nowhere")] {
                    let reply = emu.send(method, path, headers, "").await;
                    let label = format!("{method} {path} {headers:?}");
                    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{label}");
                    assert_eq!(reply.error_code(), "InvalidAuthenticationToken", "{label}");
                    assert_eq!(reply.header("www-authenticate"), Some(WWW_AUTHENTICATE));
                }
            }
        })
        .await;
    }

    #[tokio::test]
    async fn routing_errors() {
        with_emulator(EmulatorOptions::new(), |emu| async move {
            let item = item("v1.0", "cfg-r", "dev-r");
            let collection = "/v1.0/deviceManagement/deviceConfigurations/c/deviceStatuses";
            let not_found = (StatusCode::NOT_FOUND, "ResourceNotFound");
            let bad_request = (StatusCode::BAD_REQUEST, "BadRequest");
            let cases = [
                ("GET", "/v1.0/me".to_owned(), not_found),
                ("GET", format!("{item}/extra"), not_found),
                ("GET", "/".to_owned(), not_found),
                ("GET", item.replace("v1.0", "localtest"), not_found),
                ("GET", item.clone(), not_found),
                ("DELETE", item.clone(), not_found),
                ("POST", item.clone(), bad_request),
                ("PUT", item.clone(), bad_request),
                ("PATCH", collection.to_owned(), bad_request),
                ("DELETE", collection.to_owned(), bad_request),
            ];
            for (method, path, (status, code)) in cases {
                let reply = emu.send(method, &path, &[TOKEN], "").await;
                let label = format!("{method} {path}");
                assert_eq!(reply.status, status, "{label}");
                assert_eq!(reply.error_code(), code, "{label}");
                assert!(reply.header("request-id").is_some(), "{label}");
                assert_eq!(reply.header("odata-version"), Some("4.0"), "{label}");
                assert_eq!(reply.header("www-authenticate"), None, "{label}");
            }
            let wrong_method = emu.send("POST", &item, &[TOKEN], "{}").await;
            assert_eq!(
                wrong_method.json()["error"]["message"],
                "No method match route template"
            );
            let version = emu.get("/v2.0/deviceManagement").await;
            assert_eq!(version.status, StatusCode::NOT_FOUND);
            assert_eq!(version.error_code(), "ResourceNotFound");
            assert_eq!(version.json()["error"]["message"], "Invalid version: v2.0");
        })
        .await;
    }

    #[tokio::test]
    async fn request_ids_on_every_answer() {
        with_emulator(EmulatorOptions::new(), |emu| async move {
            let path = item("v1.0", "cfg-i", "dev-i");
            let mine = "0b7d1f5c-5f4e-4b8e-9a55-0c2d3e4f5a6b";
            let with_id = [TOKEN, ("client-request-id", mine)];
            for (method, body, status) in [
                ("PATCH", SEED, StatusCode::OK),
                ("GET", "", StatusCode::OK),
                ("PATCH", "{", StatusCode::BAD_REQUEST),
                ("DELETE", "", StatusCode::NO_CONTENT),
                ("DELETE", "", StatusCode::NOT_FOUND),
            ] {
                let reply = emu.send(method, &path, &with_id, body).await;
                assert_eq!(reply.status, status, "{method}");
                assert_eq!(reply.header("client-request-id"), Some(mine), "{method}");
                let request_id = reply.header("request-id").expect("request-id");
                assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
                assert_ne!(request_id, mine);
                assert_eq!(reply.header("x-ms-ags-diagnostic"), Some(AGS_DIAGNOSTIC));
                assert_eq!(
                    reply.header("strict-transport-security"),
                    Some("max-age=31536000")
                );
                if status.is_client_error() {
                    let inner = &reply.json()["error"]["innerError"];
                    assert_eq!(inner["client-request-id"], mine);
                    assert_eq!(inner["request-id"], request_id);
                }
            }
            // Without a client id, Graph sets it equal to request-id.
            for (token, status) in [
                (None, StatusCode::UNAUTHORIZED),
                (Some(TOKEN), StatusCode::NOT_FOUND),
            ] {
                let headers: Vec<(&str, &str)> = token.into_iter().collect();
                let reply = emu.send("GET", &path, &headers, "").await;
                assert_eq!(reply.status, status);
                let request_id = reply.header("request-id").expect("request-id");
                assert_eq!(reply.header("client-request-id"), Some(request_id));
                assert_eq!(
                    reply.json()["error"]["innerError"]["request-id"],
                    request_id
                );
            }
        })
        .await;
    }

    #[tokio::test]
    async fn collection_lists_one_configuration_sorted_by_id() {
        with_emulator(EmulatorOptions::new(), |emu| async move {
            for (config, id) in [
                ("cfg-c", "b"),
                ("cfg-c", "a"),
                ("cfg-other", "0"),
                ("cfg-c", "c"),
            ] {
                let reply = emu
                    .patch(&item("v1.0", config, id), r#"{"status":"unknown"}"#)
                    .await;
                assert_eq!(reply.status, StatusCode::OK);
            }
            let deleted = emu
                .send("DELETE", &item("v1.0", "cfg-c", "c"), &[TOKEN], "")
                .await;
            assert_eq!(deleted.status, StatusCode::NO_CONTENT);
            assert!(deleted.body.is_empty());
            let list = emu
                .get("/beta/deviceManagement/deviceConfigurations/cfg-c/deviceStatuses?$top=5")
                .await;
            assert_eq!(list.status, StatusCode::OK);
            let body = list.json();
            assert_eq!(body["@odata.context"], context("beta", "cfg-c"));
            let ids: Vec<&str> = body["value"]
                .as_array()
                .expect("value")
                .iter()
                .filter_map(|entity| entity["id"].as_str())
                .collect();
            assert_eq!(ids, ["a", "b"]);
            let empty = emu
                .get("/v1.0/deviceManagement/deviceConfigurations/none/deviceStatuses")
                .await;
            assert_eq!(empty.json()["value"], json!([]));
        })
        .await;
    }

    #[tokio::test]
    async fn patch_no_content_and_no_auth_switches() {
        let options = EmulatorOptions {
            patch_no_content: true,
            require_auth: false,
            ..EmulatorOptions::default()
        };
        with_emulator(options, |emu| async move {
            let path = item("v1.0", "cfg-n", "dev-n");
            let reply = emu.send("PATCH", &path, &[], SEED).await;
            assert_eq!(reply.status, StatusCode::NO_CONTENT);
            assert!(reply.body.is_empty());
            assert!(reply.header("request-id").is_some());
            assert_eq!(reply.header("odata-version"), None);
            let stored = emu.send("GET", &path, &[], "").await;
            assert_eq!(stored.status, StatusCode::OK);
            assert_eq!(stored.json()["status"], "compliant");
        })
        .await;
    }

    #[tokio::test]
    async fn paging_batch_and_throttling() {
        let options = EmulatorOptions {
            seed_devices: 5,
            throttle_every: 4,
            retry_after: 9,
            ..EmulatorOptions::new()
        };
        with_emulator(options, |emu| async move {
            // Request 1 of every 4 is throttled.
            let collection = "/beta/deviceManagement/deviceConfigurations/cfg-p/deviceStatuses";
            let throttled = emu.get(collection).await;
            assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(throttled.header("retry-after"), Some("9"));
            assert_eq!(throttled.error_code(), "TooManyRequests");
            let first = emu.get(&format!("{collection}?$top=2&$select=id")).await;
            assert_eq!(first.status, StatusCode::OK);
            let body = first.json();
            assert_eq!(body["value"], json!([
                {"@odata.type": DEVICE_STATUS_ODATA_TYPE, "id": "dev-0000"},
                {"@odata.type": DEVICE_STATUS_ODATA_TYPE, "id": "dev-0001"}
            ]));
            let next = body["@odata.nextLink"].as_str().unwrap_or_default().to_owned();
            let (_, target) = next.split_once(&emu.addr.to_string()).expect("link to the emulator");
            assert!(target.starts_with(&format!("{collection}?$top=2&$select=id&$skiptoken=")));
            let second = emu.get(target).await.json();
            assert_eq!(second["value"][0]["id"], "dev-0002");
            let skipped = emu.get(&format!("{collection}?$skip=4")).await.json();
            assert_eq!(skipped["value"].as_array().map(Vec::len), Some(1));
            assert!(skipped.get("@odata.nextLink").is_none());
            // Throttled again (request 5), then a batch whose second part depends on a failure.
            assert_eq!(emu.get(collection).await.status, StatusCode::TOO_MANY_REQUESTS);
            let batch = json!({"requests": [
                {"id": "a", "method": "GET", "url": "/deviceManagement/deviceConfigurations/cfg-p/deviceStatuses/missing"},
                {"id": "b", "method": "GET", "url": "/deviceManagement/deviceConfigurations/cfg-p/deviceStatuses/dev-0001", "dependsOn": ["a"]},
                {"id": "c", "method": "PATCH", "url": "/deviceManagement/deviceConfigurations/cfg-p/deviceStatuses/dev-0001",
                 "headers": {"content-type": "application/json"}, "body": {"status": "compliant"}}
            ]});
            let reply = emu
                .send("POST", "/beta/$batch", &[TOKEN], &batch.to_string())
                .await;
            assert_eq!(reply.status, StatusCode::OK);
            let responses = reply.json()["responses"].clone();
            assert_eq!(responses[0]["status"], 404);
            assert_eq!(responses[1]["status"], 424);
            assert_eq!(responses[2]["status"], 200);
            assert_eq!(responses[2]["body"]["status"], "compliant");
        })
        .await;
    }

    #[tokio::test]
    async fn oversized_body_is_refused() {
        with_emulator(EmulatorOptions::new(), |emu| async move {
            let padding = "x".repeat(MAX_BODY_BYTES);
            let body = format!(r#"{{"userName":"{padding}"}}"#);
            let reply = emu.patch(&item("v1.0", "cfg-l", "dev-l"), &body).await;
            assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(reply.error_code(), "RequestEntityTooLarge");
        })
        .await;
    }

    /// A body that streams `frames` chunks of `chunk` bytes and declares no length, as a
    /// chunked upload does, so only the running count can stop it.
    struct Chunked {
        frames: usize,
        chunk: usize,
    }

    impl Body for Chunked {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            if self.frames == 0 {
                return std::task::Poll::Ready(None);
            }
            self.frames -= 1;
            let data = Bytes::from(vec![b' '; self.chunk]);
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
        }
    }

    #[tokio::test]
    async fn streamed_body_limit() {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let chunk = 64 * 1024;
            let fits = MAX_BODY_BYTES / chunk;
            let read = read_body(Chunked {
                frames: fits,
                chunk,
            })
            .await;
            assert_eq!(read.ok().map(|body| body.len()), Some(MAX_BODY_BYTES));
            let refused = read_body(Chunked {
                frames: fits + 1,
                chunk,
            })
            .await;
            let response = refused.expect_err("refused")(Some("c"));
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let body: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(body["error"]["code"], "RequestEntityTooLarge");
            assert_eq!(body["error"]["innerError"]["client-request-id"], "c");
        })
        .await
        .expect("test timed out");
    }

    #[test]
    fn default_and_new_options_differ_only_in_auth() {
        let default = EmulatorOptions::default();
        assert!(!default.require_auth && !default.patch_no_content);
        let cli = EmulatorOptions::new();
        assert!(cli.require_auth && !cli.patch_no_content);
    }

    #[test]
    fn bearer_parsing() {
        let check = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(
                    header::AUTHORIZATION,
                    HeaderValue::from_str(value).expect("value"),
                );
            }
            check_bearer(&headers)
        };
        assert_eq!(check(Some("Bearer abc")), Ok(()));
        assert_eq!(check(Some("bearer abc")), Ok(()));
        assert_eq!(check(None), Err("Access token is empty."));
        assert_eq!(check(Some("Bearer")), Err("Access token is empty."));
        assert_eq!(check(Some("Bearer   ")), Err("Access token is empty."));
        assert_eq!(
            check(Some("Basic abc")),
            Err("Access token validation failure.")
        );
        assert_eq!(
            check(Some("Bearerabc")),
            Err("Access token validation failure.")
        );
    }
}
