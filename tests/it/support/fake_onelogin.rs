//! A programmable fake of OneLogin's API (v2, and v1 for groups), built from OneLogin's own
//! documentation — not from what our client happens to send. The facts, and where they come
//! from:
//! - Token: `POST /auth/oauth2/v2/token`, `grant_type=client_credentials` in a JSON body, the
//!   credential as `Authorization: Basic base64(client_id:client_secret)` (what the official
//!   SDKs send) or as `client_id`/`client_secret` in the body; answers `access_token`,
//!   `created_at`, `expires_in` (36000), `refresh_token`, `token_type: "bearer"`,
//!   `account_id`. A wrong credential: 401 `{"status": {"error": true, "code": 401, "type":
//!   "Unauthorized", "message": "Authentication Failure"}}`; a wrong grant type: 400.
//!   <https://developers.onelogin.com/api-docs/2/oauth20-tokens/generate-tokens-2>
//! - `GET /api/2/users` (<https://developers.onelogin.com/api-docs/2/users/list-users>, and
//!   onelogin-python-sdk `UsersV2Api.list_users2`): a bare JSON array sorted by id; `limit`
//!   (default 50, at most 100); the next page's cursor in `After-Cursor` (absent on the last
//!   page), with `Before-Cursor`, `Total-Pages`, `Current-Page`, `Total-Count`; `cursor=`
//!   replays the filters given with it; `fields=` (`id` always comes back; without `fields`
//!   only a few attributes do); filters `updated_since` (ISO 8601), `user_ids` (comma list),
//!   `username`, `email`. Integer ids, `status` and `state` codes. A bad `updated_since`: 400
//!   `{"statusCode": 400, "name": "BadRequestError", "message": …}`.
//! - `GET /api/2/users/{id}`, `PUT /api/2/users/{id}` (partial; `custom_attributes` only for
//!   attributes defined under Users → Custom User Fields, else 422 `UnprocessableEntityError`);
//!   404 `NotFoundError`.
//! - `GET /api/2/roles` and `GET /api/2/roles/{id}/users` (arrays, cursor paging as above),
//!   <https://developers.onelogin.com/api-docs/2/roles/list-roles>; `GET /api/1/groups`
//!   (v1 envelope `{"status", "pagination": {"before_cursor", "after_cursor", "previous_link",
//!   "next_link"}, "data": [{"id", "name", "reference"}]}`, `after_cursor=` paging),
//!   <https://developers.onelogin.com/api-docs/1/groups/get-groups>.
//! - Rate limits (<https://developers.onelogin.com/api-docs/2/getting-started/rate-limits>):
//!   every answer carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
//!   (seconds until the hourly window resets); when used up, 429 `TooManyRequestsError`.
//! - Access needs `Authorization: Bearer <token>`; an unknown or expired token: 401
//!   `{"statusCode": 401, "name": "Unauthorized", "message": "Authentication Failure"}`. A
//!   credential with "Read users" only is refused on writes (the fake answers 401 as for a
//!   bad token: the body does not name the permission). The credentials of a deleted admin:
//!   500 on every call, the token request included (what the issue reports from the field).
//!
//! The fake clock starts at [`CLOCK_START`] and moves only with
//! [`FakeOneLogin::advance_clock`]; it stamps `updated_at`, the `Date` header and token
//! lifetimes.

// Each test module uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

/// The fake clock's start (2026-01-05T09:00:00Z), in epoch seconds.
pub const CLOCK_START: i64 = 1_767_603_600;
/// The API credential the fake accepts.
pub const CLIENT_ID: &str = "onelogin-test-client";
/// Its secret.
pub const CLIENT_SECRET: &str = "onelogin-test-secret-9f2c";
/// The hourly request budget by default.
pub const RATE_LIMIT: u64 = 5000;
/// What the list answers without `fields`.
const DEFAULT_FIELDS: &[&str] = &[
    "id",
    "email",
    "username",
    "firstname",
    "lastname",
    "status",
    "state",
    "created_at",
    "updated_at",
    "last_login",
];

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The query (decoded pairs).
    pub query: Vec<(String, String)>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
}

impl RecordedRequest {
    /// A query parameter's value.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }
}

