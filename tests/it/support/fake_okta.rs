//! A programmable fake of the Okta Management API (and of the org authorization server's token
//! endpoint), built from the documented behaviour collected in
//! `../shared/reference/idp-apis.md` (part A, and the "Okta fake" checklist of part C) — not
//! from what our client happens to send. The section numbers below (A2, A7, …) refer to it.
//!
//! It serves HTTP/1.1 on `127.0.0.1:<free port>` from a task of the calling test's tokio runtime
//! and keeps its whole state behind one `Arc<Mutex<…>>`, so a test programs it synchronously
//! (`add_user`, `fail_next`, …) while the code under test talks to it.
//!
//! What it reproduces:
//! - `GET /api/v1/users` (A2): DEPROVISIONED omitted unless `search`/`filter` is given; `limit`
//!   (default 200, capped at 200); an opaque `after` cursor; a `link: <…>; rel="self"` header and,
//!   only when there is more, a separate `link: <…>; rel="next"` header with absolute URLs; users
//!   sorted by id; `q` (startsWith on firstName/lastName/email, no paging, default limit 10).
//! - `search` / `filter` expressions (A2): `eq sw co gt ge lt le pr`, `and`/`or`, parentheses;
//!   property names case-sensitive, operators and string values case-insensitive; `ne` and `not`
//!   rejected; anything unparsable → 400 `E0000031`. `filter` only takes its documented subset.
//! - `GET /api/v1/users/{idOrLogin}` (404 `E0000007`), `POST /api/v1/users/{idOrLogin}` partial
//!   profile update (A6; unknown profile property → 400 `E0000001`), `GET /api/v1/users/{id}/groups`
//!   (no paging), `GET /api/v1/groups` (`q`, `search`, paging), `GET /api/v1/groups/{id}`,
//!   `GET /api/v1/groups/{id}/users` (A5, default limit 1000).
//! - `GET /api/v1/logs` (A10): `since`, `until`, `after` (exclusive with `since`), `filter`, `q`,
//!   `sortOrder`, `limit` (default 100, max 1000); a polling query (no `until`, ascending) always
//!   has a `next` link, even when the page is empty.
//! - Every response carries `Date` (the fake clock), `X-Okta-Request-Id` and
//!   `X-Rate-Limit-Limit/-Remaining/-Reset` (A8; reset in epoch seconds of the fake clock).
//! - Auth (A7): `SSWS <token>`, or an access token from `POST /oauth2/v1/token`
//!   (client credentials + `private_key_jwt`, optionally DPoP with the nonce round); 401
//!   `E0000011` otherwise; 403 `E0000006` + `WWW-Authenticate … error="insufficient_scope"` when
//!   an OAuth token lacks the endpoint's scope.
//! - Faults: 5xx bursts, 429 `E0000047` (also the concurrent-limit variant), a 200 whose JSON is
//!   cut in the middle, a body that is aborted mid-stream, a slow response.
//!
//! The fake clock starts at [`CLOCK_START`] and only moves with [`FakeOkta::advance_clock`]. It
//! stamps `created`/`lastUpdated`/`published`, the `Date` header, `X-Rate-Limit-Reset` and the
//! access tokens' lifetime. JWTs the client signs (client assertions, DPoP proofs) are checked
//! against the real system clock, since that is the clock the client signs with.

// Each test module uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

/// The API token the fake accepts as `Authorization: SSWS okta-test-token`.
pub const API_TOKEN: &str = "okta-test-token";
/// Where the fake clock starts.
pub const CLOCK_START: &str = "2026-11-26T10:00:00.000Z";
/// The scopes a service app is granted unless [`FakeOkta::grant_scopes`] says otherwise.
pub const DEFAULT_SCOPES: &[&str] = &[
    "okta.users.read",
    "okta.users.manage",
    "okta.groups.read",
    "okta.logs.read",
];
/// Standard `UserProfile` properties (A3); custom ones come from [`FakeOkta::define_attribute`]
/// or from the profiles given to [`FakeOkta::add_user`] / [`FakeOkta::update_profile`].
pub const STANDARD_ATTRIBUTES: &[&str] = &[
    "login",
    "email",
    "secondEmail",
    "firstName",
    "lastName",
    "middleName",
    "honorificPrefix",
    "honorificSuffix",
    "title",
    "displayName",
    "nickName",
    "profileUrl",
    "primaryPhone",
    "mobilePhone",
    "streetAddress",
    "city",
    "state",
    "zipCode",
    "countryCode",
    "postalAddress",
    "preferredLanguage",
    "locale",
    "timezone",
    "userType",
    "employeeNumber",
    "costCenter",
    "organization",
    "division",
    "department",
    "managerId",
    "manager",
];

/// The default `typ.id` of users (the org's default user type).
const USER_TYPE_ID: &str = "oty1fake0default0type";
/// The actor of every System Log event (an admin).
const ACTOR_ID: &str = "00u1fakeadmin0000001";
/// The `X-Rate-Limit-Reset` window of normal responses, in seconds (A8: "typically 60").
const WINDOW_SECS: u64 = 60;
/// The largest body the fake reads.
const BODY_LIMIT: usize = 16 << 20;
/// How far a DPoP proof's `iat` may be from the real clock (RFC 9449 leaves it to the server).
const DPOP_IAT_WINDOW_SECS: i64 = 300;
/// JWT `exp` leeway, in seconds.
const LEEWAY_SECS: u64 = 60;
/// The user profile's `co` operator only works on these (A2).
const CONTAINS_ATTRIBUTES: &[&str] = &[
    "profile.firstName",
    "profile.lastName",
    "profile.email",
    "profile.login",
];

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, still percent-encoded (e.g. `/api/v1/users`).
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// Headers, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// When it arrived (tokio's clock, so paused time applies on a paused runtime).
    pub at: Instant,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The decoded query parameters, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        parse_query(self.query.as_deref())
    }

    /// The first decoded value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A running fake Okta org. Dropping it stops the server.
