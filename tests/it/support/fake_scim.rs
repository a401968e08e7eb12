//! A programmable SCIM 2.0 server for fault and secret-hygiene tests (what the real peer,
//! scim2-server, cannot do): an axum app on 127.0.0.1 serving `/v2/Users` with `userName`
//! uniqueness (409 `uniqueness`, case-insensitive), the `userName eq "…"` filter used for
//! adoption, `GET /Users` lists, PUT, PATCH (the operations the sync sends) and DELETE (the
//! account disappears, as in scim2-server), behind a bearer token.
//!
//! Faults are matched by method and by a substring of `path?query body`, in the order added:
//! a status answered without doing anything (5xx, 429 with or without `Retry-After`, 401/403,
//! SCIM errors with or without `detail`), or — after the request was carried out — a slow answer,
//! a connection reset in the middle of the body, or a body replaced by non-JSON or truncated JSON.

// Each test module uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

/// The token [`FakeScim::start`] accepts (`Authorization: Bearer <token>`).
pub const SCIM_TOKEN: &str = "fault-test-scim-token";
const SCIM_JSON: &str = "application/scim+json";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// What a fault does to a matching request.
#[derive(Clone, Debug)]
pub enum FaultKind {
    /// Answer with this status, headers and body without carrying the request out.
    Status {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Answer this status without carrying the request out, quoting the request back (every
    /// header, the token included, and the body) in the SCIM error's `detail`; 500 answers
    /// it as a plain-text page.
    Echo { status: u16 },
    /// Carry the request out, then hold the answer back this long.
    SlowAfterApply(Duration),
    /// Carry the request out, send the head and half the body, then break the connection.
    ResetAfterApply,
    /// Carry the request out, then answer `status` with this raw body instead.
    BodyAfterApply { status: u16, body: BodyFault },
}

/// A replacement body.
#[derive(Clone, Debug)]
pub enum BodyFault {
    Text(&'static str),
    /// The real JSON answer, cut in the middle (with a matching `Content-Length`).
    TruncatedJson,
}

#[derive(Clone, Debug)]
struct Fault {
    method: Option<&'static str>,
    /// Matched against `path?query body`.
    contains: Option<String>,
    times: usize,
    kind: FaultKind,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET`, `POST`, …
    pub method: String,
    /// The body as text.
    pub body: String,
}

#[derive(Default)]
struct ScimState {
    users: BTreeMap<String, Value>,
    next_id: u64,
    faults: Vec<Fault>,
    requests: Vec<Seen>,
    token: String,
    /// Attributes this server does not declare: dropped without an error from whatever is
    /// written, top level or in an extension object (RFC 7644 allows it; many SaaS targets do).
    dropped: BTreeSet<String>,
}

/// A running fake SCIM server (`{url}/v2/Users`); dropping it stops it.
pub struct FakeScim {
    /// `http://127.0.0.1:PORT/v2` (no trailing slash).
    pub base_url: String,
    /// The bearer token it accepts.
    pub token: String,
    inner: Arc<Mutex<ScimState>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeScim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeScim {
    /// Starts a server that accepts [`SCIM_TOKEN`].
    pub async fn start() -> FakeScim {
        FakeScim::start_with_token(SCIM_TOKEN).await
    }

    /// Starts a server on a free port that accepts `Bearer <token>`.
    pub async fn start_with_token(token: &str) -> FakeScim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake SCIM server");
        let port = listener.local_addr().expect("local addr").port();
        let inner = Arc::new(Mutex::new(ScimState {
            token: token.to_owned(),
            ..ScimState::default()
        }));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake SCIM serves");
        });
        FakeScim {
            base_url: format!("http://127.0.0.1:{port}/v2"),
            token: token.to_owned(),
            inner,
            server,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ScimState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops `attribute` from every account written from now on, without an error, as a target
    /// that does not declare it may.
    pub fn drop_undeclared(&self, attribute: &str) {
        self.lock().dropped.insert(attribute.to_owned());
    }

    /// Adds a fault for the next `times` requests with `method` (any when `None`) whose
    /// `path?query body` contains `contains` (any when `None`).
    pub fn fault(
        &self,
        method: Option<&'static str>,
        contains: Option<&str>,
        times: usize,
        kind: FaultKind,
    ) {
        self.lock().faults.push(Fault {
            method,
            contains: contains.map(str::to_owned),
            times,
            kind,
        });
    }

    /// Every request gets `status` from now on (until [`FakeScim::heal`]).
    pub fn fail_all(&self, status: u16, headers: Vec<(&'static str, String)>) {
        self.fault(
            None,
            None,
            usize::MAX,
            FaultKind::Status {
                status,
                headers,
                body: scim_error(status, None, Some("injected fault")).to_string(),
            },
        );
    }

    pub fn heal(&self) {
        self.lock().faults.clear();
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    pub fn count(&self, method: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|seen| seen.method == method)
            .count()
    }

    pub fn users(&self) -> Vec<Value> {
        self.lock().users.values().cloned().collect()
    }

    pub fn id_of(&self, user_name: &str) -> String {
        self.lock()
            .users
            .values()
            .find(|user| user["userName"] == user_name)
            .and_then(|user| user["id"].as_str())
            .unwrap_or_else(|| panic!("no account {user_name}"))
            .to_owned()
    }

    /// Asserts one account per expected person (by `externalId`), and no other.
    pub fn assert_accounts(&self, expected: &[String]) {
        let users = self.users();
        let mut external: Vec<String> = users
            .iter()
            .map(|user| user["externalId"].as_str().unwrap_or("?").to_owned())
            .collect();
        external.sort();
        let mut expected = expected.to_vec();
        expected.sort();
        assert_eq!(external, expected, "accounts in SocialTalent: {users:#?}");
        let names: BTreeSet<String> = users
            .iter()
            .map(|user| user["userName"].as_str().unwrap_or("").to_lowercase())
            .collect();
        assert_eq!(names.len(), users.len(), "a userName is duplicated");
    }
}

/// A SCIM error body (RFC 7644 §3.12).
pub fn scim_error(status: u16, scim_type: Option<&str>, detail: Option<&str>) -> Value {
    let mut body = json!({"schemas": [ERROR_SCHEMA], "status": status.to_string()});
    if let Some(kind) = scim_type {
        body["scimType"] = json!(kind);
    }
    if let Some(detail) = detail {
        body["detail"] = json!(detail);
    }
    body
}

fn respond(status: u16, headers: &[(&'static str, String)], body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    let headers_mut = response.headers_mut();
    headers_mut.insert("content-type", HeaderValue::from_static(SCIM_JSON));
    for (name, value) in headers {
        headers_mut.insert(*name, HeaderValue::from_str(value).expect("header value"));
    }
    response
}

async fn handle(AxumState(inner): AxumState<Arc<Mutex<ScimState>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let authorization = parts
        .headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (fault, answer) = {
        let mut state = inner.lock().unwrap_or_else(PoisonError::into_inner);
        let authorized = authorization == format!("Bearer {}", state.token);
        state.requests.push(Seen {
            method: method.clone(),
            body: body.clone(),
        });
        let haystack = format!("{path}?{query} {body}");
        let index = state.faults.iter().position(|fault| {
            fault.times > 0
                && fault.method.is_none_or(|m| m == method)
                && fault
                    .contains
                    .as_deref()
                    .is_none_or(|needle| haystack.contains(needle))
        });
        let fault = index.map(|index| {
            let fault = &mut state.faults[index];
            fault.times -= 1;
            let kind = fault.kind.clone();
            if fault.times == 0 {
                state.faults.remove(index);
            }
            kind
        });
        if let Some(FaultKind::Status {
            status,
            headers,
            body,
        }) = &fault
        {
            return respond(*status, headers, body.clone().into_bytes());
        }
        if let Some(FaultKind::Echo { status }) = &fault {
            let quoted =
                super::quote::quote_request(&method, &parts.uri, &parts.headers, body.as_bytes());
            let body = if *status >= 500 {
                format!("upstream failed for the request:\n{quoted}")
            } else {
                scim_error(*status, None, Some(&format!("Invalid request: {quoted}"))).to_string()
            };
            return respond(*status, &[], body.into_bytes());
        }
        let answer = if authorized {
            state.apply(&method, &path, &query, &body)
        } else {
            (
                401,
                Some(scim_error(401, None, Some("The bearer token is not valid"))),
            )
        };
        (fault, answer)
    };
    let (status, value) = answer;
    let json_body = value
        .map(|value| value.to_string().into_bytes())
        .unwrap_or_default();
    match fault {
        Some(FaultKind::SlowAfterApply(delay)) => {
            tokio::time::sleep(delay).await;
            respond(status, &[], json_body)
        }
        Some(FaultKind::ResetAfterApply) => {
            let half = Bytes::from(json_body[..json_body.len() / 2].to_vec());
            let stream = futures::stream::unfold(0u8, move |step| {
                let half = half.clone();
                async move {
                    match step {
                        0 => Some((Ok(half), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            Some((
                                Err(std::io::Error::new(
                                    std::io::ErrorKind::ConnectionReset,
                                    "fake SCIM resets the connection",
                                )),
                                2,
                            ))
                        }
                        _ => None,
                    }
                }
            });
            let mut response = Response::new(Body::from_stream(stream));
            *response.status_mut() = StatusCode::from_u16(status).expect("status");
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static(SCIM_JSON));
            response
        }
        Some(FaultKind::BodyAfterApply { status, body }) => {
            let bytes = match body {
                BodyFault::Text(text) => text.as_bytes().to_vec(),
                BodyFault::TruncatedJson => json_body[..json_body.len() / 2].to_vec(),
            };
            respond(status, &[], bytes)
        }
        Some(FaultKind::Status { .. } | FaultKind::Echo { .. }) | None => {
            respond(status, &[], json_body)
        }
    }
}

impl ScimState {
    /// Carries a request out: `(status, body)`.
    fn apply(&mut self, method: &str, path: &str, query: &str, body: &str) -> (u16, Option<Value>) {
        let Some(rest) = path.strip_prefix("/v2/Users") else {
            return (404, Some(scim_error(404, None, Some("no such endpoint"))));
        };
        let id = rest.strip_prefix('/').filter(|id| !id.is_empty());
        let document = || serde_json::from_str::<Value>(body).ok();
        match (method, id) {
            ("POST", None) => {
                let Some(mut user) = document() else {
                    return (
                        400,
                        Some(scim_error(400, Some("invalidSyntax"), Some("not JSON"))),
                    );
                };
                let name = user["userName"].as_str().unwrap_or("").to_lowercase();
                if self.find(&name).is_some() {
                    return (
                        409,
                        Some(scim_error(
                            409,
                            Some("uniqueness"),
                            Some("userName is already taken"),
                        )),
                    );
                }
                self.next_id += 1;
                let id = format!("st-{:04}", self.next_id);
                user["id"] = json!(id);
                user["meta"] =
                    json!({"resourceType": "User", "location": format!("/v2/Users/{id}")});
                self.strip(&mut user);
                self.users.insert(id, user.clone());
                (201, Some(user))
            }
            ("GET", None) => {
                let filter: Option<String> = url::form_urlencoded::parse(query.as_bytes())
                    .find(|(key, _)| key == "filter")
                    .map(|(_, value)| value.into_owned());
                let found: Vec<Value> = match filter {
                    Some(filter) => {
                        let wanted = filter
                            .strip_prefix("userName eq \"")
                            .and_then(|rest| rest.strip_suffix('"'))
                            .unwrap_or("")
                            .replace("\\\"", "\"")
                            .to_lowercase();
                        self.find(&wanted).cloned().into_iter().collect()
                    }
                    None => self.users.values().cloned().collect(),
                };
                (
                    200,
                    Some(json!({
                        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                        "totalResults": found.len(),
                        "startIndex": 1,
                        "itemsPerPage": found.len(),
                        "Resources": found,
                    })),
                )
            }
            ("GET", Some(id)) => match self.users.get(id) {
                Some(user) => (200, Some(user.clone())),
                None => (404, Some(scim_error(404, None, Some("user not found")))),
            },
            ("PUT", Some(id)) => {
                let Some(mut user) = document() else {
                    return (
                        400,
                        Some(scim_error(400, Some("invalidSyntax"), Some("not JSON"))),
                    );
                };
                if !self.users.contains_key(id) {
                    return (404, Some(scim_error(404, None, Some("user not found"))));
                }
                user["id"] = json!(id);
                self.strip(&mut user);
                self.users.insert(id.to_owned(), user.clone());
                (200, Some(user))
            }
            ("PATCH", Some(id)) => {
                let operations = document()
                    .and_then(|patch| patch["Operations"].as_array().cloned())
                    .unwrap_or_default();
                let Some(user) = self.users.get_mut(id) else {
                    return (404, Some(scim_error(404, None, Some("user not found"))));
                };
                for operation in operations {
                    patch_one(user, &operation);
                }
                let mut user = user.clone();
                self.strip(&mut user);
                self.users.insert(id.to_owned(), user);
                (204, None)
            }
            ("DELETE", Some(id)) => match self.users.remove(id) {
                Some(_) => (204, None),
                None => (404, Some(scim_error(404, None, Some("user not found")))),
            },
            _ => (405, Some(scim_error(405, None, Some("method not allowed")))),
        }
    }

    /// Removes the attributes this server does not declare.
    fn strip(&self, user: &mut Value) {
        let Some(object) = user.as_object_mut() else {
            return;
        };
        for name in &self.dropped {
            object.remove(name);
        }
        for (key, value) in object.iter_mut() {
            if key.starts_with("urn:")
                && let Some(extension) = value.as_object_mut()
            {
                for name in &self.dropped {
                    extension.remove(name);
                }
            }
        }
    }

    fn find(&self, user_name: &str) -> Option<&Value> {
        self.users
            .values()
            .find(|user| user["userName"].as_str().unwrap_or("").to_lowercase() == user_name)
    }
}

/// One PATCH operation, as far as the sync sends them.
fn patch_one(user: &mut Value, operation: &Value) {
    let op = operation["op"].as_str().unwrap_or("").to_lowercase();
    let path = operation["path"].as_str().unwrap_or("");
    let value = operation.get("value").cloned().unwrap_or(Value::Null);
    let (object, name): (&mut Map<String, Value>, &str) = match path.rfind(':') {
        Some(at) if path.starts_with("urn:") => {
            let urn = &path[..at];
            let slot = user
                .as_object_mut()
                .expect("object")
                .entry(urn.to_owned())
                .or_insert_with(|| json!({}));
            (slot.as_object_mut().expect("object"), &path[at + 1..])
        }
        _ => match path.split_once('.') {
            Some((parent, child)) => {
                let slot = user
                    .as_object_mut()
                    .expect("object")
                    .entry(parent.to_owned())
                    .or_insert_with(|| json!({}));
                (slot.as_object_mut().expect("object"), child)
            }
            None => (user.as_object_mut().expect("object"), path),
        },
    };
    match op.as_str() {
        "remove" => {
            object.remove(name);
        }
        _ if name.is_empty() => {
            if let Value::Object(values) = value {
                object.extend(values);
            }
        }
        _ => {
            object.insert(name.to_owned(), value);
        }
    }
}