/// A fault programmed for the next requests to a path prefix.
#[derive(Debug, Clone)]
enum Fault {
    /// Answered normally (to place a fault later in a sequence).
    Pass,
    Status(u16),
    /// This status with the request quoted back (headers and body) in the error's message, as
    /// a misconfigured gateway or proxy in front of OneLogin does.
    Echo(u16),
    RateLimited {
        retry_after: Option<u64>,
    },
    Truncate,
}

struct Inner {
    clock: i64,
    users: BTreeMap<u64, Map<String, Value>>,
    roles: BTreeMap<u64, String>,
    groups: BTreeMap<u64, String>,
    custom_fields: BTreeSet<String>,
    /// The API credential's secret (default [`CLIENT_SECRET`]).
    client_secret: String,
    tokens: BTreeMap<String, i64>,
    token_lifetime: i64,
    issued: usize,
    manage_users: bool,
    read_users: bool,
    deleted_admin: bool,
    /// API requests after which every token issued so far stops working.
    expire_tokens_after: Option<usize>,
    limit: u64,
    remaining: u64,
    window_start: i64,
    faults: Vec<(String, VecDeque<Fault>)>,
    requests: Vec<RecordedRequest>,
}

/// The fake, serving on `url` until dropped.
pub struct FakeOneLogin {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOneLogin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeOneLogin {
    /// Starts an empty account on a free 127.0.0.1 port.
    pub async fn start() -> FakeOneLogin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake OneLogin");
        let url = format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let inner = Arc::new(Mutex::new(Inner {
            clock: CLOCK_START,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            groups: BTreeMap::new(),
            custom_fields: BTreeSet::new(),
            client_secret: CLIENT_SECRET.to_owned(),
            tokens: BTreeMap::new(),
            token_lifetime: 36_000,
            issued: 0,
            manage_users: true,
            read_users: true,
            deleted_admin: false,
            expire_tokens_after: None,
            limit: RATE_LIMIT,
            remaining: RATE_LIMIT,
            window_start: CLOCK_START,
            faults: Vec::new(),
            requests: Vec::new(),
        }));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake OneLogin serves");
        });
        FakeOneLogin { url, inner, server }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a user: `fields` are merged over a complete user object (status 1, state 1).
    pub fn add_user(&self, id: u64, fields: Value) {
        let mut inner = self.lock();
        let now = iso(inner.clock);
        let mut user: Map<String, Value> = json!({
            "id": id, "username": null, "email": null, "firstname": null, "lastname": null,
            "title": null, "department": null, "company": null, "phone": null,
            "status": 1, "state": 1, "role_ids": [], "group_id": null, "manager_user_id": null,
            "manager_ad_id": null, "external_id": null, "directory_id": null,
            "distinguished_name": null, "member_of": null, "samaccountname": null,
            "userprincipalname": null, "comment": null, "preferred_locale_code": null,
            "custom_attributes": {}, "created_at": now, "updated_at": now,
            "activated_at": now, "last_login": null, "invalid_login_attempts": 0,
        })
        .as_object()
        .cloned()
        .expect("an object");
        for (key, value) in fields.as_object().cloned().unwrap_or_default() {
            user.insert(key, value);
        }
        user.insert("id".into(), json!(id));
        inner.users.insert(id, user);
    }

    /// Adds a raw record as the list returns it (bad records for tests), at `sort_id`.
    pub fn add_raw_record(&self, sort_id: u64, record: Value) {
        let mut inner = self.lock();
        let mut map = record.as_object().cloned().unwrap_or_default();
        map.entry("updated_at")
            .or_insert_with(|| json!(iso(CLOCK_START)));
        inner.users.insert(sort_id, map);
    }

    /// Changes a user's fields, as an admin would (moves `updated_at`).
    pub fn update_user(&self, id: u64, fields: Value) {
        let mut inner = self.lock();
        let now = iso(inner.clock);
        let user = inner.users.get_mut(&id).expect("known user");
        for (key, value) in fields.as_object().cloned().unwrap_or_default() {
            user.insert(key, value);
        }
        user.insert("updated_at".into(), json!(now));
    }

    /// Assigns a role (OneLogin does not move `updated_at` for this).
    pub fn assign_role(&self, user: u64, role: u64) {
        let mut inner = self.lock();
        let record = inner.users.get_mut(&user).expect("known user");
        let mut roles = role_set(record);
        roles.insert(role);
        record.insert("role_ids".into(), json!(roles));
    }

    /// Removes a role (without moving `updated_at`).
    pub fn remove_role(&self, user: u64, role: u64) {
        let mut inner = self.lock();
        let record = inner.users.get_mut(&user).expect("known user");
        let mut roles = role_set(record);
        roles.remove(&role);
        record.insert("role_ids".into(), json!(roles));
    }

    /// Deletes a user: it vanishes from every list.
    pub fn delete_user(&self, id: u64) {
        self.lock().users.remove(&id);
    }

    /// A user as stored.
    pub fn user(&self, id: u64) -> Option<Value> {
        self.lock().users.get(&id).cloned().map(Value::Object)
    }

    /// Adds a role.
    pub fn add_role(&self, id: u64, name: &str) {
        self.lock().roles.insert(id, name.to_owned());
    }

    /// Adds a group.
    pub fn add_group(&self, id: u64, name: &str) {
        self.lock().groups.insert(id, name.to_owned());
    }

    /// Defines a custom user field (Users → Custom User Fields).
    pub fn define_custom_field(&self, short_name: &str) {
        self.lock().custom_fields.insert(short_name.to_owned());
    }

    /// Whether the credential has "Manage users" (default) or only "Read users".
    pub fn set_manage_users(&self, manage: bool) {
        self.lock().manage_users = manage;
    }

    /// Whether the credential may read users at all (an "Authentication Only" credential
    /// may not).
    pub fn set_read_users(&self, read: bool) {
        self.lock().read_users = read;
    }

    /// Makes every call answer 500, as for the credentials of a deleted admin.
    pub fn delete_admin(&self) {
        self.lock().deleted_admin = true;
    }

    /// After `requests` more API requests, every token issued so far stops working (401).
    pub fn expire_tokens_after(&self, requests: usize) {
        self.lock().expire_tokens_after = Some(requests);
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.lock().issued
    }

    /// Moves the fake clock.
    pub fn advance_clock(&self, seconds: i64) {
        self.lock().clock += seconds;
    }

    /// Makes `secret` the API credential's secret (instead of [`CLIENT_SECRET`]).
    pub fn set_client_secret(&self, secret: &str) {
        self.lock().client_secret = secret.to_owned();
    }

    /// The next `times` requests under `path_prefix` answer `status`.
    pub fn fail_next(&self, path_prefix: &str, status: u16, times: usize) {
        self.push_fault(path_prefix, Fault::Status(status), times);
    }

    /// The next `times` requests to `path_prefix` answer `status` with the request quoted back
    /// in the message: its `Authorization` header, its body, and both base64-encoded.
    pub fn echo_next(&self, path_prefix: &str, status: u16, times: usize) {
        self.push_fault(path_prefix, Fault::Echo(status), times);
    }

    /// The next `times` requests under `path_prefix` answer 429 (with `Retry-After` if given).
    pub fn rate_limit_next(&self, path_prefix: &str, times: usize, retry_after: Option<u64>) {
        self.push_fault(path_prefix, Fault::RateLimited { retry_after }, times);
    }

    /// The request under `path_prefix` after the next `skip` ones answers 429 (with
    /// `Retry-After` if given): a rate limit in the middle of a paged read.
    pub fn rate_limit_after(&self, path_prefix: &str, skip: usize, retry_after: Option<u64>) {
        let mut inner = self.lock();
        let mut queue: VecDeque<Fault> = std::iter::repeat_n(Fault::Pass, skip).collect();
        queue.push_back(Fault::RateLimited { retry_after });
        inner.faults.push((path_prefix.to_owned(), queue));
    }

    /// The next successful page under `path_prefix` is cut in the middle of its JSON.
    pub fn truncate_next_page(&self, path_prefix: &str) {
        self.push_fault(path_prefix, Fault::Truncate, 1);
    }

    /// Sets the hourly budget (and fills this window's): accounts differ, and a benchmark
    /// reading 100,000 users several times needs more than the default.
    pub fn set_rate_limit(&self, limit: u64) {
        let mut inner = self.lock();
        inner.limit = limit;
        inner.remaining = limit;
    }

    /// Sets the budget left in this window.
    pub fn set_remaining(&self, remaining: u64) {
        self.lock().remaining = remaining;
    }

    fn push_fault(&self, path_prefix: &str, fault: Fault, times: usize) {
        let mut inner = self.lock();
        // `usize::MAX` means every request: far more than any test sends.
        let queue: VecDeque<Fault> = std::iter::repeat_n(fault, times.min(100_000)).collect();
        inner.faults.push((path_prefix.to_owned(), queue));
    }

    /// Every request received.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Requests whose path is exactly `path`.
    pub fn count(&self, path: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Forgets the requests received.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }
}