pub struct FakeOkta {
    /// `http://127.0.0.1:PORT` (no trailing slash): the org URL.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOkta {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeOkta {
    /// Starts a fake org with no users, no groups and no service apps on a free 127.0.0.1 port.
    pub async fn start() -> FakeOkta {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Okta");
        let port = listener.local_addr().expect("local addr").port();
        let url = format!("http://127.0.0.1:{port}");
        let inner = Arc::new(Mutex::new(Inner::new(url.clone())));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake Okta serves");
        });
        FakeOkta { url, inner, server }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The API token (`Authorization: SSWS <token>`).
    pub fn api_token(&self) -> &str {
        API_TOKEN
    }

    /// `{url}/oauth2/v1/token`, the `aud` of client assertions and the `htu` of token DPoP proofs.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/v1/token", self.url)
    }

    // ----- Directory -------------------------------------------------------------------------

    /// Adds a user with `status` (`ACTIVE`, `STAGED`, `SUSPENDED`, `DEPROVISIONED`, …) and
    /// `profile` (an object). `created` = `lastUpdated` = the fake clock's now; `activated` too
    /// when the status is `ACTIVE`. Profile properties not in the schema are defined (the org's
    /// admin set them up). Logs `user.lifecycle.create`. Panics if the id exists.
    pub fn add_user(&self, id: &str, status: &str, profile: Value) {
        let mut inner = self.lock();
        assert!(!inner.users.contains_key(id), "user {id} already exists");
        let Value::Object(profile) = profile else {
            panic!("a profile is a JSON object")
        };
        for key in profile.keys() {
            inner.schema.insert(key.clone());
        }
        let now = inner.clock_ms;
        let user = UserRec {
            id: id.to_owned(),
            status: status.to_owned(),
            created: now,
            activated: (status == "ACTIVE").then_some(now),
            status_changed: None,
            last_updated: now,
            profile,
        };
        let target = user.target();
        inner.users.insert(id.to_owned(), user);
        inner.log("user.lifecycle.create", vec![target]);
    }

    /// Merges `patch` (an object) into the user's profile (a `null` value sets the property to
    /// null), bumps `lastUpdated`, logs `user.account.update_profile`. Panics on an unknown user.
    pub fn update_profile(&self, id: &str, patch: Value) {
        let mut inner = self.lock();
        let Value::Object(patch) = patch else {
            panic!("a profile patch is a JSON object")
        };
        for key in patch.keys() {
            inner.schema.insert(key.clone());
        }
        let now = inner.clock_ms;
        let user = inner
            .users
            .get_mut(id)
            .unwrap_or_else(|| panic!("no user {id}"));
        user.profile.extend(patch);
        user.last_updated = now;
        let target = user.target();
        inner.log("user.account.update_profile", vec![target]);
    }

    /// Sets the user's status, bumping `lastUpdated` and `statusChanged` (and `activated` when
    /// it becomes `ACTIVE` from `STAGED`/`PROVISIONED`/`DEPROVISIONED`); logs the lifecycle event
    /// (deactivate, suspend, unsuspend, reactivate, activate, account.lock). Group memberships
    /// are kept. Panics on an unknown user.
    pub fn set_status(&self, id: &str, status: &str) {
        let mut inner = self.lock();
        let now = inner.clock_ms;
        let user = inner
            .users
            .get_mut(id)
            .unwrap_or_else(|| panic!("no user {id}"));
        let old = std::mem::replace(&mut user.status, status.to_owned());
        user.last_updated = now;
        user.status_changed = Some(now);
        let event = match (old.as_str(), status) {
            (_, "DEPROVISIONED") => Some("user.lifecycle.deactivate"),
            (_, "SUSPENDED") => Some("user.lifecycle.suspend"),
            ("SUSPENDED", "ACTIVE") => Some("user.lifecycle.unsuspend"),
            ("DEPROVISIONED", _) => Some("user.lifecycle.reactivate"),
            ("STAGED" | "PROVISIONED", "ACTIVE") => Some("user.lifecycle.activate"),
            (_, "LOCKED_OUT") => Some("user.account.lock"),
            _ => None,
        };
        if status == "ACTIVE" && matches!(old.as_str(), "STAGED" | "PROVISIONED" | "DEPROVISIONED")
        {
            user.activated = Some(now);
        }
        let target = user.target();
        if let Some(event) = event {
            inner.log(event, vec![target]);
        }
    }

    /// Hard delete: the user vanishes from every list and every group; `GET` gives 404. Logs
    /// `user.lifecycle.delete.completed`. Panics on an unknown user.
    pub fn delete_user(&self, id: &str) {
        let mut inner = self.lock();
        let user = inner
            .users
            .remove(id)
            .unwrap_or_else(|| panic!("no user {id}"));
        for members in inner.members.values_mut() {
            members.remove(id);
        }
        inner.log("user.lifecycle.delete.completed", vec![user.target()]);
    }

    /// Adds an `OKTA_GROUP` with this name (no description). Panics if the id exists.
    pub fn add_group(&self, id: &str, name: &str) {
        self.add_group_with_description(id, name, None);
    }

    /// Adds an `OKTA_GROUP` with a name and a description.
    pub fn add_group_with_description(&self, id: &str, name: &str, description: Option<&str>) {
        let mut inner = self.lock();
        assert!(!inner.groups.contains_key(id), "group {id} already exists");
        let now = inner.clock_ms;
        inner.groups.insert(
            id.to_owned(),
            GroupRec {
                id: id.to_owned(),
                name: name.to_owned(),
                description: description.map(str::to_owned),
                created: now,
                last_updated: now,
                last_membership_updated: now,
            },
        );
        inner.members.entry(id.to_owned()).or_default();
    }

    /// Renames a group: its `profile.name` and `lastUpdated` change and `group.profile.update`
    /// is logged with the group as target. Its members' `lastUpdated` does not change.
    pub fn rename_group(&self, id: &str, name: &str) {
        let mut inner = self.lock();
        let now = inner.clock_ms;
        let group = inner
            .groups
            .get_mut(id)
            .unwrap_or_else(|| panic!("no group {id}"));
        group.name = name.to_owned();
        group.last_updated = now;
        let target = group.target();
        inner.log("group.profile.update", vec![target]);
    }

    /// Deletes a group with its memberships; `group.lifecycle.delete` is logged with the group
    /// as target. Its members' `lastUpdated` does not change.
    pub fn delete_group(&self, id: &str) {
        let mut inner = self.lock();
        let group = inner
            .groups
            .remove(id)
            .unwrap_or_else(|| panic!("no group {id}"));
        inner.members.remove(id);
        inner.log("group.lifecycle.delete", vec![group.target()]);
    }

    /// Makes the last two events persisted in the other order than they were published, as
    /// Okta documents a polling read may return them ("events are not guaranteed to be in
    /// order by `published`").
    pub fn persist_last_two_events_swapped(&self) {
        let mut inner = self.lock();
        let n = inner.events.len();
        assert!(n >= 2, "fewer than two events");
        inner.events.swap(n - 1, n - 2);
    }

    /// Adds the user to the group. As in Okta, the user's `lastUpdated` does NOT change; the
    /// group's `lastMembershipUpdated` does, and `group.user_membership.add` is logged.
    pub fn add_member(&self, group_id: &str, user_id: &str) {
        self.membership(group_id, user_id, true);
    }

    /// Removes the user from the group (`group.user_membership.remove`).
    pub fn remove_member(&self, group_id: &str, user_id: &str) {
        self.membership(group_id, user_id, false);
    }

    fn membership(&self, group_id: &str, user_id: &str, add: bool) {
        let mut inner = self.lock();
        let now = inner.clock_ms;
        let user_target = inner
            .users
            .get(user_id)
            .unwrap_or_else(|| panic!("no user {user_id}"))
            .target();
        let group = inner
            .groups
            .get_mut(group_id)
            .unwrap_or_else(|| panic!("no group {group_id}"));
        group.last_membership_updated = now;
        let group_target = group.target();
        let members = inner.members.entry(group_id.to_owned()).or_default();
        let changed = if add {
            members.insert(user_id.to_owned())
        } else {
            members.remove(user_id)
        };
        if changed {
            let event = if add {
                "group.user_membership.add"
            } else {
                "group.user_membership.remove"
            };
            inner.log(event, vec![user_target, group_target]);
        }
    }

    /// The user object as `GET /api/v1/users/{id}` returns it, or `None` (e.g. hard-deleted).
    pub fn user(&self, id: &str) -> Option<Value> {
        let inner = self.lock();
        inner.users.get(id).map(|u| inner.user_json(u))
    }

    /// The ids of the group's members.
    pub fn members(&self, group_id: &str) -> Vec<String> {
        self.lock()
            .members
            .get(group_id)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds a custom property to the user profile schema, so write-backs may set it.
    pub fn define_attribute(&self, name: &str) {
        self.lock().schema.insert(name.to_owned());
    }

    /// Moves the fake clock forward (`seconds` ≥ 0; it never goes back, as System Log order
    /// relies on it).
    pub fn advance_clock(&self, seconds: i64) {
        assert!(seconds >= 0, "the fake clock does not go back");
        self.lock().clock_ms += seconds * 1000;
    }

    /// The fake clock's now, formatted as Okta formats dates (`2026-11-26T10:00:00.000Z`).
    pub fn now(&self) -> String {
        fmt_ts(self.lock().clock_ms)
    }

    /// The fake clock's now in epoch milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.lock().clock_ms
    }

    /// By default a write-back to a DEPROVISIONED user is refused (A4: it needs the "Edit
    /// Deactivated User Profile Updates" admin option); this turns that option on or off.
    pub fn allow_deprovisioned_updates(&self, allow: bool) {
        self.lock().allow_deprovisioned_updates = allow;
    }

    // ----- Faults and observation ------------------------------------------------------------

    /// The next `times` requests whose path starts with `path_prefix` get `status` (500 →
    /// `E0000009` JSON; 502/503/504 → an HTML page, as a load balancer sends; others → a JSON
    /// error body).
    pub fn fail_next(&self, path_prefix: &str, status: u16, times: usize) {
        self.add_fault(path_prefix, FaultKind::Fail(status), times);
    }

    /// The next `times` requests whose path starts with `path_prefix` get `status` with the
    /// request quoted back, as a proxy or a misconfigured gateway in front of Okta may answer:
    /// 500 as a plain-text page, others as an Okta and OAuth error whose summary and
    /// description quote it.
    pub fn echo_next(&self, path_prefix: &str, status: u16, times: usize) {
        self.add_fault(path_prefix, FaultKind::Echo(status), times);
    }

    /// The next `times` matching requests get 429 `E0000047` with `X-Rate-Limit-Remaining: 0`
    /// and `X-Rate-Limit-Reset` = fake now + `reset_in_secs`.
    pub fn rate_limit_next(&self, path_prefix: &str, times: usize, reset_in_secs: u64) {
        self.add_fault(path_prefix, FaultKind::RateLimit(reset_in_secs), times);
    }

    /// The concurrent-rate-limit variant of 429 (A8): `X-Rate-Limit-Limit: 0` and `-Remaining:
    /// 0`, reset in 60 s.
    pub fn concurrent_limit_next(&self, path_prefix: &str, times: usize) {
        self.add_fault(path_prefix, FaultKind::Concurrent, times);
    }

    /// The next matching response that would be a 200 keeps its status and headers but its JSON
    /// body is cut in the middle (with a matching `Content-Length`, so the HTTP exchange itself
    /// completes).
    pub fn truncate_next_page(&self, path_prefix: &str) {
        self.add_fault(path_prefix, FaultKind::Truncate, 1);
    }

    /// The next matching response that would be a 200 sends half its body (chunked) and then
    /// breaks the connection: the client sees a transport error while reading the body.
    pub fn abort_next_page(&self, path_prefix: &str) {
        self.add_fault(path_prefix, FaultKind::Abort, 1);
    }

    /// The next `times` matching responses are held back for `delay` (tokio time).
    pub fn delay_next(&self, path_prefix: &str, delay: Duration, times: usize) {
        self.add_fault(path_prefix, FaultKind::Delay(delay), times);
    }

    fn add_fault(&self, path_prefix: &str, kind: FaultKind, times: usize) {
        if times > 0 {
            self.lock().faults.push(Fault {
                prefix: path_prefix.to_owned(),
                kind,
                times,
            });
        }
    }

    /// From now on normal responses say `X-Rate-Limit-Remaining: remaining` and
    /// `X-Rate-Limit-Reset: <fake now + reset_in_secs>`. (By default Remaining is the bucket's
    /// limit minus one and Reset is fake now + 60.)
    pub fn set_remaining(&self, remaining: u64, reset_in_secs: u64) {
        self.lock().remaining = Some((remaining, reset_in_secs));
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// How many requests so far had a path starting with `path_prefix`.
    pub fn count(&self, path_prefix: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .count()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    // ----- OAuth service apps ----------------------------------------------------------------

    /// Registers an API Services app for client credentials with `private_key_jwt`, verified
    /// against `public_key_pem` (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`; RSA → RS256/384/512,
    /// EC → ES256/384). With `require_dpop` the token endpoint insists on DPoP (A7). Granted
    /// scopes: [`DEFAULT_SCOPES`].
    pub fn register_service_app(&self, client_id: &str, public_key_pem: &str, require_dpop: bool) {
        assert!(
            assertion_key(public_key_pem).is_ok(),
            "register_service_app: not an RSA or EC public key PEM"
        );
        self.lock().apps.insert(
            client_id.to_owned(),
            App {
                public_key_pem: public_key_pem.to_owned(),
                require_dpop,
                scopes: DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            },
        );
    }

    /// Replaces the scopes granted to a registered service app.
    pub fn grant_scopes(&self, client_id: &str, scopes: &[&str]) {
        let mut inner = self.lock();
        let app = inner
            .apps
            .get_mut(client_id)
            .unwrap_or_else(|| panic!("no service app {client_id}"));
        app.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
    }

    /// The DPoP nonce the token endpoint currently hands out.
    pub fn dpop_nonce(&self) -> String {
        self.lock().dpop_nonce.clone()
    }

    /// Issues a new DPoP nonce; the previous one stays valid (A7: old values stay valid a while).
    pub fn rotate_dpop_nonce(&self) {
        let mut inner = self.lock();
        let fresh = inner.random_token(24);
        inner.previous_nonce = Some(std::mem::replace(&mut inner.dpop_nonce, fresh));
    }

    /// How many access tokens the token endpoint has issued.
    pub fn tokens_issued(&self) -> usize {
        self.lock().tokens.len()
    }
}

// ===== Test keys and JWTs a client would make (for the self-tests and the client's tests) =====

/// A throw-away key pair for service-app tests, generated with aws-lc-rs.
pub struct TestKey {
    /// PKCS#8 `PRIVATE KEY` PEM.
    pub private_pem: String,
    /// SPKI `PUBLIC KEY` PEM (what [`FakeOkta::register_service_app`] takes).
    pub public_pem: String,
    /// RS256 or ES256.
    pub alg: Algorithm,
    encoding: EncodingKey,
}

impl TestKey {
    /// A fresh RSA-2048 key (RS256).
    pub fn rsa() -> TestKey {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
        use aws_lc_rs::signature::KeyPair as _;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("generate RSA key");
        let private: Pkcs8V1Der<'static> = pair.as_der().expect("PKCS#8");
        let public: PublicKeyX509Der<'static> = pair.public_key().as_der().expect("SPKI");
        TestKey::from_pem(
            &pem("PRIVATE KEY", private.as_ref()),
            &pem("PUBLIC KEY", public.as_ref()),
        )
    }

    /// A fresh P-256 key (ES256).
    pub fn ec_p256() -> TestKey {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
        let pair =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate EC key");
        let private = pair.to_pkcs8v1().expect("PKCS#8");
        let public: PublicKeyX509Der<'static> = pair.public_key().as_der().expect("SPKI");
        TestKey::from_pem(
            &pem("PRIVATE KEY", private.as_ref()),
            &pem("PUBLIC KEY", public.as_ref()),
        )
    }

    /// A key from PEM files (PKCS#8 or PKCS#1 RSA, PKCS#8 EC P-256).
    pub fn from_pem(private_pem: &str, public_pem: &str) -> TestKey {
        let (encoding, alg) = match EncodingKey::from_rsa_pem(private_pem.as_bytes()) {
            Ok(key) => (key, Algorithm::RS256),
            Err(_) => (
                EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("an RSA or EC key"),
                Algorithm::ES256,
            ),
        };
        TestKey {
            private_pem: private_pem.to_owned(),
            public_pem: public_pem.to_owned(),
            alg,
            encoding,
        }
    }

    /// Signs `claims` with `header`.
    pub fn sign(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("sign JWT")
    }

    /// A `private_key_jwt` client assertion as the Okta guide describes it (A7): iss = sub =
    /// client_id, aud = the token URL, exp in 5 minutes, a fresh jti.
    pub fn client_assertion(&self, client_id: &str, token_url: &str) -> String {
        let now = unix_now();
        self.sign(
            &Header::new(self.alg),
            &json!({
                "iss": client_id,
                "sub": client_id,
                "aud": token_url,
                "iat": now,
                "exp": now + 300,
                "jti": random_jti(),
            }),
        )
    }

    /// The public half as a JWK (with `alg`).
    pub fn public_jwk(&self) -> Jwk {
        Jwk::from_encoding_key(&self.encoding, self.alg).expect("public JWK")
    }

    /// A DPoP proof (RFC 9449; A7): header `typ: dpop+jwt`, `alg`, `jwk`; claims `htm`, `htu`,
    /// `iat`, `jti`, and `nonce` / `ath` (base64url SHA-256 of the access token) when given.
    pub fn dpop_proof(
        &self,
        htm: &str,
        htu: &str,
        nonce: Option<&str>,
        access_token: Option<&str>,
    ) -> String {
        let mut header = Header::new(self.alg);
        header.typ = Some("dpop+jwt".to_owned());
        header.jwk = Some(self.public_jwk());
        let mut claims = json!({
            "htm": htm,
            "htu": htu,
            "iat": unix_now(),
            "jti": random_jti(),
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        if let Some(token) = access_token {
            claims["ath"] = json!(ath(token));
        }
        self.sign(&header, &claims)
    }
}

/// base64url(SHA-256(access token)), the DPoP `ath` claim.
pub fn ath(access_token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn random_jti() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ===== State ==================================================================================

struct UserRec {
    id: String,
    status: String,
    created: i64,
    activated: Option<i64>,
    status_changed: Option<i64>,
    last_updated: i64,
    profile: Map<String, Value>,
}

impl UserRec {
    fn login(&self) -> &str {
        self.profile
            .get("login")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    fn target(&self) -> Target {
        let name = |key: &str| {
            self.profile
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let display = format!("{} {}", name("firstName"), name("lastName"))
            .trim()
            .to_owned();
        Target {
            id: self.id.clone(),
            kind: "User",
            alternate_id: self.login().to_owned(),
            display_name: display,
        }
    }
}

struct GroupRec {
    id: String,
    name: String,
    description: Option<String>,
    created: i64,
    last_updated: i64,
    last_membership_updated: i64,
}

impl GroupRec {
    fn target(&self) -> Target {
        Target {
            id: self.id.clone(),
            kind: "UserGroup",
            alternate_id: "unknown".to_owned(),
            display_name: self.name.clone(),
        }
    }
}

#[derive(Clone)]
struct Target {
    id: String,
    kind: &'static str,
    alternate_id: String,
    display_name: String,
}

struct Event {
    uuid: String,
    published: i64,
    event_type: &'static str,
    targets: Vec<Target>,
    transaction: String,
}

#[derive(Clone, Copy, Debug)]
enum FaultKind {
    Fail(u16),
    /// Answer this status with the request quoted back (headers and body).
    Echo(u16),
    RateLimit(u64),
    Concurrent,
    Delay(Duration),
    Truncate,
    Abort,
}

impl FaultKind {
    /// Whether the fault replaces the request's handling (vs. altering a 200 afterwards).
    fn before(self) -> bool {
        !matches!(self, FaultKind::Truncate | FaultKind::Abort)
    }
}

struct Fault {
    prefix: String,
    kind: FaultKind,
    times: usize,
}

struct App {
    public_key_pem: String,
    require_dpop: bool,
    scopes: BTreeSet<String>,
}

struct TokenRec {
    scopes: Vec<String>,
    expires_at_ms: i64,
    jkt: Option<String>,
}

struct Inner {
    origin: String,
    salt: String,
    clock_ms: i64,
    seq: u64,
    users: BTreeMap<String, UserRec>,
    groups: BTreeMap<String, GroupRec>,
    members: BTreeMap<String, BTreeSet<String>>,
    events: Vec<Event>,
    schema: BTreeSet<String>,
    faults: Vec<Fault>,
    remaining: Option<(u64, u64)>,
    requests: Vec<RecordedRequest>,
    apps: HashMap<String, App>,
    tokens: HashMap<String, TokenRec>,
    dpop_nonce: String,
    previous_nonce: Option<String>,
    seen_jtis: HashSet<String>,
    allow_deprovisioned_updates: bool,
}

/// What a handler produced, before the common headers.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(status: u16, value: &Value) -> Resp {
        Resp {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).expect("serialize"),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Resp {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }
}

enum Principal {
    ApiToken,
    OAuth { scopes: Vec<String>, dpop: bool },
}

enum Route {
    ListUsers,
    GetUser(String),
    UpdateUser(String),
    UserGroups(String),
    ListGroups,
    GetGroup(String),
    GroupUsers(String),
    Logs,
}

impl Route {
    /// The scopes that allow the call (any one of them).
    fn scopes(&self) -> &'static [&'static str] {
        match self {
            Route::ListUsers | Route::GetUser(_) | Route::UserGroups(_) => {
                &["okta.users.read", "okta.users.manage"]
            }
            Route::UpdateUser(_) => &["okta.users.manage"],
            Route::ListGroups | Route::GetGroup(_) | Route::GroupUsers(_) => {
                &["okta.groups.read", "okta.groups.manage"]
            }
            Route::Logs => &["okta.logs.read"],
        }
    }
}

type Params = Vec<(String, String)>;

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl Inner {
    fn new(origin: String) -> Inner {
        let salt = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 6]>());
        let mut inner = Inner {
            origin,
            salt,
            clock_ms: parse_ts(CLOCK_START).expect("CLOCK_START"),
            seq: 0,
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            members: BTreeMap::new(),
            events: Vec::new(),
            schema: STANDARD_ATTRIBUTES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            faults: Vec::new(),
            remaining: None,
            requests: Vec::new(),
            apps: HashMap::new(),
            tokens: HashMap::new(),
            dpop_nonce: String::new(),
            previous_nonce: None,
            seen_jtis: HashSet::new(),
            allow_deprovisioned_updates: false,
        };
        inner.dpop_nonce = inner.random_token(24);
        inner
    }

    fn random_token(&mut self, bytes: usize) -> String {
        let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{}{:010}", self.salt, self.seq)
    }

    fn log(&mut self, event_type: &'static str, targets: Vec<Target>) {
        self.seq += 1;
        let n = self.seq;
        let r = rand::random::<u64>();
        let uuid = format!(
            "{:08x}-{:04x}-11f1-{:04x}-{:012x}",
            n as u32,
            (r >> 48) as u16,
            0x8000 | ((r >> 32) as u16 & 0x3fff),
            r & 0xffff_ffff_ffff
        );
        let transaction = self.next_id("W");
        self.events.push(Event {
            uuid,
            published: self.clock_ms,
            event_type,
            targets,
            transaction,
        });
    }

    // ----- JSON shapes (A3, A5, A10) --------------------------------------------------------

    fn user_json(&self, u: &UserRec) -> Value {
        json!({
            "id": u.id,
            "status": u.status,
            "created": fmt_ts(u.created),
            "activated": u.activated.map(fmt_ts),
            "statusChanged": u.status_changed.map(fmt_ts),
            "lastLogin": null,
            "lastUpdated": fmt_ts(u.last_updated),
            "passwordChanged": null,
            "type": { "id": USER_TYPE_ID },
            "profile": u.profile,
            "credentials": { "provider": { "type": "OKTA", "name": "OKTA" } },
            "_links": { "self": { "href": format!("{}/api/v1/users/{}", self.origin, u.id) } },
        })
    }

    fn group_json(&self, g: &GroupRec) -> Value {
        let href = format!("{}/api/v1/groups/{}", self.origin, g.id);
        json!({
            "id": g.id,
            "created": fmt_ts(g.created),
            "lastUpdated": fmt_ts(g.last_updated),
            "lastMembershipUpdated": fmt_ts(g.last_membership_updated),
            "objectClass": ["okta:user_group"],
            "type": "OKTA_GROUP",
            "profile": { "name": g.name, "description": g.description },
            "_links": {
                "users": { "href": format!("{href}/users") },
                "apps": { "href": format!("{href}/apps") },
            },
        })
    }

    fn event_json(&self, e: &Event) -> Value {
        let targets: Vec<Value> = e
            .targets
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "type": t.kind,
                    "alternateId": t.alternate_id,
                    "displayName": t.display_name,
                    "detailEntry": null,
                })
            })
            .collect();
        json!({
            "actor": {
                "id": ACTOR_ID,
                "type": "User",
                "alternateId": "admin@example.com",
                "displayName": "Fake Admin",
                "detailEntry": null,
            },
            "client": {
                "userAgent": { "rawUserAgent": "fake-okta", "os": "Unknown", "browser": "UNKNOWN" },
                "zone": "null",
                "device": "Unknown",
                "id": null,
                "ipAddress": "127.0.0.1",
                "geographicalContext": null,
            },
            "device": null,
            "authenticationContext": {
                "authenticationProvider": null,
                "credentialProvider": null,
                "credentialType": null,
                "issuer": null,
                "interface": null,
                "authenticationStep": 0,
                "externalSessionId": "trs-fake",
            },
            "displayMessage": display_message(e.event_type),
            "eventType": e.event_type,
            "outcome": { "result": "SUCCESS", "reason": null },
            "published": fmt_ts(e.published),
            "securityContext": {
                "asNumber": null, "asOrg": null, "isp": null, "domain": null, "isProxy": null,
            },
            "severity": "INFO",
            "debugContext": { "debugData": { "requestUri": "" } },
            "legacyEventType": null,
            "transaction": { "type": "WEB", "id": e.transaction, "detail": {} },
            "uuid": e.uuid,
            "version": "0",
            "request": { "ipChain": [] },
            "target": targets,
        })
    }

    // ----- Request processing ---------------------------------------------------------------

    fn process(
        &mut self,
        method: &Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: &[u8],
        at: Instant,
    ) -> Outcome {
        let path = uri.path().to_owned();
        let query = uri.query().map(str::to_owned);
        self.requests.push(RecordedRequest {
            method: method.as_str().to_owned(),
            path: path.clone(),
            query: query.clone(),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            at,
        });
        let limit = bucket_limit(method, &path);
        let now_s = self.clock_ms.div_euclid(1000) as u64;
        let mut delay = None;
        let mut fault_resp = None;
        match self.take_fault(&path, true) {
            Some(FaultKind::Fail(status)) => fault_resp = Some(fail_response(status)),
            Some(FaultKind::Echo(status)) => {
                let quoted = super::quote::quote_request(method.as_str(), uri, headers, body);
                fault_resp = Some(echo_response(status, &quoted));
            }
            Some(FaultKind::RateLimit(reset_in)) => {
                fault_resp = Some(
                    self.error(429, "E0000047", TOO_MANY, &[])
                        .header("x-rate-limit-limit", limit.to_string())
                        .header("x-rate-limit-remaining", "0")
                        .header("x-rate-limit-reset", (now_s + reset_in).to_string()),
                );
            }
            Some(FaultKind::Concurrent) => {
                fault_resp = Some(
                    self.error(429, "E0000047", TOO_MANY, &[])
                        .header("x-rate-limit-limit", "0")
                        .header("x-rate-limit-remaining", "0")
                        .header("x-rate-limit-reset", (now_s + WINDOW_SECS).to_string()),
                );
            }
            Some(FaultKind::Delay(d)) => delay = Some(d),
            Some(FaultKind::Truncate | FaultKind::Abort) | None => {}
        }
        let mut resp = match fault_resp {
            Some(resp) => resp,
            None => self.dispatch(method, &path, query.as_deref(), headers, body),
        };
        let cut = if resp.status == 200 {
            self.take_fault(&path, false)
        } else {
            None
        };
        // Common headers (A2 "every response carries X-Okta-Request-Id", A8).
        let (remaining, reset_in) = self
            .remaining
            .unwrap_or((limit.saturating_sub(1), WINDOW_SECS));
        if !resp.has_header("x-rate-limit-limit") {
            resp = resp
                .header("x-rate-limit-limit", limit.to_string())
                .header("x-rate-limit-remaining", remaining.to_string())
                .header("x-rate-limit-reset", (now_s + reset_in).to_string());
        }
        let request_id = self.next_id("aFk");
        resp = resp
            .header("x-okta-request-id", request_id)
            .header("date", http_date(self.clock_ms));
        if !resp.has_header("content-type") {
            resp = resp.header("content-type", "application/json");
        }
        Outcome { resp, delay, cut }
    }

    fn take_fault(&mut self, path: &str, before: bool) -> Option<FaultKind> {
        let i = self.faults.iter().position(|f| {
            f.times > 0 && f.kind.before() == before && path.starts_with(&f.prefix)
        })?;
        let kind = self.faults[i].kind;
        self.faults[i].times -= 1;
        if self.faults[i].times == 0 {
            self.faults.remove(i);
        }
        Some(kind)
    }

    fn error(&mut self, status: u16, code: &str, summary: &str, causes: &[String]) -> Resp {
        let error_id = self.next_id("oae");
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({ "errorSummary": c }))
            .collect();
        Resp::json(
            status,
            &json!({
                "errorCode": code,
                "errorSummary": summary,
                "errorLink": code,
                "errorId": error_id,
                "errorCauses": causes,
            }),
        )
    }

    fn not_found(&mut self, what: &str, kind: &str) -> Resp {
        self.error(
            404,
            "E0000007",
            &format!("Not found: Resource not found: {what} ({kind})"),
            &[],
        )
    }

    fn invalid_search(&mut self, why: &str) -> Resp {
        self.error(
            400,
            "E0000031",
            "Invalid search criteria.",
            &[why.to_owned()],
        )
    }

    fn dispatch(
        &mut self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Resp {
        if path == "/oauth2/v1/token" {
            if method != Method::POST {
                return self.error(
                    405,
                    "E0000022",
                    "The endpoint does not support the provided HTTP method",
                    &[],
                );
            }
            return self.token_endpoint(headers, body);
        }
        let Some(rest) = path.strip_prefix("/api/v1/") else {
            return self.error(404, "E0000008", "The requested path was not found", &[]);
        };
        let principal = match self.authenticate(method, path, headers) {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let segments: Vec<String> = rest.split('/').map(percent_decode).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let get = method == Method::GET;
        let post = method == Method::POST;
        let route = match segments.as_slice() {
            ["users"] if get => Route::ListUsers,
            ["users", id] if get => Route::GetUser((*id).to_owned()),
            ["users", id] if post => Route::UpdateUser((*id).to_owned()),
            ["users", id, "groups"] if get => Route::UserGroups((*id).to_owned()),
            ["groups"] if get => Route::ListGroups,
            ["groups", id] if get => Route::GetGroup((*id).to_owned()),
            ["groups", id, "users"] if get => Route::GroupUsers((*id).to_owned()),
            ["logs"] if get => Route::Logs,
            ["users"]
            | ["users", _]
            | ["users", _, "groups"]
            | ["groups"]
            | ["groups", _]
            | ["groups", _, "users"]
            | ["logs"] => {
                return self.error(
                    405,
                    "E0000022",
                    "The endpoint does not support the provided HTTP method",
                    &[],
                );
            }
            _ => return self.error(404, "E0000008", "The requested path was not found", &[]),
        };
        if let Principal::OAuth { scopes, dpop } = &principal {
            let allowed = route.scopes();
            if !scopes.iter().any(|s| allowed.contains(&s.as_str())) {
                let scheme = if *dpop { "DPoP" } else { "Bearer" };
                let challenge = format!(
                    "{scheme} authorization_uri=\"{o}/oauth2/v1/authorize\", realm=\"{o}\", \
                     scope=\"{scope}\", error=\"insufficient_scope\", error_description=\"The \
                     access token provided does not contain the required scopes.\", \
                     resource=\"{path}\"",
                    o = self.origin,
                    scope = allowed[0],
                );
                return self
                    .error(
                        403,
                        "E0000006",
                        "You do not have permission to perform the requested action",
                        &[],
                    )
                    .header("www-authenticate", challenge);
            }
        }
        let params = parse_query(query);
        match route {
            Route::ListUsers => self.list_users(&params),
            Route::GetUser(id) => match self.find_user(&id) {
                Some(u) => Resp::json(200, &self.user_json(&self.users[&u])),
                None => self.not_found(&id, "User"),
            },
            Route::UpdateUser(id) => self.update_user(&id, body),
            Route::UserGroups(id) => match self.find_user(&id) {
                Some(uid) => {
                    let groups: Vec<Value> = self
                        .members
                        .iter()
                        .filter(|(_, m)| m.contains(&uid))
                        .filter_map(|(gid, _)| self.groups.get(gid))
                        .map(|g| self.group_json(g))
                        .collect();
                    Resp::json(200, &Value::Array(groups))
                }
                None => self.not_found(&id, "User"),
            },
            Route::ListGroups => self.list_groups(&params),
            Route::GetGroup(id) => match self.groups.get(&id) {
                Some(g) => Resp::json(200, &self.group_json(g)),
                None => self.not_found(&id, "UserGroup"),
            },
            Route::GroupUsers(id) => self.group_users(&id, &params),
            Route::Logs => self.logs(&params),
        }
    }

    /// A user by id, by login (case-insensitive) or by login shortname (A6: "An ID, login, or
    /// login shortname").
    fn find_user(&self, key: &str) -> Option<String> {
        if self.users.contains_key(key) {
            return Some(key.to_owned());
        }
        let key = key.to_lowercase();
        let by_login = self
            .users
            .values()
            .find(|u| u.login().to_lowercase() == key);
        if let Some(u) = by_login {
            return Some(u.id.clone());
        }
        let mut short = self.users.values().filter(|u| {
            u.login()
                .split('@')
                .next()
                .is_some_and(|s| s.to_lowercase() == key)
        });
        match (short.next(), short.next()) {
            (Some(u), None) => Some(u.id.clone()),
            _ => None,
        }
    }

    // ----- Users ------------------------------------------------------------------------------

    fn list_users(&mut self, params: &Params) -> Resp {
        let search = param(params, "search");
        let filter = param(params, "filter");
        let q = param(params, "q");
        let default_limit = if q.is_some() && search.is_none() && filter.is_none() {
            10
        } else {
            200
        };
        let limit = match parse_limit(params, default_limit, 200) {
            Ok(limit) => limit,
            Err(why) => return self.error(400, "E0000001", &why, &[]),
        };
        let expr = match (search, filter) {
            (Some(s), _) => match parse_and_check(s, Dialect::UserSearch, &self.schema) {
                Ok(e) => Some(e),
                Err(why) => return self.invalid_search(&why),
            },
            (None, Some(f)) => match parse_and_check(f, Dialect::UserFilter, &self.schema) {
                Ok(e) => Some(e),
                Err(why) => return self.invalid_search(&why),
            },
            (None, None) => None,
        };
        if let (None, Some(q)) = (&expr, q) {
            // `q`: startsWith on firstName/lastName/email, no DEPROVISIONED, no pagination (A2).
            let q = q.to_lowercase();
            let found: Vec<Value> = self
                .users
                .values()
                .filter(|u| u.status != "DEPROVISIONED")
                .filter(|u| {
                    ["firstName", "lastName", "email"].iter().any(|k| {
                        u.profile
                            .get(*k)
                            .and_then(Value::as_str)
                            .is_some_and(|v| v.to_lowercase().starts_with(&q))
                    })
                })
                .take(limit)
                .map(|u| self.user_json(u))
                .collect();
            return self.page("/api/v1/users", params, found, None, limit);
        }
        let after = match param(params, "after") {
            Some(cursor) => match self.decode_cursor("u", cursor) {
                Some(id) => Some(id),
                None => return self.error(400, "E0000001", "Api validation failed: after", &[]),
            },
            None => None,
        };
        let lower = match &after {
            Some(id) => Bound::Excluded(id.clone()),
            None => Bound::Unbounded,
        };
        let mut page: Vec<&UserRec> = self
            .users
            .range((lower, Bound::Unbounded))
            .map(|(_, u)| u)
            .filter(|u| match &expr {
                Some(e) => e.eval(&|attr| user_attr(u, attr)),
                None => u.status != "DEPROVISIONED",
            })
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more.then(|| self.cursor("u", &page[limit - 1].id));
        let items: Vec<Value> = page.iter().map(|u| self.user_json(u)).collect();
        self.page("/api/v1/users", params, items, next, limit)
    }

    fn update_user(&mut self, key: &str, body: &[u8]) -> Resp {
        let Some(id) = self.find_user(key) else {
            return self.not_found(key, "User");
        };
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
            return self.error(
                400,
                "E0000003",
                "The request body was not well-formed.",
                &[],
            );
        };
        let patch = match body.get("profile") {
            None => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(_) => {
                return self.error(
                    400,
                    "E0000003",
                    "The request body was not well-formed.",
                    &[],
                );
            }
        };
        let unknown: Vec<String> = patch
            .keys()
            .filter(|k| !self.schema.contains(*k))
            .map(|k| format!("Property name '{k}' is not defined in profile schema"))
            .collect();
        if !unknown.is_empty() {
            return self.error(400, "E0000001", "Api validation failed: profile", &unknown);
        }
        if self.users[&id].status == "DEPROVISIONED" && !self.allow_deprovisioned_updates {
            return self.error(
                403,
                "E0000006",
                "You do not have permission to perform the requested action",
                &["Profile updates of deactivated users are not enabled for this org".to_owned()],
            );
        }
        let now = self.clock_ms;
        let user = self.users.get_mut(&id).expect("found above");
        user.profile.extend(patch);
        user.last_updated = now;
        let target = user.target();
        self.log("user.account.update_profile", vec![target]);
        Resp::json(200, &self.user_json(&self.users[&id]))
    }

    // ----- Groups -----------------------------------------------------------------------------

    fn list_groups(&mut self, params: &Params) -> Resp {
        let q = param(params, "q");
        let default_limit = if q.is_some() { 300 } else { 10_000 };
        let limit = match parse_limit(params, default_limit, 10_000) {
            Ok(limit) => limit,
            Err(why) => return self.error(400, "E0000001", &why, &[]),
        };
        let expr = match param(params, "search").or(param(params, "filter")) {
            Some(s) => match parse_and_check(s, Dialect::GroupSearch, &self.schema) {
                Ok(e) => Some(e),
                Err(why) => return self.invalid_search(&why),
            },
            None => None,
        };
        let after = match param(params, "after") {
            Some(cursor) => match self.decode_cursor("g", cursor) {
                Some(id) => Some(id),
                None => return self.error(400, "E0000001", "Api validation failed: after", &[]),
            },
            None => None,
        };
        let lower = match &after {
            Some(id) => Bound::Excluded(id.clone()),
            None => Bound::Unbounded,
        };
        let q = q.map(str::to_lowercase);
        let mut page: Vec<&GroupRec> = self
            .groups
            .range((lower, Bound::Unbounded))
            .map(|(_, g)| g)
            .filter(|g| {
                q.as_ref()
                    .is_none_or(|q| g.name.to_lowercase().starts_with(q))
            })
            .filter(|g| expr.as_ref().is_none_or(|e| e.eval(&|a| group_attr(g, a))))
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more.then(|| self.cursor("g", &page[limit - 1].id));
        let items: Vec<Value> = page.iter().map(|g| self.group_json(g)).collect();
        self.page("/api/v1/groups", params, items, next, limit)
    }

    fn group_users(&mut self, gid: &str, params: &Params) -> Resp {
        if !self.groups.contains_key(gid) {
            return self.not_found(gid, "UserGroup");
        }
        let limit = match parse_limit(params, 1000, 10_000) {
            Ok(limit) => limit,
            Err(why) => return self.error(400, "E0000001", &why, &[]),
        };
        let after = match param(params, "after") {
            Some(cursor) => match self.decode_cursor("m", cursor) {
                Some(id) => Some(id),
                None => return self.error(400, "E0000001", "Api validation failed: after", &[]),
            },
            None => None,
        };
        let lower = match &after {
            Some(id) => Bound::Excluded(id.clone()),
            None => Bound::Unbounded,
        };
        let members = &self.members[gid];
        let mut page: Vec<&UserRec> = members
            .range((lower, Bound::Unbounded))
            .filter_map(|uid| self.users.get(uid))
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more.then(|| self.cursor("m", &page[limit - 1].id));
        let items: Vec<Value> = page.iter().map(|u| self.user_json(u)).collect();
        self.page(
            &format!("/api/v1/groups/{gid}/users"),
            params,
            items,
            next,
            limit,
        )
    }

    // ----- System Log (A10) -------------------------------------------------------------------

    fn logs(&mut self, params: &Params) -> Resp {
        let limit = match parse_limit(params, 100, 1000) {
            Ok(limit) => limit,
            Err(why) => return self.error(400, "E0000001", &why, &[]),
        };
        let descending = match param(params, "sortOrder") {
            None => false,
            Some(s) if s.eq_ignore_ascii_case("ASCENDING") => false,
            Some(s) if s.eq_ignore_ascii_case("DESCENDING") => true,
            Some(_) => {
                return self.error(400, "E0000001", "Api validation failed: sortOrder", &[]);
            }
        };
        let parse_date = |name: &str| -> Result<Option<i64>, String> {
            match param(params, name) {
                None => Ok(None),
                Some(v) => parse_ts(v)
                    .map(Some)
                    .ok_or_else(|| format!("Invalid parameter: {name}")),
            }
        };
        let (since, until) = match (parse_date("since"), parse_date("until")) {
            (Ok(s), Ok(u)) => (s, u),
            (Err(why), _) | (_, Err(why)) => return self.error(400, "E0000030", &why, &[]),
        };
        let after = param(params, "after");
        if after.is_some() && since.is_some() {
            return self.error(
                400,
                "E0000001",
                "Api validation failed: since and after are mutually exclusive",
                &[],
            );
        }
        let now = self.clock_ms;
        if since.is_some_and(|s| s < now - 180 * 86_400_000) {
            return self.error(
                400,
                "E0000053",
                "Invalid parameter: The since parameter is over 180 days prior to the current day.",
                &[],
            );
        }
        let expr = match param(params, "filter") {
            Some(f) => match parse_and_check(f, Dialect::Logs, &self.schema) {
                Ok(e) => Some(e),
                Err(why) => return self.invalid_search(&why),
            },
            None => None,
        };
        let words: Vec<String> = param(params, "q")
            .map(|q| q.split_whitespace().map(str::to_lowercase).collect())
            .unwrap_or_default();
        // Cursor = a position in persistence order: ascending, the next index to read;
        // descending, one past the next index to read.
        let position = match after {
            Some(cursor) => match self
                .decode_cursor("l", cursor)
                .and_then(|p| p.parse::<usize>().ok())
            {
                Some(p) => Some(p.min(self.events.len())),
                None => return self.error(400, "E0000001", "Api validation failed: after", &[]),
            },
            None => None,
        };
        let until_ms = until.unwrap_or(i64::MAX);
        let since_ms = since.unwrap_or(until.unwrap_or(now) - 7 * 86_400_000);
        let matches = |e: &Event| {
            e.published < until_ms
                && (position.is_some() || e.published >= since_ms)
                && expr
                    .as_ref()
                    .is_none_or(|x| x.eval(&|attr| event_attr(e, attr)))
                && (words.is_empty() || {
                    let text = format!(
                        "{} {} {}",
                        e.event_type,
                        display_message(e.event_type),
                        e.targets
                            .iter()
                            .map(|t| format!("{} {} {}", t.id, t.alternate_id, t.display_name))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                    .to_lowercase();
                    words.iter().all(|w| text.contains(w))
                })
        };
        let indices: Box<dyn Iterator<Item = usize>> = if descending {
            Box::new((0..position.unwrap_or(self.events.len())).rev())
        } else {
            Box::new(position.unwrap_or(0)..self.events.len())
        };
        let mut found: Vec<usize> = indices
            .filter(|&i| matches(&self.events[i]))
            .take(limit + 1)
            .collect();
        let more = found.len() > limit;
        found.truncate(limit);
        let polling = until.is_none() && !descending;
        let next = if polling {
            // A polling query always has a next link (A10), even after an empty page.
            let p = if more {
                found[limit - 1] + 1
            } else {
                self.events.len()
            };
            Some(self.cursor("l", &p.to_string()))
        } else if more {
            let last = found[limit - 1];
            let p = if descending { last } else { last + 1 };
            Some(self.cursor("l", &p.to_string()))
        } else {
            None
        };
        let items: Vec<Value> = found
            .iter()
            .map(|&i| self.event_json(&self.events[i]))
            .collect();
        self.page("/api/v1/logs", params, items, next, limit)
    }

    // ----- Paging (A2 "Pagination / Link header") ---------------------------------------------

    fn cursor(&self, kind: &str, value: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{kind}.{value}", self.salt))
    }

    fn decode_cursor(&self, kind: &str, cursor: &str) -> Option<String> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
        let rest = raw.strip_prefix(&format!("{}.{kind}.", self.salt))?;
        Some(rest.to_owned())
    }

    /// A 200 with a JSON array, a `self` link and, when there is more, a separate `next` link.
    /// The items are moved into the body, not copied: the sources benchmark compares a read
    /// with a plain download of these pages, and a fake that spends its time copying pages would
    /// flatter the read.
    fn page(
        &self,
        path: &str,
        params: &Params,
        items: Vec<Value>,
        next: Option<String>,
        limit: usize,
    ) -> Resp {
        let self_url = format!("{}{path}{}", self.origin, encode_query(params));
        let mut resp = Resp::json(200, &Value::Array(items))
            .header("link", format!("<{self_url}>; rel=\"self\""));
        if let Some(cursor) = next {
            let mut next_params: Params = params
                .iter()
                .filter(|(k, _)| k != "after" && k != "since")
                .cloned()
                .collect();
            if !next_params.iter().any(|(k, _)| k == "limit") {
                next_params.push(("limit".into(), limit.to_string()));
            }
            next_params.push(("after".into(), cursor));
            let next_url = format!("{}{path}{}", self.origin, encode_query(&next_params));
            resp = resp.header("link", format!("<{next_url}>; rel=\"next\""));
        }
        resp
    }

    // ----- Authentication (A7) ----------------------------------------------------------------

    fn invalid_token(&mut self) -> Resp {
        self.error(401, "E0000011", "Invalid token provided", &[])
    }

    fn dpop_challenge(&mut self, path: &str, description: &str) -> Resp {
        let challenge = format!(
            "DPoP algs=\"RS256 RS384 RS512 ES256 ES384 ES512\", \
             authorization_uri=\"{o}/oauth2/v1/authorize\", realm=\"{o}\", \
             error=\"invalid_dpop_proof\", error_description=\"{description}\", \
             resource=\"{path}\"",
            o = self.origin,
        );
        self.invalid_token().header("www-authenticate", challenge)
    }

    fn authenticate(
        &mut self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Principal, Resp> {
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (scheme, credential) = authorization.split_once(' ').unwrap_or(("", ""));
        let credential = credential.trim();
        match scheme {
            "SSWS" if credential == API_TOKEN => Ok(Principal::ApiToken),
            "Bearer" | "DPoP" => {
                let now = self.clock_ms;
                let Some(token) = self.tokens.get(credential) else {
                    let challenge = format!(
                        "{scheme} authorization_uri=\"{o}/oauth2/v1/authorize\", realm=\"{o}\", \
                         error=\"invalid_token\", error_description=\"The access token is \
                         invalid.\", resource=\"{path}\"",
                        o = self.origin
                    );
                    return Err(self.invalid_token().header("www-authenticate", challenge));
                };
                let scopes = token.scopes.clone();
                let jkt = token.jkt.clone();
                if token.expires_at_ms <= now {
                    let challenge = format!(
                        "{scheme} authorization_uri=\"{o}/oauth2/v1/authorize\", realm=\"{o}\", \
                         error=\"invalid_token\", error_description=\"The access token is \
                         expired.\", resource=\"{path}\"",
                        o = self.origin
                    );
                    return Err(self.invalid_token().header("www-authenticate", challenge));
                }
                match (scheme, jkt) {
                    ("Bearer", None) => Ok(Principal::OAuth {
                        scopes,
                        dpop: false,
                    }),
                    ("Bearer", Some(_)) => Err(self.dpop_challenge(
                        path,
                        "The DPoP-bound access token must be sent with the DPoP scheme and a DPoP proof.",
                    )),
                    (_, None) => Err(self.dpop_challenge(
                        path,
                        "The access token is not DPoP-bound.",
                    )),
                    (_, Some(jkt)) => {
                        let Some(proof) = headers.get("dpop").and_then(|v| v.to_str().ok()) else {
                            return Err(
                                self.dpop_challenge(path, "The DPoP proof JWT header is missing.")
                            );
                        };
                        let htu = format!("{}{path}", self.origin);
                        match self.check_dpop_proof(proof, method.as_str(), &htu, Some(credential))
                        {
                            Ok(proof) if proof.jkt == jkt => {
                                self.seen_jtis.insert(proof.jti);
                                Ok(Principal::OAuth { scopes, dpop: true })
                            }
                            Ok(_) => Err(self.dpop_challenge(
                                path,
                                "The DPoP proof JWT key does not match the access token's binding.",
                            )),
                            Err(why) => Err(self.dpop_challenge(path, &why)),
                        }
                    }
                }
            }
            _ => Err(self.invalid_token()),
        }
    }

    /// Checks a DPoP proof (RFC 9449 §4.3; Okta's messages where known, A7).
    fn check_dpop_proof(
        &self,
        proof: &str,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
    ) -> Result<CheckedProof, String> {
        const UNPARSABLE: &str = "DPoP proof JWT cannot be parsed.";
        let raw_header: Value = proof
            .split('.')
            .next()
            .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or_else(|| UNPARSABLE.to_owned())?;
        if raw_header["typ"] != "dpop+jwt" {
            return Err("The DPoP proof JWT 'typ' header must be 'dpop+jwt'.".into());
        }
        if raw_header["jwk"].get("d").is_some() {
            return Err("The DPoP proof JWT 'jwk' header must not contain a private key.".into());
        }
        let header = jsonwebtoken::decode_header(proof).map_err(|_| UNPARSABLE.to_owned())?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::ES256
                | Algorithm::ES384
        ) {
            return Err("The DPoP proof JWT 'alg' is not supported.".into());
        }
        let jwk = header
            .jwk
            .ok_or_else(|| "The DPoP proof JWT 'jwk' header is missing.".to_owned())?;
        if !matches!(
            jwk.algorithm,
            AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_)
        ) {
            return Err("The DPoP proof JWT 'jwk' header is not a public RSA or EC key.".into());
        }
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|_| "The DPoP proof JWT 'jwk' is invalid.".to_owned())?;
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Value>(proof, &key, &validation)
            .map_err(|_| "The DPoP proof JWT signature is invalid.".to_owned())?
            .claims;
        if claims["htm"] != htm {
            return Err("'htm' claim in the DPoP proof JWT is invalid.".into());
        }
        if claims["htu"] != htu {
            return Err("'htu' claim in the DPoP proof JWT is invalid.".into());
        }
        let iat = claims["iat"]
            .as_i64()
            .ok_or_else(|| "'iat' claim in the DPoP proof JWT is missing.".to_owned())?;
        if (iat - unix_now()).abs() > DPOP_IAT_WINDOW_SECS {
            return Err("'iat' claim in the DPoP proof JWT is invalid.".into());
        }
        let jti = claims["jti"]
            .as_str()
            .filter(|j| !j.is_empty())
            .ok_or_else(|| "'jti' claim in the DPoP proof JWT is missing.".to_owned())?
            .to_owned();
        if self.seen_jtis.contains(&jti) {
            return Err("The DPoP proof JWT has already been used.".into());
        }
        if let Some(token) = access_token
            && claims["ath"] != ath(token)
        {
            return Err("'ath' claim in the DPoP proof JWT is invalid.".into());
        }
        let jkt = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| "The DPoP proof JWT 'jwk' is invalid.".to_owned())?;
        Ok(CheckedProof {
            jkt,
            jti,
            nonce: claims["nonce"].as_str().map(str::to_owned),
        })
    }

    // ----- Token endpoint (A7) ----------------------------------------------------------------

    fn oauth_error(status: u16, error: &str, description: &str) -> Resp {
        Resp::json(
            status,
            &json!({ "error": error, "error_description": description }),
        )
        .header("cache-control", "no-store")
        .header("pragma", "no-cache")
    }

    fn token_endpoint(&mut self, headers: &HeaderMap, body: &[u8]) -> Resp {
        let form_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form_type {
            return Self::oauth_error(
                400,
                "invalid_request",
                "The request must be application/x-www-form-urlencoded.",
            );
        }
        let form: Params = url::form_urlencoded::parse(body).into_owned().collect();
        if param(&form, "grant_type") != Some("client_credentials") {
            return Self::oauth_error(
                400,
                "unsupported_grant_type",
                "The authorization grant type is not supported by the authorization server. \
                 Configured grant types: [client_credentials].",
            );
        }
        const INVALID_CLIENT: &str = "Client authentication failed. Either the client or the client credentials are invalid.";
        if param(&form, "client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Self::oauth_error(401, "invalid_client", INVALID_CLIENT);
        }
        let Some(assertion) = param(&form, "client_assertion") else {
            return Self::oauth_error(401, "invalid_client", INVALID_CLIENT);
        };
        let Ok(unverified) = jsonwebtoken::dangerous::insecure_decode::<Value>(assertion) else {
            return Self::oauth_error(
                401,
                "invalid_client",
                "The client_assertion token is malformed.",
            );
        };
        let Some(client_id) = unverified.claims["iss"].as_str().map(str::to_owned) else {
            return Self::oauth_error(401, "invalid_client", INVALID_CLIENT);
        };
        if param(&form, "client_id").is_some_and(|c| c != client_id) {
            return Self::oauth_error(
                401,
                "invalid_client",
                "The client_id does not match the client_assertion's issuer.",
            );
        }
        let Some(app) = self.apps.get(&client_id) else {
            return Self::oauth_error(
                401,
                "invalid_client",
                "Invalid value for 'client_id' parameter.",
            );
        };
        let token_url = format!("{}/oauth2/v1/token", self.origin);
        let (key, algorithms) =
            assertion_key(&app.public_key_pem).expect("checked at registration");
        if !algorithms.contains(&unverified.header.alg) {
            return Self::oauth_error(
                401,
                "invalid_client",
                "The client_assertion 'alg' does not match the registered key.",
            );
        }
        let mut validation = Validation::new(unverified.header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.set_audience(&[&token_url]);
        validation.set_issuer(&[&client_id]);
        validation.sub = Some(client_id.clone());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let claims = match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
            Ok(data) => data.claims,
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "The client_assertion token is expired.",
                    ErrorKind::InvalidAudience => {
                        "The audience claim for client_assertion must be the endpoint invoked for \
                         the request."
                    }
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidSubject => {
                        "The issuer and subject claims of the client_assertion must be the \
                         client_id."
                    }
                    ErrorKind::MissingRequiredClaim(_) => {
                        "The client_assertion token is missing a required claim (exp, iss, sub, \
                         aud)."
                    }
                    _ => "The client_assertion signature is invalid.",
                };
                return Self::oauth_error(401, "invalid_client", why);
            }
        };
        if claims["exp"]
            .as_i64()
            .is_some_and(|exp| exp > unix_now() + 3600 + LEEWAY_SECS as i64)
        {
            return Self::oauth_error(
                401,
                "invalid_client",
                "The client_assertion token has an expiration too far into the future.",
            );
        }
        let assertion_jti = claims["jti"].as_str().map(str::to_owned);
        if assertion_jti
            .as_ref()
            .is_some_and(|j| self.seen_jtis.contains(&format!("assertion:{j}")))
        {
            return Self::oauth_error(
                401,
                "invalid_client",
                "The client_assertion token has already been used.",
            );
        }
        let requested: Vec<String> = param(&form, "scope")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if requested.is_empty() {
            return Self::oauth_error(
                400,
                "invalid_scope",
                "The authorization server resource does not have any configured default scopes, \
                 'scope' must be provided.",
            );
        }
        let refused: Vec<&str> = requested
            .iter()
            .filter(|s| !app.scopes.contains(*s))
            .map(String::as_str)
            .collect();
        if !refused.is_empty() {
            return Self::oauth_error(
                400,
                "invalid_scope",
                &format!(
                    "The following scopes are not allowed: [{}]",
                    refused.join(", ")
                ),
            );
        }
        let jkt = if app.require_dpop {
            let Some(proof) = headers.get("dpop").and_then(|v| v.to_str().ok()) else {
                return Self::oauth_error(
                    400,
                    "invalid_dpop_proof",
                    "The DPoP proof JWT header is missing.",
                );
            };
            let checked = match self.check_dpop_proof(proof, "POST", &token_url, None) {
                Ok(c) => c,
                Err(why) => return Self::oauth_error(400, "invalid_dpop_proof", &why),
            };
            let nonce_ok = checked
                .nonce
                .as_deref()
                .is_some_and(|n| n == self.dpop_nonce || self.previous_nonce.as_deref() == Some(n));
            if !nonce_ok {
                return Self::oauth_error(
                    400,
                    "use_dpop_nonce",
                    "Authorization server requires nonce in DPoP proof.",
                )
                .header("dpop-nonce", self.dpop_nonce.clone());
            }
            self.seen_jtis.insert(checked.jti);
            Some(checked.jkt)
        } else {
            None
        };
        if let Some(j) = assertion_jti {
            self.seen_jtis.insert(format!("assertion:{j}"));
        }
        let issued_at = self.clock_ms / 1000;
        let mut payload = json!({
            "ver": 1,
            "jti": format!("AT.{}", self.random_token(16)),
            "iss": self.origin,
            "aud": self.origin,
            "iat": issued_at,
            "exp": issued_at + 3600,
            "cid": client_id,
            "scp": requested,
            "sub": client_id,
        });
        if let Some(jkt) = &jkt {
            payload["cnf"] = json!({ "jkt": jkt });
        }
        let signature = self.random_token(64);
        let access_token = format!(
            "{}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(r#"{"kid":"fake-okta-key","alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(payload.to_string()),
        );
        let token_type = if jkt.is_some() { "DPoP" } else { "Bearer" };
        self.tokens.insert(
            access_token.clone(),
            TokenRec {
                scopes: requested.clone(),
                expires_at_ms: self.clock_ms + 3_600_000,
                jkt,
            },
        );
        Resp::json(
            200,
            &json!({
                "token_type": token_type,
                "expires_in": 3600,
                "access_token": access_token,
                "scope": requested.join(" "),
            }),
        )
        .header("cache-control", "no-store")
        .header("pragma", "no-cache")
    }
}

struct CheckedProof {
    jkt: String,
    jti: String,
    nonce: Option<String>,
}

/// The verification key and algorithms of a registered public key PEM.
fn assertion_key(pem: &str) -> Result<(DecodingKey, Vec<Algorithm>), ()> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok((
            key,
            vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        ));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        return Ok((key, vec![Algorithm::ES256, Algorithm::ES384]));
    }
    Err(())
}

const TOO_MANY: &str = "API call exceeded rate limit due to too many requests.";

fn echo_response(status: u16, quoted: &str) -> Resp {
    if status >= 500 {
        return Resp {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: format!("upstream failed for the request:\n{quoted}").into_bytes(),
        };
    }
    Resp::json(
        status,
        &json!({
            "errorCode": "E0000011",
            "errorSummary": format!("Invalid request: {quoted}"),
            "error": "invalid_client",
            "error_description": format!("Invalid request: {quoted}"),
            "errorCauses": [{"errorSummary": quoted}],
        }),
    )
}

fn fail_response(status: u16) -> Resp {
    match status {
        502..=504 => {
            let reason = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            Resp {
                status,
                headers: vec![("content-type".into(), "text/html".into())],
                body: format!(
                    "<html><head><title>{status} {reason}</title></head><body><center><h1>{status} \
                     {reason}</h1></center></body></html>\n"
                )
                .into_bytes(),
            }
        }
        500 => Resp::json(
            500,
            &json!({
                "errorCode": "E0000009",
                "errorSummary": "Internal Server Error",
                "errorLink": "E0000009",
                "errorId": "oaefakeinternal",
                "errorCauses": [],
            }),
        ),
        _ => Resp::json(
            status,
            &json!({
                "errorCode": "E0000001",
                "errorSummary": format!("Injected failure {status}"),
                "errorLink": "E0000001",
                "errorId": "oaefakeinjected",
                "errorCauses": [],
            }),
        ),
    }
}