fn role_set(record: &Map<String, Value>) -> BTreeSet<u64> {
    record
        .get("role_ids")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

fn iso(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .expect("valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn error_v2(status: u16, name: &str, message: &str) -> (u16, Value) {
    (
        status,
        json!({"statusCode": status, "name": name, "message": message}),
    )
}

fn error_v1(status: u16, kind: &str, message: &str) -> (u16, Value) {
    (
        status,
        json!({"status": {"error": true, "code": status, "type": kind, "message": message}}),
    )
}

async fn handle(State(inner): State<Arc<Mutex<Inner>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let mut inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
    inner.respond(&parts.method, &parts.uri, &parts.headers, &body)
}

impl Inner {
    fn respond(
        &mut self,
        method: &Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Response {
        let path = uri.path().to_owned();
        let query: Vec<(String, String)> =
            url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let authorization = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        self.requests.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            authorization: authorization.clone(),
        });
        // The hourly window.
        if self.clock - self.window_start >= 3600 {
            self.window_start = self.clock;
            self.remaining = self.limit;
        }
        let fault = self
            .faults
            .iter_mut()
            .find(|(prefix, queue)| path.starts_with(prefix.as_str()) && !queue.is_empty())
            .and_then(|(_, queue)| queue.pop_front());
        let mut truncate = false;
        let used_up = path.starts_with("/api/") && self.remaining == 0;
        let injected_429 = matches!(fault, Some(Fault::RateLimited { .. }));
        let (status, value, extra) = match fault {
            Some(Fault::Status(status)) => {
                let (status, value) = error_v2(status, "InternalServerError", "Injected failure");
                (status, value, Vec::new())
            }
            Some(Fault::Echo(status)) => {
                let quoted = super::quote::quote_request(method.as_str(), uri, headers, body);
                let (status, value) = error_v2(status, "Echo", &quoted);
                (status, value, Vec::new())
            }
            Some(Fault::RateLimited { retry_after }) => {
                let (status, value) = error_v2(429, "TooManyRequestsError", "Rate limit exceeded");
                let extra = retry_after
                    .map(|seconds| vec![("retry-after", seconds.to_string())])
                    .unwrap_or_default();
                (status, value, extra)
            }
            _ if used_up => {
                let (status, value) = error_v2(429, "TooManyRequestsError", "Rate limit exceeded");
                (status, value, Vec::new())
            }
            other => {
                truncate = matches!(other, Some(Fault::Truncate));
                self.route(method, &path, &query, authorization.as_deref(), body)
            }
        };
        // An injected 429 shows an empty budget without spending the real one.
        let shown_remaining = if injected_429 {
            0
        } else {
            if path.starts_with("/api/") {
                self.remaining = self.remaining.saturating_sub(1);
            }
            self.remaining
        };
        let mut text = if value.is_null() {
            String::new()
        } else {
            value.to_string()
        };
        if truncate && status == 200 {
            text.truncate(text.len() / 2);
        }
        let mut response = Response::builder()
            .status(status)
            .header("content-type", "application/json; charset=utf-8")
            .header(
                "date",
                httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(self.clock as u64)),
            )
            .header("x-ratelimit-limit", self.limit.to_string())
            .header("x-ratelimit-remaining", shown_remaining.to_string())
            .header(
                "x-ratelimit-reset",
                (3600 - (self.clock - self.window_start)).max(0).to_string(),
            );
        for (name, value) in extra {
            response = response.header(name, value);
        }
        response.body(Body::from(text)).expect("a valid response")
    }

    /// Answers one request: status, body, extra headers (paging).
    fn route(
        &mut self,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        authorization: Option<&str>,
        body: &Bytes,
    ) -> (u16, Value, Vec<(&'static str, String)>) {
        if self.deleted_admin {
            let (status, value) = error_v2(500, "InternalServerError", "Internal Server Error");
            return (status, value, Vec::new());
        }
        if path == "/auth/oauth2/v2/token" && method == Method::POST {
            let (status, value) = self.token(authorization, body);
            return (status, value, Vec::new());
        }
        // Bearer token (v1 also documents `bearer:<token>`).
        let token = authorization
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or(value.strip_prefix("bearer:"))
            })
            .map(str::trim);
        if let Some(after) = self.expire_tokens_after.as_mut() {
            if *after == 0 {
                self.tokens.clear();
                self.expire_tokens_after = None;
            } else {
                *after -= 1;
            }
        }
        let valid = token
            .and_then(|token| self.tokens.get(token))
            .is_some_and(|expires| *expires > self.clock);
        if !valid {
            let (status, value) = error_v2(401, "Unauthorized", "Authentication Failure");
            return (status, value, Vec::new());
        }
        let param = |name: &str| {
            query
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        if !self.read_users {
            let (status, value) = error_v2(401, "Unauthorized", "Authentication Failure");
            return (status, value, Vec::new());
        }
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let done = |(status, value): (u16, Value)| (status, value, Vec::new());
        match (method.clone(), segments.as_slice()) {
            (Method::GET, ["api", "2", "users"]) => self.list_users(query),
            (Method::GET, ["api", "2", "users", id]) => done(match self.user_by(id) {
                Some(user) => (200, Value::Object(user)),
                None => error_v2(404, "NotFoundError", "Not Found"),
            }),
            (Method::PUT, ["api", "2", "users", id]) => done(self.put_user(id, body)),
            (Method::GET, ["api", "2", "roles"]) => {
                let roles: Vec<Value> = self
                    .roles
                    .iter()
                    .map(|(id, name)| json!({"id": id, "name": name}))
                    .collect();
                page(roles, &param)
            }
            (Method::GET, ["api", "2", "roles", id, "users"]) => {
                let Some(role) = id
                    .parse::<u64>()
                    .ok()
                    .filter(|id| self.roles.contains_key(id))
                else {
                    return done(error_v2(404, "NotFoundError", "Not Found"));
                };
                let members: Vec<Value> = self
                    .users
                    .values()
                    .filter(|user| {
                        user.get("role_ids")
                            .and_then(Value::as_array)
                            .is_some_and(|ids| ids.iter().any(|id| id.as_u64() == Some(role)))
                    })
                    .map(|user| {
                        json!({"id": user["id"], "name": format!("{} {}",
                            user.get("firstname").and_then(Value::as_str).unwrap_or_default(),
                            user.get("lastname").and_then(Value::as_str).unwrap_or_default()),
                            "email": user.get("email"), "username": user.get("username"),
                            "assigned": true})
                    })
                    .collect();
                page(members, &param)
            }
            (Method::GET, ["api", "1", "groups"]) => {
                let groups: Vec<Value> = self
                    .groups
                    .iter()
                    .map(|(id, name)| json!({"id": id, "name": name, "reference": null}))
                    .collect();
                let limit = param("limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(50usize)
                    .min(50);
                let start = param("after_cursor")
                    .and_then(|c| decode_cursor(&c))
                    .unwrap_or(0);
                let end = (start + limit).min(groups.len());
                let after = (end < groups.len()).then(|| encode_cursor(end));
                done((
                    200,
                    json!({
                        "status": {"error": false, "code": 200, "type": "success", "message": "Success"},
                        "pagination": {"before_cursor": null, "after_cursor": after,
                            "previous_link": null, "next_link": null},
                        "data": groups[start.min(end)..end],
                    }),
                ))
            }
            _ => done(error_v2(404, "NotFoundError", "Not Found")),
        }
    }

    fn token(&mut self, authorization: Option<&str>, body: &Bytes) -> (u16, Value) {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if body.get("grant_type").and_then(Value::as_str) != Some("client_credentials") {
            return error_v1(400, "bad request", "grant_type is incorrect/absent");
        }
        let from_basic = authorization
            .and_then(|value| value.strip_prefix("Basic "))
            .and_then(|encoded| STANDARD.decode(encoded.trim()).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| {
                text.split_once(':')
                    .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
            });
        let from_body = match (
            body.get("client_id").and_then(Value::as_str),
            body.get("client_secret").and_then(Value::as_str),
        ) {
            (Some(id), Some(secret)) => Some((id.to_owned(), secret.to_owned())),
            _ => None,
        };
        let Some((id, secret)) = from_basic.or(from_body) else {
            return error_v1(401, "Unauthorized", "Authentication Failure");
        };
        if id != CLIENT_ID || secret != self.client_secret {
            return error_v1(401, "Unauthorized", "Authentication Failure");
        }
        self.issued += 1;
        let token = format!("ol-access-{}-{}", self.issued, self.clock);
        self.tokens
            .insert(token.clone(), self.clock + self.token_lifetime);
        (
            200,
            json!({
                "access_token": token, "created_at": iso(self.clock),
                "expires_in": self.token_lifetime,
                "refresh_token": format!("ol-refresh-{}", self.issued),
                "token_type": "bearer", "account_id": 555_555,
            }),
        )
    }

    fn user_by(&self, id: &str) -> Option<Map<String, Value>> {
        self.users.get(&id.parse::<u64>().ok()?).cloned()
    }

    fn put_user(&mut self, id: &str, body: &Bytes) -> (u16, Value) {
        if !self.manage_users {
            return error_v2(401, "Unauthorized", "Authentication Failure");
        }
        let Some(id) = id
            .parse::<u64>()
            .ok()
            .filter(|id| self.users.contains_key(id))
        else {
            return error_v2(404, "NotFoundError", "Not Found");
        };
        let Ok(Value::Object(changes)) = serde_json::from_slice::<Value>(body) else {
            return error_v2(400, "BadRequestError", "Invalid JSON body");
        };
        if let Some(custom) = changes.get("custom_attributes").and_then(Value::as_object) {
            for key in custom.keys() {
                if !self.custom_fields.contains(key) {
                    return (
                        422,
                        json!({"statusCode": 422, "name": "UnprocessableEntityError",
                            "message": "Validation Failed",
                            "errors": [{"field": "custom_attributes",
                                "message": [format!("{key} is not a valid custom attribute")]}]}),
                    );
                }
            }
        }
        let now = iso(self.clock);
        let user = self.users.get_mut(&id).expect("checked");
        for (key, value) in changes {
            if key == "custom_attributes" {
                let merged = user.entry("custom_attributes").or_insert_with(|| json!({}));
                if let (Some(merged), Some(value)) = (merged.as_object_mut(), value.as_object()) {
                    for (name, value) in value {
                        merged.insert(name.clone(), value.clone());
                    }
                }
            } else if key != "id" {
                user.insert(key, value);
            }
        }
        user.insert("updated_at".into(), json!(now));
        (200, Value::Object(user.clone()))
    }

    /// `GET /api/2/users`: users sorted by id; the cursor names the last id of the previous
    /// page (opaque to clients), so a page costs its own users, not the whole account.
    fn list_users(&self, query: &[(String, String)]) -> (u16, Value, Vec<(&'static str, String)>) {
        let param = |name: &str| {
            query
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let bad = |message: &str| {
            let (status, value) = error_v2(400, "BadRequestError", message);
            (status, value, Vec::new())
        };
        let since = match param("updated_since") {
            // As the fake's own `updated_at` text (same format): comparing the texts compares
            // the times.
            Some(text) => match chrono::DateTime::parse_from_rfc3339(&text) {
                Ok(time) => Some(iso(time.timestamp())),
                Err(_) => return bad("updated_since must be an ISO8601 timestamp"),
            },
            None => None,
        };
        let after = match param("cursor") {
            Some(cursor) => match decode_cursor(&cursor) {
                Some(after) => Some(after as u64),
                None => return bad("Invalid cursor"),
            },
            None => None,
        };
        let limit = param("limit")
            .and_then(|limit| limit.parse::<usize>().ok())
            .unwrap_or(50)
            .clamp(1, 100);
        let ids: Option<BTreeSet<String>> =
            param("user_ids").map(|ids| ids.split(',').map(|id| id.trim().to_owned()).collect());
        let fields: Option<BTreeSet<String>> = param("fields").map(|fields| {
            fields
                .split(',')
                .map(|field| field.trim().to_owned())
                .chain(["id".to_owned()])
                .collect()
        });
        let text_eq = |user: &Map<String, Value>, key: &str, wanted: &Option<String>| {
            wanted.as_ref().is_none_or(|wanted| {
                user.get(key)
                    .and_then(Value::as_str)
                    .is_some_and(|value| value.eq_ignore_ascii_case(wanted))
            })
        };
        let (username, email) = (param("username"), param("email"));
        let filtered = since.is_some() || ids.is_some() || username.is_some() || email.is_some();
        let matches = |user: &Map<String, Value>| {
            since.as_deref().is_none_or(|since| {
                user.get("updated_at")
                    .and_then(Value::as_str)
                    .is_some_and(|updated| updated > since)
            }) && ids.as_ref().is_none_or(|ids| {
                user.get("id")
                    .is_some_and(|id| ids.contains(&id.to_string()))
            }) && text_eq(user, "username", &username)
                && text_eq(user, "email", &email)
        };
        // `user_ids` names the users: look them up instead of scanning the account.
        let candidates: Option<Vec<(u64, &Map<String, Value>)>> = ids.as_ref().map(|ids| {
            let mut wanted: Vec<u64> = ids.iter().filter_map(|id| id.parse().ok()).collect();
            wanted.sort_unstable();
            wanted.dedup();
            wanted
                .into_iter()
                .filter_map(|id| self.users.get(&id).map(|user| (id, user)))
                .collect()
        });
        let all: Box<dyn Iterator<Item = (u64, &Map<String, Value>)>> = match &candidates {
            Some(candidates) => Box::new(candidates.iter().copied()),
            None => Box::new(self.users.iter().map(|(id, user)| (*id, user))),
        };
        let total = if filtered {
            all.filter(|(_, user)| matches(user)).count()
        } else {
            self.users.len()
        };
        let rest: Box<dyn Iterator<Item = (u64, &Map<String, Value>)>> = match (&candidates, after)
        {
            (Some(candidates), _) => Box::new(
                candidates
                    .iter()
                    .copied()
                    .filter(move |(id, _)| after.is_none_or(|after| *id > after)),
            ),
            (None, Some(after)) => Box::new(
                self.users
                    .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                    .map(|(id, user)| (*id, user)),
            ),
            (None, None) => Box::new(self.users.iter().map(|(id, user)| (*id, user))),
        };
        let mut page: Vec<(u64, &Map<String, Value>)> = rest
            .filter(|(_, user)| matches(user))
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let items: Vec<Value> = page
            .iter()
            .map(|(_, user)| {
                Value::Object(
                    user.iter()
                        .filter(|(key, _)| match &fields {
                            Some(fields) => fields.contains(key.as_str()),
                            None => DEFAULT_FIELDS.contains(&key.as_str()),
                        })
                        .map(|(key, value)| (key.clone(), value.clone()))
                        .collect(),
                )
            })
            .collect();
        let mut headers = vec![
            ("total-count", total.to_string()),
            ("total-pages", total.div_ceil(limit).max(1).to_string()),
            ("page-items", limit.to_string()),
        ];
        if more && let Some((last, _)) = page.last() {
            headers.push(("after-cursor", encode_cursor(*last as usize)));
        }
        if let Some(after) = after {
            headers.push(("before-cursor", encode_cursor(after as usize)));
        }
        (200, Value::Array(items), headers)
    }
}

/// One page of a v2 list: `limit` (default 50, at most 100) items after the `cursor`, with
/// the paging headers.
fn page(
    items: Vec<Value>,
    param: &dyn Fn(&str) -> Option<String>,
) -> (u16, Value, Vec<(&'static str, String)>) {
    let limit = param("limit")
        .and_then(|limit| limit.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 100);
    let start = match param("cursor") {
        Some(cursor) => match decode_cursor(&cursor) {
            Some(start) => start,
            None => {
                let (status, value) = error_v2(400, "BadRequestError", "Invalid cursor");
                return (status, value, Vec::new());
            }
        },
        None => 0,
    };
    let total = items.len();
    let end = (start + limit).min(total);
    let pages = total.div_ceil(limit).max(1);
    let mut headers = vec![
        ("total-count", total.to_string()),
        ("total-pages", pages.to_string()),
        ("current-page", (start / limit + 1).to_string()),
        ("page-items", limit.to_string()),
    ];
    if end < total {
        headers.push(("after-cursor", encode_cursor(end)));
    }
    if start > 0 {
        headers.push(("before-cursor", encode_cursor(start.saturating_sub(limit))));
    }
    let slice = items[start.min(end)..end].to_vec();
    (200, Value::Array(slice), headers)
}

fn encode_cursor(offset: usize) -> String {
    STANDARD.encode(format!("offset:{offset}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let text = String::from_utf8(STANDARD.decode(cursor).ok()?).ok()?;
    text.strip_prefix("offset:")?.parse().ok()
}