/// The `X-Rate-Limit-Limit` of an endpoint (A8, Workforce column).
fn bucket_limit(method: &Method, path: &str) -> u64 {
    let rest = path.strip_prefix("/api/v1/").unwrap_or("");
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["users"] => 600,
        ["users", _] if method == Method::GET => 2000,
        ["users", _] => 600,
        ["groups"] => 500,
        ["groups", ..] => 1000,
        ["logs"] => 120,
        _ => 1200,
    }
}

fn display_message(event_type: &str) -> &'static str {
    match event_type {
        "user.lifecycle.create" => "Create Okta user",
        "user.lifecycle.activate" => "Activate Okta user",
        "user.lifecycle.deactivate" => "Deactivate Okta user",
        "user.lifecycle.reactivate" => "Reactivate Okta user",
        "user.lifecycle.suspend" => "Suspend Okta user",
        "user.lifecycle.unsuspend" => "Unsuspend Okta user",
        "user.lifecycle.delete.completed" => "Delete Okta user completed",
        "user.account.update_profile" => "Update user profile for Okta",
        "user.account.lock" => "Max sign in attempts exceeded",
        "group.user_membership.add" => "Add user to group membership",
        "group.user_membership.remove" => "Remove user from group membership",
        _ => "",
    }
}

// ===== HTTP glue ==============================================================================

struct Outcome {
    resp: Resp,
    delay: Option<Duration>,
    cut: Option<FaultKind>,
}

async fn handle(State(inner): State<Arc<Mutex<Inner>>>, request: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .unwrap_or_default();
    let outcome = inner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .process(&parts.method, &parts.uri, &parts.headers, &body, at);
    if let Some(delay) = outcome.delay {
        tokio::time::sleep(delay).await;
    }
    let Resp {
        status,
        headers,
        body,
    } = outcome.resp;
    let body = match outcome.cut {
        Some(FaultKind::Truncate) => Body::from(body[..body.len() / 2].to_vec()),
        Some(FaultKind::Abort) => {
            // Half the body, a pause so that the head and that half are flushed, then an
            // error: hyper drops the connection without the chunked terminator.
            let half = Bytes::from(body[..body.len() / 2].to_vec());
            let stream = futures::stream::unfold(0u8, move |step| {
                let half = half.clone();
                async move {
                    match step {
                        0 => Some((Ok(half), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Some((
                                Err(std::io::Error::new(
                                    std::io::ErrorKind::ConnectionAborted,
                                    "fake Okta aborts the body",
                                )),
                                2,
                            ))
                        }
                        _ => None,
                    }
                }
            });
            Body::from_stream(stream)
        }
        _ => Body::from(body),
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    for (name, value) in headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(&value).expect("header value"),
        );
    }
    response
}

// ===== Expressions: `search`, `filter` (A2) and System Log `filter` (A10) =====================

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Eq,
    Sw,
    Co,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Clone, Debug)]
enum Lit {
    Str(String),
    Date(i64),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Clone, Debug)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Cmp(String, Op, Lit),
    Present(String),
}

#[derive(Clone, Copy, PartialEq)]
enum Dialect {
    UserSearch,
    UserFilter,
    GroupSearch,
    Logs,
}

#[derive(Clone, Copy, PartialEq)]
enum AttrKind {
    Date,
    Value,
}

impl Dialect {
    fn attr_kind(self, attr: &str, schema: &BTreeSet<String>) -> Result<AttrKind, String> {
        const USER_DATES: &[&str] = &[
            "created",
            "activated",
            "statusChanged",
            "lastUpdated",
            "passwordChanged",
            "lastLogin",
        ];
        let unknown = || Err(format!("Unsupported property '{attr}'"));
        match self {
            Dialect::UserSearch => {
                if USER_DATES.contains(&attr) {
                    Ok(AttrKind::Date)
                } else if matches!(attr, "id" | "status" | "type.id")
                    || attr
                        .strip_prefix("profile.")
                        .is_some_and(|p| schema.contains(p))
                {
                    Ok(AttrKind::Value)
                } else {
                    unknown()
                }
            }
            Dialect::UserFilter => match attr {
                "lastUpdated" => Ok(AttrKind::Date),
                "status" | "id" | "profile.login" | "profile.email" | "profile.firstName"
                | "profile.lastName" => Ok(AttrKind::Value),
                _ => unknown(),
            },
            Dialect::GroupSearch => match attr {
                "created" | "lastUpdated" | "lastMembershipUpdated" => Ok(AttrKind::Date),
                "id" | "type" | "profile.name" | "profile.description" => Ok(AttrKind::Value),
                _ => unknown(),
            },
            Dialect::Logs => match attr {
                "published" => {
                    Err("SCIM filter expressions can't use the published attribute".into())
                }
                "eventType" | "uuid" | "severity" | "displayMessage" | "outcome.result"
                | "target.id" | "target.type" | "target.alternateId" | "target.displayName"
                | "actor.id" | "actor.type" | "actor.alternateId" | "actor.displayName"
                | "transaction.id" => Ok(AttrKind::Value),
                _ => Err(format!(
                    "Unsupported property '{attr}' (not implemented by the fake)"
                )),
            },
        }
    }

    fn allows(self, attr: &str, op: Option<Op>, kind: AttrKind) -> bool {
        match (self, op) {
            (Dialect::UserFilter, None) => false,
            (Dialect::UserFilter, Some(Op::Eq)) => true,
            (Dialect::UserFilter, Some(Op::Gt | Op::Ge | Op::Lt | Op::Le)) => attr == "lastUpdated",
            (Dialect::UserFilter, Some(_)) => false,
            (_, Some(Op::Sw)) => kind != AttrKind::Date,
            (Dialect::UserSearch, Some(Op::Co)) => CONTAINS_ATTRIBUTES.contains(&attr),
            (_, Some(Op::Co)) => kind != AttrKind::Date,
            _ => true,
        }
    }
}

fn parse_and_check(
    text: &str,
    dialect: Dialect,
    schema: &BTreeSet<String>,
) -> Result<Expr, String> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, at: 0 };
    let mut expr = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(format!("Unexpected token at position {}", parser.at));
    }
    check(&mut expr, dialect, schema)?;
    Ok(expr)
}

fn check(expr: &mut Expr, dialect: Dialect, schema: &BTreeSet<String>) -> Result<(), String> {
    match expr {
        Expr::Or(a, b) | Expr::And(a, b) => {
            check(a, dialect, schema)?;
            check(b, dialect, schema)
        }
        Expr::Present(attr) => {
            let kind = dialect.attr_kind(attr, schema)?;
            if dialect.allows(attr, None, kind) {
                Ok(())
            } else {
                Err(format!("Operator 'pr' is not supported on '{attr}'"))
            }
        }
        Expr::Cmp(attr, op, lit) => {
            let kind = dialect.attr_kind(attr, schema)?;
            if !dialect.allows(attr, Some(*op), kind) {
                return Err(format!("Operator {op:?} is not supported on '{attr}'"));
            }
            if kind == AttrKind::Date {
                let Lit::Str(s) = lit else {
                    return Err(format!("'{attr}' needs a date string"));
                };
                *lit = Lit::Date(parse_ts(s).ok_or_else(|| format!("Invalid date '{s}'"))?);
            }
            Ok(())
        }
    }
}

impl Expr {
    fn eval(&self, get: &dyn Fn(&str) -> Vec<Value>) -> bool {
        match self {
            Expr::Or(a, b) => a.eval(get) || b.eval(get),
            Expr::And(a, b) => a.eval(get) && b.eval(get),
            Expr::Present(attr) => get(attr)
                .iter()
                .any(|v| !v.is_null() && v.as_str() != Some("")),
            Expr::Cmp(attr, op, lit) => get(attr).iter().any(|v| compare(v, *op, lit)),
        }
    }
}

fn ordering_matches(ordering: std::cmp::Ordering, op: Op) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match op {
        Op::Eq => ordering == Equal,
        Op::Gt => ordering == Greater,
        Op::Ge => ordering != Less,
        Op::Lt => ordering == Less,
        Op::Le => ordering != Greater,
        Op::Sw | Op::Co => false,
    }
}

fn compare(value: &Value, op: Op, lit: &Lit) -> bool {
    match lit {
        Lit::Date(ms) => value
            .as_i64()
            .is_some_and(|v| ordering_matches(v.cmp(ms), op)),
        Lit::Str(s) => {
            let v = match value {
                Value::String(v) => v.to_lowercase(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return false,
            };
            let s = s.to_lowercase();
            match op {
                Op::Sw => v.starts_with(&s),
                Op::Co => v.contains(&s),
                _ => ordering_matches(v.cmp(&s), op),
            }
        }
        Lit::Num(n) => value
            .as_f64()
            .and_then(|v| v.partial_cmp(n))
            .is_some_and(|o| ordering_matches(o, op)),
        Lit::Bool(b) => op == Op::Eq && value.as_bool() == Some(*b),
        Lit::Null => op == Op::Eq && value.is_null(),
    }
}

/// A user's values for a search attribute (dates as epoch ms; arrays flattened).
fn user_attr(u: &UserRec, attr: &str) -> Vec<Value> {
    match attr {
        "id" => vec![json!(u.id)],
        "status" => vec![json!(u.status)],
        "type.id" => vec![json!(USER_TYPE_ID)],
        "created" => vec![json!(u.created)],
        "lastUpdated" => vec![json!(u.last_updated)],
        "activated" => u.activated.map(|t| json!(t)).into_iter().collect(),
        "statusChanged" => u.status_changed.map(|t| json!(t)).into_iter().collect(),
        _ => match attr.strip_prefix("profile.").and_then(|p| u.profile.get(p)) {
            Some(Value::Array(values)) => values.clone(),
            Some(v) => vec![v.clone()],
            None => Vec::new(),
        },
    }
}

fn group_attr(g: &GroupRec, attr: &str) -> Vec<Value> {
    match attr {
        "id" => vec![json!(g.id)],
        "type" => vec![json!("OKTA_GROUP")],
        "profile.name" => vec![json!(g.name)],
        "profile.description" => g.description.iter().map(|d| json!(d)).collect(),
        "created" => vec![json!(g.created)],
        "lastUpdated" => vec![json!(g.last_updated)],
        "lastMembershipUpdated" => vec![json!(g.last_membership_updated)],
        _ => Vec::new(),
    }
}

fn event_attr(e: &Event, attr: &str) -> Vec<Value> {
    let targets = |f: &dyn Fn(&Target) -> Value| e.targets.iter().map(f).collect();
    match attr {
        "eventType" => vec![json!(e.event_type)],
        "uuid" => vec![json!(e.uuid)],
        "severity" => vec![json!("INFO")],
        "displayMessage" => vec![json!(display_message(e.event_type))],
        "outcome.result" => vec![json!("SUCCESS")],
        "transaction.id" => vec![json!(e.transaction)],
        "target.id" => targets(&|t| json!(t.id)),
        "target.type" => targets(&|t| json!(t.kind)),
        "target.alternateId" => targets(&|t| json!(t.alternate_id)),
        "target.displayName" => targets(&|t| json!(t.display_name)),
        "actor.id" => vec![json!(ACTOR_ID)],
        "actor.type" => vec![json!("User")],
        "actor.alternateId" => vec![json!("admin@example.com")],
        "actor.displayName" => vec![json!("Fake Admin")],
        _ => Vec::new(),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Open,
    Close,
    Word(String),
    Str(String),
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                tokens.push(Tok::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Tok::Close);
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("Unterminated string".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(escaped) => s.push(escaped),
                            None => return Err("Unterminated string".into()),
                        },
                        Some(other) => s.push(other),
                    }
                }
                tokens.push(Tok::Str(s));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '(' || c == ')' || c == '"' {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Tok::Word(word));
            }
        }
    }
    if tokens.is_empty() {
        return Err("Empty expression".into());
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(keyword))
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek_keyword("or") {
            self.at += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.atom()?;
        while self.peek_keyword("and") {
            self.at += 1;
            let right = self.atom()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn atom(&mut self) -> Result<Expr, String> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        match token {
            Some(Tok::Open) => {
                let inner = self.or()?;
                if self.tokens.get(self.at) != Some(&Tok::Close) {
                    return Err("Missing ')'".into());
                }
                self.at += 1;
                Ok(inner)
            }
            Some(Tok::Word(attr)) => {
                if attr.eq_ignore_ascii_case("not") {
                    return Err("The 'not' operator isn't supported".into());
                }
                let Some(Tok::Word(op)) = self.tokens.get(self.at).cloned() else {
                    return Err(format!("Missing operator after '{attr}'"));
                };
                self.at += 1;
                let op = match op.to_ascii_lowercase().as_str() {
                    "pr" => return Ok(Expr::Present(attr)),
                    "eq" => Op::Eq,
                    "sw" => Op::Sw,
                    "co" => Op::Co,
                    "gt" => Op::Gt,
                    "ge" => Op::Ge,
                    "lt" => Op::Lt,
                    "le" => Op::Le,
                    "ne" => return Err("The 'ne' (not equal) operator isn't supported".into()),
                    other => return Err(format!("Unknown operator '{other}'")),
                };
                let value = self.tokens.get(self.at).cloned();
                self.at += 1;
                let lit = match value {
                    Some(Tok::Str(s)) => Lit::Str(s),
                    Some(Tok::Word(w)) if w.eq_ignore_ascii_case("true") => Lit::Bool(true),
                    Some(Tok::Word(w)) if w.eq_ignore_ascii_case("false") => Lit::Bool(false),
                    Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => Lit::Null,
                    Some(Tok::Word(w)) => match w.parse::<f64>() {
                        Ok(n) => Lit::Num(n),
                        Err(_) => return Err(format!("Invalid value '{w}' (strings are quoted)")),
                    },
                    _ => return Err(format!("Missing value after '{attr}'")),
                };
                Ok(Expr::Cmp(attr, op, lit))
            }
            _ => Err("Expected an attribute or '('".into()),
        }
    }
}

// ===== Small helpers ==========================================================================

fn parse_ts(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Okta's date format (A2): `YYYY-MM-DDTHH:mm:ss.SSSZ`.
fn fmt_ts(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .expect("a representable time")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

fn parse_query(query: Option<&str>) -> Params {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn parse_limit(params: &Params, default: usize, max: usize) -> Result<usize, String> {
    match param(params, "limit") {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 1 => Ok((n as usize).min(max)),
            _ => Err("Api validation failed: limit".to_owned()),
        },
    }
}

/// `?k=v&…`, percent-encoding everything but RFC 3986 unreserved characters (so a space is
/// `%20`, not `+`).
fn encode_query(params: &Params) -> String {
    if params.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if bytes[i] == b'%'
            && let Some(b) = hex
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
