//! A programmable fake of Microsoft Graph v1.0 (the directory part: users, groups, delta queries)
//! and of the Microsoft identity platform's token endpoint, built from the documented behaviour
//! collected in `../shared/reference/idp-apis.md` (part B, and the "Graph fake" checklist of part
//! C) — not from what our client happens to send. The section numbers below (B4, B7, …) refer to
//! it.
//!
//! It serves HTTP/1.1 on `127.0.0.1:<free port>` from a task of the calling test's tokio runtime
//! and keeps its whole state behind one `Arc<Mutex<…>>`, so a test programs it synchronously
//! (`add_user`, `soft_delete`, `throttle_next`, …) while the code under test talks to it. The one
//! origin serves both Graph (`{url}/v1.0/…`) and the login endpoint
//! (`{url}/{tenant}/oauth2/v2.0/token`), so `url` is both the `graph_url` and the `login_url`.
//!
//! What it reproduces:
//! - Token endpoint (B7): client credentials with `client_secret` (form or HTTP Basic) or a
//!   certificate `client_assertion` (`x5t#S256` or `x5t` naming a registered certificate, PS256 or
//!   RS256, `aud` = the token URL, `iss` = `sub` = client id, `exp`/`nbf` with 5 minutes of skew);
//!   `scope` must be `{url}/.default`. AADSTS errors with `error_codes`, `timestamp`, `trace_id`,
//!   `correlation_id`, `error_uri`. Access tokens live 3599 s (or until
//!   [`FakeGraph::expire_access_tokens`]); 401 `InvalidAuthenticationToken` without a valid one,
//!   403 `Authorization_RequestDenied` without the application permission the call needs.
//! - `GET /v1.0/users/delta` and `/v1.0/groups/delta` (B4, B5): the initial round pages through
//!   `@odata.nextLink` (`$skiptoken`) to a last page with `@odata.deltaLink` (`$deltatoken`), never
//!   both; a later round returns what changed since its token: changed users (all selected
//!   properties, or only the changed ones with `Prefer: return=minimal`; never-set ones omitted,
//!   cleared ones `null`), `{"id","@removed":{"reason":"changed"|"deleted"}}`, restored users with
//!   no annotation, `manager@delta`, `members@delta` (users and nested groups, each with its
//!   `@odata.type`; a changed group may carry only `id` + `members@delta`; large groups split
//!   across pages), and always a new deltaLink, even when empty; `$deltatoken=latest`;
//!   `$filter=id eq '…'`; a change to an unselected property does not show;
//!   `$expand`/`$orderby`/`$search` refused. Expired tokens: 400 `syncStateNotFound`, or
//!   410 Gone with a `Location` (the initial query with an empty `$deltaToken`).
//! - `GET /v1.0/users` (B2), `/users/{id|upn}`, `/users/{id}/manager` (404
//!   `Request_ResourceNotFound` when none), `/users/{id}/memberOf` (direct groups only),
//!   `/users/{id}/transitiveMemberOf` (B5: also every group those groups are in, through any
//!   chain of nested groups; cycles end), `/groups`, `/groups/{id}`, `/groups/{id}/members`
//!   (users and nested groups): the default property set (B2) or `$select` (null for unset selected
//!   properties, `[]` for collections, directory extensions only when set), `$expand=manager`,
//!   `$top` 1..=999 (else 400 "Invalid page size specified"), default page 100, `@odata.nextLink`
//!   with an opaque `$skiptoken`, `$filter` (`eq`, `in`, `startsWith`, `and`/`or`; `ne`, `not`,
//!   `endsWith` only as advanced queries with `ConsistencyLevel: eventual` + `$count=true`, B2),
//!   `@odata.count` only on the first page of an advanced query.
//! - `PATCH /v1.0/users/{id|upn}` (B6): merge, `null` clears, 204; `onPremisesExtensionAttributes`
//!   merged per key; `extension_<32 hex>_<name>` open properties; unknown / read-only properties
//!   and over-long values refused; on-premises synced users refuse AD-mastered properties with the
//!   documented 400 `Request_BadRequest`.
//! - Every Graph response: `request-id`, `client-request-id` (echoed, else the request id),
//!   `Date`, `x-ms-ags-diagnostic`; errors in the envelope of B10 with `innerError.date`,
//!   `request-id`, `client-request-id`. Faults: 429 `TooManyRequests` with `Retry-After` exactly as
//!   given ("2", "0.5") and `x-ms-throttle-*` headers (B8), 503 with `Retry-After`, any status,
//!   a 200 cut in the middle, a body aborted mid-stream, a slow response, a replayed delta item.
//!
//! JWTs (client assertions) are checked against the real system clock, which is the clock the
//! client signs with; `Date` and the error timestamps use it too.
//!
//! Simplified, or left out (INFERENCE where the reference is silent):
//! - A delta round is fixed when it starts (its set of objects; initial rounds render each user's
//!   current state when its page is served, a user deleted meanwhile is left out and reported by
//!   the next round); changes made while it pages show in the next round. Query options sent
//!   with a `$skiptoken`/`$deltatoken` are ignored (the token's win), `$top` on delta is ignored
//!   (B4 "not supported", B2 "fail silently"). Soft-deleted users are not in initial rounds.
//! - `manager@delta` on a later round appears only when the manager changed (a removal names the
//!   old manager); a manager change A → B is one item naming B. A membership change is reported
//!   as the net difference over the round. Soft-deleting a user keeps its group memberships and
//!   its manager links (hidden from reads); hard-deleting removes both, as delta changes.
//!   Deleting a group reports it `@removed` and, on each group it was a member of, a
//!   `members@delta` removal. Nested groups may form cycles (A in B, B in A).
//! - Token errors use the codes of the Azure SDK troubleshooting table: 7000215 bad secret, 7000218
//!   no credential, 700016 unknown app, 70011 scope, 90002 tenant, 900144 missing parameter,
//!   700027 signature / unknown certificate / no thumbprint, 700021 iss/sub, 700023 audience,
//!   700024 time range. Assertion `jti`s are not checked for replay.
//! - Not implemented: `$batch` (501), `$search`, `$orderby`, `$skip`, casts
//!   (`/memberOf/microsoft.graph.group`), creating users or groups over HTTP, `transitiveMembers`,
//!   directory roles in `memberOf`, resource-unit accounting (`x-ms-resource-unit`).

// Each test module uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

/// The tenant of a fake started with [`FakeGraph::start`].
pub const TENANT: &str = "tenant-1";
/// The server-chosen page size (B2: "The default page limit is 100").
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// `expires_in` of access tokens (B7).
pub const TOKEN_LIFETIME_SECS: i64 = 3599;
/// `client_assertion_type` for certificate credentials (B7).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The application permissions an app has unless [`FakeGraph::grant_permissions`] says otherwise.
pub const DEFAULT_PERMISSIONS: &[&str] = &[
    "User.Read.All",
    "GroupMember.Read.All",
    "User.ReadWrite.All",
];
/// The message of an expired delta token (B4, devblog 2020-07-03).
pub const SYNC_STATE_NOT_FOUND: &str = "The sync state generation is not found. The delta token is expired and data must be synchronized again.";
/// The message of a write to an AD-synced user's on-premises mastered property (B6).
pub const ON_PREMISES_MASTERED: &str = "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration.";

/// The properties `GET /users` returns without `$select` (B2).
const DEFAULT_USER_PROPERTIES: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
];
/// The declared user properties the fake knows (B3, user.md); `$select` of anything else (but a
/// directory extension or a property some user was given) is a 400.
const KNOWN_USER_PROPERTIES: &[&str] = &[
    "accountEnabled",
    "ageGroup",
    "assignedLicenses",
    "businessPhones",
    "city",
    "companyName",
    "country",
    "createdDateTime",
    "creationType",
    "deletedDateTime",
    "department",
    "displayName",
    "employeeHireDate",
    "employeeId",
    "employeeLeaveDateTime",
    "employeeOrgData",
    "employeeType",
    "externalUserState",
    "faxNumber",
    "givenName",
    "identities",
    "imAddresses",
    "jobTitle",
    "mail",
    "mailNickname",
    "mobilePhone",
    "officeLocation",
    "onPremisesDistinguishedName",
    "onPremisesDomainName",
    "onPremisesExtensionAttributes",
    "onPremisesImmutableId",
    "onPremisesLastSyncDateTime",
    "onPremisesSamAccountName",
    "onPremisesSecurityIdentifier",
    "onPremisesSyncEnabled",
    "onPremisesUserPrincipalName",
    "otherMails",
    "passwordPolicies",
    "postalCode",
    "preferredDataLocation",
    "preferredLanguage",
    "proxyAddresses",
    "securityIdentifier",
    "showInAddressList",
    "state",
    "streetAddress",
    "surname",
    "usageLocation",
    "userPrincipalName",
    "userType",
];
/// Collection-valued user properties: `[]`, not `null`, when unset.
const COLLECTION_PROPERTIES: &[&str] = &[
    "assignedLicenses",
    "businessPhones",
    "identities",
    "imAddresses",
    "otherMails",
    "proxyAddresses",
];
/// Properties a `PATCH` may not set.
const READ_ONLY_USER_PROPERTIES: &[&str] = &[
    "id",
    "createdDateTime",
    "creationType",
    "deletedDateTime",
    "externalUserState",
    "onPremisesDistinguishedName",
    "onPremisesDomainName",
    "onPremisesLastSyncDateTime",
    "onPremisesSamAccountName",
    "onPremisesSecurityIdentifier",
    "onPremisesSyncEnabled",
    "onPremisesUserPrincipalName",
    "proxyAddresses",
    "securityIdentifier",
    "assignedLicenses",
];
/// Properties whose source of authority is the on-premises AD for a synced user (B3
/// `onPremisesExtensionAttributes`; the rest are the usual AD-synced attributes — INFERENCE).
const ON_PREMISES_MASTERED_PROPERTIES: &[&str] = &[
    "onPremisesExtensionAttributes",
    "accountEnabled",
    "businessPhones",
    "city",
    "companyName",
    "country",
    "department",
    "displayName",
    "employeeId",
    "employeeType",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "postalCode",
    "state",
    "streetAddress",
    "surname",
    "userPrincipalName",
];
/// Maximum lengths (B3: department 64, employeeId 16; the rest from user.md).
const MAX_LENGTHS: &[(&str, usize)] = &[
    ("companyName", 64),
    ("department", 64),
    ("displayName", 256),
    ("employeeId", 16),
    ("givenName", 64),
    ("jobTitle", 128),
    ("officeLocation", 128),
    ("surname", 64),
];
const BOOLEAN_PROPERTIES: &[&str] = &["accountEnabled", "showInAddressList"];
/// Group properties the fake knows; all of them are returned without `$select`.
const KNOWN_GROUP_PROPERTIES: &[&str] = &[
    "createdDateTime",
    "description",
    "displayName",
    "groupTypes",
    "mail",
    "mailEnabled",
    "mailNickname",
    "securityEnabled",
    "visibility",
];
const USER_TYPE: &str = "#microsoft.graph.user";
const GROUP_TYPE: &str = "#microsoft.graph.group";
/// Graph's JSON content type.
const ODATA_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";
/// The largest body the fake reads.
const BODY_LIMIT: usize = 16 << 20;
/// Clock skew allowed on a client assertion's `nbf`/`exp`, in seconds.
const SKEW_SECS: i64 = 300;
/// How many delta rounds (with their pages) the fake keeps for `$skiptoken`s.
const KEPT_ROUNDS: usize = 16;
/// Graph's first-party application id (in `WWW-Authenticate`).
const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// `GET`, `POST`, `PATCH`, …
    pub method: String,
    /// The path, still percent-encoded (e.g. `/v1.0/users/delta`).
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

    /// The first decoded value of query parameter `name` (case-insensitive, e.g. `$select`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body parsed as an `application/x-www-form-urlencoded` form.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }
}

/// How an expired delta or skip token is answered (B4 "Expiry").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryMode {
    /// 400 `syncStateNotFound` (the devblog's form).
    BadRequest400,
    /// 410 Gone with a `Location` header: the initial query with an empty `$deltaToken`
    /// ("Synchronization reset").
    Gone410,
}

/// A running fake Graph tenant. Dropping it stops the server.
pub struct FakeGraph {
    /// `http://127.0.0.1:PORT` (no trailing slash): the Graph URL and the login URL.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeGraph {
    /// Starts a fake tenant [`TENANT`] with no users, no groups and no apps on a free 127.0.0.1
    /// port.
    pub async fn start() -> FakeGraph {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Graph");
        let port = listener.local_addr().expect("local addr").port();
        let url = format!("http://127.0.0.1:{port}");
        let inner = Arc::new(Mutex::new(Inner::new(url.clone(), TENANT.to_owned())));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake Graph serves");
        });
        FakeGraph { url, inner, server }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tenant id (`tenant-1`).
    pub fn tenant(&self) -> &str {
        TENANT
    }

    /// `{url}/{tenant}/oauth2/v2.0/token`: the token endpoint, and the `aud` of client assertions.
    pub fn token_url(&self) -> String {
        format!("{}/{TENANT}/oauth2/v2.0/token", self.url)
    }

    /// `{url}/.default`, the only scope the token endpoint accepts (B7: the resource's
    /// `.default`; here the fake stands for the resource `https://graph.microsoft.com`).
    pub fn scope(&self) -> String {
        format!("{}/.default", self.url)
    }

    // ----- Apps and tokens (B7) --------------------------------------------------------------

    /// Registers an app (or adds to it) a client secret.
    pub fn register_app_secret(&self, client_id: &str, secret: &str) {
        let mut inner = self.lock();
        inner
            .apps
            .entry(client_id.to_owned())
            .or_insert_with(App::new)
            .secrets
            .push(secret.to_owned());
    }

    /// Registers an app (or adds to it) a certificate credential (a `CERTIFICATE` PEM with an RSA
    /// key). Client assertions must name it by `x5t#S256` (SHA-256 of the DER) or `x5t` (SHA-1).
    pub fn register_app_certificate(&self, client_id: &str, certificate_pem: &str) {
        let cert = RegisteredCert::from_pem(certificate_pem)
            .unwrap_or_else(|why| panic!("register_app_certificate: {why}"));
        let mut inner = self.lock();
        inner
            .apps
            .entry(client_id.to_owned())
            .or_insert_with(App::new)
            .certs
            .push(cert);
    }

    /// Replaces the application permissions (app roles) granted to a registered app; tokens
    /// issued afterwards carry them. Default: [`DEFAULT_PERMISSIONS`].
    pub fn grant_permissions(&self, client_id: &str, permissions: &[&str]) {
        let mut inner = self.lock();
        let app = inner
            .apps
            .get_mut(client_id)
            .unwrap_or_else(|| panic!("no app {client_id}"));
        app.roles = permissions.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Mints an access token with [`DEFAULT_PERMISSIONS`] without the token endpoint (for tests
    /// of the API parts). Not counted by [`FakeGraph::tokens_issued`].
    pub fn issue_token(&self) -> String {
        let roles = DEFAULT_PERMISSIONS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        self.lock().mint_token("test-client", roles)
    }

    /// Every access token issued so far is expired from now on (API calls with them get 401
    /// "Lifetime validation failed, the token is expired.").
    pub fn expire_access_tokens(&self) {
        for token in self.lock().tokens.values_mut() {
            token.expires_at = 0;
        }
    }

    /// How many access tokens the token endpoint has issued.
    pub fn tokens_issued(&self) -> usize {
        self.lock().tokens_issued
    }

    // ----- Directory -------------------------------------------------------------------------

    /// Adds a user with `props` (an object: `userPrincipalName`, `mail`, `givenName`, `surname`,
    /// `displayName`, `accountEnabled`, `department`, `jobTitle`, `employeeId`,
    /// `onPremisesExtensionAttributes`, `extension_<appid>_<name>`, or any other name, which then
    /// becomes a known property). `accountEnabled` defaults to true, `userType` to `Member`,
    /// `createdDateTime` to now. A change (generation) for delta. Panics if the id exists.
    pub fn add_user(&self, id: &str, props: Value) {
        let mut inner = self.lock();
        assert!(
            !inner.users.contains_key(id) && !inner.hard_deleted.contains(id),
            "user {id} already exists"
        );
        let Value::Object(given) = props else {
            panic!("a user's properties are a JSON object")
        };
        let mut props = Map::new();
        props.insert("accountEnabled".into(), json!(true));
        props.insert("userType".into(), json!("Member"));
        props.insert("createdDateTime".into(), json!(graph_date_now()));
        for (key, value) in given {
            if key == "id" {
                continue;
            }
            inner.learn_property(&key);
            if value.is_null() {
                props.remove(&key);
            } else {
                props.insert(key, value);
            }
        }
        let ever_set = props.keys().cloned().collect();
        inner.users.insert(
            id.to_owned(),
            UserRec {
                props,
                ever_set,
                manager: None,
                deleted: false,
            },
        );
        inner.record(Change::UserCreated(id.to_owned()));
    }

    /// Merges `changed` (an object) into the user: a `null` removes the property. A change for
    /// delta (listing the properties whose value changed). Panics on an unknown user.
    pub fn update_user(&self, id: &str, changed: Value) {
        let Value::Object(changed) = changed else {
            panic!("a user update is a JSON object")
        };
        let mut inner = self.lock();
        assert!(inner.users.contains_key(id), "no user {id}");
        for key in changed.keys() {
            inner.learn_property(key);
        }
        inner.apply_user_update(id, changed);
    }

    /// Sets (or with `None` removes) the user's manager. A change for delta (`manager@delta`).
    pub fn set_manager(&self, id: &str, manager_id: Option<&str>) {
        let mut inner = self.lock();
        if let Some(m) = manager_id {
            assert!(inner.users.contains_key(m), "no user {m}");
        }
        let user = inner
            .users
            .get_mut(id)
            .unwrap_or_else(|| panic!("no user {id}"));
        let before = std::mem::replace(&mut user.manager, manager_id.map(str::to_owned));
        if before.as_deref() != manager_id {
            inner.record(Change::UserManager {
                id: id.to_owned(),
                before,
            });
        }
    }

    /// Deletes the user into the deleted-items container: gone from every read (404), delta
    /// reports `@removed` `changed` (B4). Group memberships are kept for a restore, but hidden.
    pub fn soft_delete(&self, id: &str) {
        let mut inner = self.lock();
        let user = inner
            .users
            .get_mut(id)
            .unwrap_or_else(|| panic!("no user {id}"));
        assert!(!user.deleted, "user {id} is already deleted");
        user.deleted = true;
        inner.record(Change::UserSoftDeleted(id.to_owned()));
    }

    /// Restores a soft-deleted user: it appears again in delta with no annotation (B4).
    pub fn restore(&self, id: &str) {
        let mut inner = self.lock();
        let user = inner
            .users
            .get_mut(id)
            .unwrap_or_else(|| panic!("no user {id}"));
        assert!(user.deleted, "user {id} is not deleted");
        user.deleted = false;
        inner.record(Change::UserRestored(id.to_owned()));
    }

    /// Permanently deletes the user (soft-deleted or not): delta reports `@removed` `deleted`
    /// (B4); its group memberships go (a `members@delta` removal) and so does its place as a
    /// manager (a `manager@delta` removal for its reports).
    pub fn hard_delete(&self, id: &str) {
        let mut inner = self.lock();
        assert!(inner.users.remove(id).is_some(), "no user {id}");
        inner.hard_deleted.insert(id.to_owned());
        let groups: Vec<String> = inner
            .groups
            .iter()
            .filter(|(_, g)| g.members.contains(id))
            .map(|(gid, _)| gid.clone())
            .collect();
        for gid in groups {
            inner
                .groups
                .get_mut(&gid)
                .expect("listed")
                .members
                .remove(id);
            inner.record(Change::GroupMember {
                group: gid,
                user: id.to_owned(),
                added: false,
            });
        }
        let reports: Vec<String> = inner
            .users
            .iter()
            .filter(|(_, u)| u.manager.as_deref() == Some(id))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in reports {
            inner.users.get_mut(&uid).expect("listed").manager = None;
            inner.record(Change::UserManager {
                id: uid,
                before: Some(id.to_owned()),
            });
        }
        inner.record(Change::UserHardDeleted(id.to_owned()));
    }

    /// Marks the user as synced from on-premises AD (`onPremisesSyncEnabled: true`): `PATCH` of
    /// its AD-mastered properties (`onPremisesExtensionAttributes`, names, mail, …) is refused
    /// (B6); directory extensions stay writable. `false` makes it cloud-only again.
    pub fn set_on_premises_sync(&self, id: &str, enabled: bool) {
        let value = if enabled { json!(true) } else { Value::Null };
        self.update_user(id, json!({ "onPremisesSyncEnabled": value }));
    }

    /// Adds a security group. A change for group delta. Panics if the id exists.
    pub fn add_group(&self, id: &str, display_name: &str) {
        let mut inner = self.lock();
        assert!(!inner.groups.contains_key(id), "group {id} already exists");
        let nickname: String = display_name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let props = json!({
            "createdDateTime": graph_date_now(),
            "description": null,
            "displayName": display_name,
            "groupTypes": [],
            "mail": null,
            "mailEnabled": false,
            "mailNickname": nickname,
            "securityEnabled": true,
            "visibility": null,
        });
        let Value::Object(props) = props else {
            unreachable!()
        };
        inner.groups.insert(
            id.to_owned(),
            GroupRec {
                props,
                members: BTreeSet::new(),
                groups: BTreeSet::new(),
            },
        );
        inner.record(Change::GroupCreated(id.to_owned()));
    }

    /// Renames a group. A change for group delta.
    pub fn rename_group(&self, id: &str, display_name: &str) {
        let mut inner = self.lock();
        let group = inner
            .groups
            .get_mut(id)
            .unwrap_or_else(|| panic!("no group {id}"));
        group
            .props
            .insert("displayName".into(), json!(display_name));
        inner.record(Change::GroupProps(
            id.to_owned(),
            vec!["displayName".into()],
        ));
    }

    /// Deletes a group (security groups are deleted at once): group delta reports it with
    /// `@removed` and no member list; its memberships go with it.
    ///
    /// It also leaves every group it was a member of: each such parent reports the removal in
    /// its `members@delta` (INFERENCE: the reference is silent; this is how a hard-deleted user
    /// leaves its groups, and a client must cope with either).
    pub fn delete_group(&self, id: &str) {
        let mut inner = self.lock();
        assert!(inner.groups.remove(id).is_some(), "no group {id}");
        let parents: Vec<String> = inner
            .groups
            .iter()
            .filter(|(_, g)| g.groups.contains(id))
            .map(|(gid, _)| gid.clone())
            .collect();
        for parent in parents {
            inner
                .groups
                .get_mut(&parent)
                .expect("listed")
                .groups
                .remove(id);
            inner.record(Change::GroupNested {
                group: parent,
                child: id.to_owned(),
                added: false,
            });
        }
        inner.record(Change::GroupDeleted(id.to_owned()));
    }

    /// From now on a manager change's `manager@delta` lists the new manager first and the old
    /// one's `@removed` entry after it (Graph documents no order within the array).
    pub fn list_old_manager_last(&self) {
        self.lock().old_manager_last = true;
    }

    /// Adds the user to the group (a `members@delta` addition).
    pub fn add_member(&self, group_id: &str, user_id: &str) {
        self.membership(group_id, user_id, true);
    }

    /// Removes the user from the group (a `members@delta` item with `@removed`).
    pub fn remove_member(&self, group_id: &str, user_id: &str) {
        self.membership(group_id, user_id, false);
    }

    /// Makes the group `child_id` a member of the group `parent_id` (a nested group: a
    /// `members@delta` item of type `#microsoft.graph.group`). Cycles are allowed (A in B, B in
    /// A); a group cannot be a member of itself.
    pub fn add_group_member(&self, parent_id: &str, child_id: &str) {
        self.nesting(parent_id, child_id, true);
    }

    /// Removes the group `child_id` from the members of `parent_id` (a `members@delta` item of
    /// type `#microsoft.graph.group` with `@removed`).
    pub fn remove_group_member(&self, parent_id: &str, child_id: &str) {
        self.nesting(parent_id, child_id, false);
    }

    fn nesting(&self, parent_id: &str, child_id: &str, add: bool) {
        assert_ne!(parent_id, child_id, "a group cannot be a member of itself");
        let mut inner = self.lock();
        assert!(inner.groups.contains_key(child_id), "no group {child_id}");
        let group = inner
            .groups
            .get_mut(parent_id)
            .unwrap_or_else(|| panic!("no group {parent_id}"));
        let changed = if add {
            group.groups.insert(child_id.to_owned())
        } else {
            group.groups.remove(child_id)
        };
        if changed {
            inner.record(Change::GroupNested {
                group: parent_id.to_owned(),
                child: child_id.to_owned(),
                added: add,
            });
        }
    }

    fn membership(&self, group_id: &str, user_id: &str, add: bool) {
        let mut inner = self.lock();
        assert!(inner.users.contains_key(user_id), "no user {user_id}");
        let group = inner
            .groups
            .get_mut(group_id)
            .unwrap_or_else(|| panic!("no group {group_id}"));
        let changed = if add {
            group.members.insert(user_id.to_owned())
        } else {
            group.members.remove(user_id)
        };
        if changed {
            inner.record(Change::GroupMember {
                group: group_id.to_owned(),
                user: user_id.to_owned(),
                added: add,
            });
        }
    }

    /// The user as stored: every property it has (directory extensions included), `id`, and
    /// `deletedDateTime` when soft-deleted; `None` when it never existed or was hard-deleted.
    pub fn user(&self, id: &str) -> Option<Value> {
        let inner = self.lock();
        inner.users.get(id).map(|u| {
            let mut out = Map::new();
            out.insert("id".into(), json!(id));
            out.extend(u.props.clone());
            if u.deleted {
                out.insert("deletedDateTime".into(), json!(graph_date_now()));
            }
            Value::Object(out)
        })
    }

    /// The id of the user's manager.
    pub fn manager_of(&self, id: &str) -> Option<String> {
        self.lock().users.get(id).and_then(|u| u.manager.clone())
    }

    /// The ids of the groups the user is in directly or through nested groups (what
    /// `transitiveMemberOf` lists), sorted.
    pub fn transitive_groups(&self, user_id: &str) -> Vec<String> {
        self.lock().transitive_groups(user_id).into_iter().collect()
    }

    /// The ids of the group's user members.
    pub fn members(&self, group_id: &str) -> Vec<String> {
        self.lock()
            .groups
            .get(group_id)
            .map(|g| g.members.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many directory changes (generations) there have been.
    pub fn generation(&self) -> u64 {
        self.lock().changes.len() as u64
    }

    // ----- Faults and observation ------------------------------------------------------------

    /// Every existing delta token and skip token (delta rounds and list pages) becomes invalid:
    /// using one gets 400 `syncStateNotFound` or 410 Gone + `Location` (B4), per `mode`.
    pub fn expire_delta_tokens(&self, mode: ExpiryMode) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.expiry_mode = mode;
        inner.rounds.clear();
    }

    /// The next `times` requests whose path starts with `path_prefix` get `status` with the
    /// request quoted back, as a proxy or a misconfigured gateway may answer: 500 as a
    /// plain-text page, others in Graph's error envelope (an AADSTS-style OAuth error on the
    /// token endpoint) whose message quotes it.
    pub fn echo_next(&self, path_prefix: &str, status: u16, times: usize) {
        self.add_fault(path_prefix, FaultKind::Echo(status), times);
    }

    /// The next `times` requests whose path starts with `path_prefix` get `status` with Graph's
    /// error envelope (or an AADSTS error on the token endpoint), without `Retry-After`.
    pub fn fail_next(&self, path_prefix: &str, status: u16, times: usize) {
        self.add_fault(path_prefix, FaultKind::Fail(status), times);
    }

    /// The next `times` matching requests get 429 `TooManyRequests` with `Retry-After:
    /// <retry_after>` exactly as given (`"2"`, `"0.5"`; B8) and the `x-ms-throttle-*` headers.
    pub fn throttle_next(&self, path_prefix: &str, times: usize, retry_after: &str) {
        self.add_fault(
            path_prefix,
            FaultKind::Throttle(retry_after.to_owned()),
            times,
        );
    }

    /// The next `times` matching requests get 503 `serviceNotAvailable` with `Retry-After`.
    pub fn unavailable_next(&self, path_prefix: &str, times: usize, retry_after: &str) {
        self.add_fault(
            path_prefix,
            FaultKind::Unavailable(retry_after.to_owned()),
            times,
        );
    }

    /// The next matching response that would be a 200 keeps its status and headers but its JSON
    /// body is cut in the middle (with a matching `Content-Length`).
    pub fn truncate_next_page(&self, path_prefix: &str) {
        self.add_fault(path_prefix, FaultKind::Truncate, 1);
    }

    /// The next matching response that would be a 200 sends half its body (chunked) and then
    /// breaks the connection.
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

    /// The server-chosen page size: delta pages (and the members a split group carries per
    /// page) and lists without `$top`. Default [`DEFAULT_PAGE_SIZE`]. Applies to rounds and lists
    /// started afterwards.
    pub fn set_page_size(&self, n: usize) {
        assert!(n >= 1, "a page holds at least one item");
        self.lock().page_size = n;
    }

    /// The next delta page served (users or groups) also carries, first, an item already sent
    /// before (the last one of the previous page, in its current state), as Graph may replay
    /// (B4 "must be prepared for replays"). With nothing sent yet, the page's first item is
    /// repeated at its end.
    pub fn replay_next_delta(&self) {
        self.lock().replay = true;
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
}

// ===== A certificate credential a client would use (for the self-tests and the client's tests) ==

/// Which thumbprint header a client assertion carries (B7: `x5t#S256` now, `x5t` SHA-1 before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thumbprint {
    /// `x5t#S256`: base64url SHA-256 of the certificate's DER.
    Sha256,
    /// `x5t`: base64url SHA-1 of the certificate's DER.
    Sha1,
}

/// A certificate and a private key (normally its own) that sign client assertions.
pub struct TestCert {
    /// The `CERTIFICATE` PEM (what [`FakeGraph::register_app_certificate`] takes).
    pub cert_pem: String,
    /// The private key PEM (PKCS#8 or PKCS#1).
    pub key_pem: String,
    /// The certificate's DER.
    pub der: Vec<u8>,
    encoding: EncodingKey,
}

impl TestCert {
    /// `tests/fixtures/entra/cert.pem` with `key.pem` (see the README there).
    pub fn fixture() -> TestCert {
        let read = |name: &str| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/entra")
                .join(name);
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        };
        TestCert::from_pem(&read("cert.pem"), &read("key.pem"))
    }

    /// `tests/fixtures/entra/other-cert.pem`: a certificate of another key.
    pub fn other_fixture_cert_pem() -> String {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/entra/other-cert.pem");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// A certificate and an RSA private key (which may deliberately not match).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> TestCert {
        TestCert {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            der: pem_der(cert_pem, "CERTIFICATE").expect("a CERTIFICATE PEM"),
            encoding: EncodingKey::from_rsa_pem(key_pem.as_bytes()).expect("an RSA private key"),
        }
    }

    /// base64url(SHA-256(DER)), the `x5t#S256` header.
    pub fn x5t_s256(&self) -> String {
        thumbprint(&self.der, Thumbprint::Sha256)
    }

    /// base64url(SHA-1(DER)), the `x5t` header.
    pub fn x5t(&self) -> String {
        thumbprint(&self.der, Thumbprint::Sha1)
    }

    /// A JWT header with `alg` and the chosen thumbprint (`typ: JWT`).
    pub fn header(&self, alg: Algorithm, thumb: Thumbprint) -> Header {
        let mut header = Header::new(alg);
        match thumb {
            Thumbprint::Sha256 => header.x5t_s256 = Some(self.x5t_s256()),
            Thumbprint::Sha1 => header.x5t = Some(self.x5t()),
        }
        header
    }

    /// The claims of a client assertion as the certificate-credentials doc lists them (B7):
    /// `aud` = the token URL, `iss` = `sub` = client id, `jti`, `nbf` = `iat` = now, `exp` = now +
    /// 10 minutes.
    pub fn claims(client_id: &str, token_url: &str) -> Value {
        let now = unix_now();
        json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid(),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        })
    }

    /// Signs `claims` with `header` and the private key.
    pub fn sign(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("sign JWT")
    }

    /// A client assertion as the current doc describes it: PS256 with `x5t#S256`.
    pub fn client_assertion(&self, client_id: &str, token_url: &str) -> String {
        self.sign(
            &self.header(Algorithm::PS256, Thumbprint::Sha256),
            &TestCert::claims(client_id, token_url),
        )
    }
}

fn thumbprint(der: &[u8], thumb: Thumbprint) -> String {
    let alg = match thumb {
        Thumbprint::Sha256 => &aws_lc_rs::digest::SHA256,
        Thumbprint::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
    };
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(alg, der).as_ref())
}

/// The DER inside the first PEM block labelled `label`.
fn pem_der(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(b64).ok()
}

/// One DER TLV: (tag, content, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The PKCS#1 RSA public key of an X.509 certificate (its SubjectPublicKeyInfo), or an error.
fn certificate_rsa_key(der: &[u8]) -> Result<Vec<u8>, String> {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let bad = || "not an X.509 certificate".to_owned();
    let (_, cert, _) = der_tlv(der)
        .filter(|(t, _, _)| *t == 0x30)
        .ok_or_else(bad)?;
    let (_, mut tbs, _) = der_tlv(cert)
        .filter(|(t, _, _)| *t == 0x30)
        .ok_or_else(bad)?;
    // [0] version (optional), serialNumber, signature, issuer, validity, subject, then SPKI.
    let (tag, _, rest) = der_tlv(tbs).ok_or_else(bad)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..5 {
        tbs = der_tlv(tbs).ok_or_else(bad)?.2;
    }
    let (_, spki, _) = der_tlv(tbs)
        .filter(|(t, _, _)| *t == 0x30)
        .ok_or_else(bad)?;
    let (_, alg, rest) = der_tlv(spki).ok_or_else(bad)?;
    let (_, oid, _) = der_tlv(alg).ok_or_else(bad)?;
    if oid != RSA_ENCRYPTION {
        return Err("the certificate's key is not an RSA key".into());
    }
    let (tag, bits, _) = der_tlv(rest).ok_or_else(bad)?;
    match bits.split_first() {
        Some((0, key)) if tag == 0x03 => Ok(key.to_vec()),
        _ => Err(bad()),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ===== State ==================================================================================

struct RegisteredCert {
    sha256: String,
    sha1: String,
    key: DecodingKey,
}

impl RegisteredCert {
    fn from_pem(pem: &str) -> Result<RegisteredCert, String> {
        let der = pem_der(pem, "CERTIFICATE").ok_or("not a CERTIFICATE PEM")?;
        let key = certificate_rsa_key(&der)?;
        Ok(RegisteredCert {
            sha256: thumbprint(&der, Thumbprint::Sha256),
            sha1: thumbprint(&der, Thumbprint::Sha1),
            key: DecodingKey::from_rsa_der(&key),
        })
    }
}

struct App {
    secrets: Vec<String>,
    certs: Vec<RegisteredCert>,
    roles: Vec<String>,
}

impl App {
    fn new() -> App {
        App {
            secrets: Vec::new(),
            certs: Vec::new(),
            roles: DEFAULT_PERMISSIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

struct TokenRec {
    roles: Vec<String>,
    expires_at: i64,
}

struct UserRec {
    /// Set properties only (never `null`), without `id`.
    props: Map<String, Value>,
    /// Properties that have ever had a value (delta returns `null` for these once cleared and
    /// omits the others, B4).
    ever_set: BTreeSet<String>,
    manager: Option<String>,
    /// Soft-deleted (in the deleted-items container).
    deleted: bool,
}

struct GroupRec {
    props: Map<String, Value>,
    /// User members.
    members: BTreeSet<String>,
    /// Group members (nested groups): the ids of the groups that are members of this one.
    groups: BTreeSet<String>,
}

/// One directory change; its generation is its index in `Inner::changes` plus one.
enum Change {
    UserCreated(String),
    UserProps(String, Vec<String>),
    UserManager {
        id: String,
        before: Option<String>,
    },
    UserSoftDeleted(String),
    UserRestored(String),
    UserHardDeleted(String),
    GroupCreated(String),
    GroupProps(String, Vec<String>),
    GroupDeleted(String),
    GroupMember {
        group: String,
        user: String,
        added: bool,
    },
    /// A group added to (or removed from) the members of another group.
    GroupNested {
        group: String,
        child: String,
        added: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Entity {
    #[serde(rename = "u")]
    User,
    #[serde(rename = "g")]
    Group,
}

impl Entity {
    fn set(self) -> &'static str {
        match self {
            Entity::User => "users",
            Entity::Group => "groups",
        }
    }

    fn type_name(self) -> &'static str {
        match self {
            Entity::User => "microsoft.graph.user",
            Entity::Group => "microsoft.graph.group",
        }
    }
}

/// What a delta query asked for; encoded into its tokens (B4: "Query params must be in the
/// initial request; they're encoded into the tokens").
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DeltaQuery {
    /// The `$select` list (canonical names, navigation properties included), or none.
    select: Option<Vec<String>>,
    /// `$filter=id eq '…' or …`.
    ids: Option<BTreeSet<String>>,
}

/// A `$skiptoken` / `$deltatoken` of a delta query, base64url-encoded JSON.
#[derive(Serialize, Deserialize)]
struct StateToken {
    s: String,
    e: u64,
    k: Entity,
    q: DeltaQuery,
    /// deltatoken: the generation the next round starts after.
    g: Option<u64>,
    /// skiptoken: the round and the page.
    r: Option<u64>,
    p: Option<usize>,
    /// A nonce: every deltaLink is a new one, even for an empty round.
    n: u32,
}

/// The properties of one delta query.
struct Sel {
    props: Vec<String>,
    manager: bool,
    members: bool,
}

impl Sel {
    fn of(entity: Entity, select: Option<&[String]>) -> Sel {
        match select {
            None => Sel {
                props: match entity {
                    Entity::User => DEFAULT_USER_PROPERTIES,
                    Entity::Group => KNOWN_GROUP_PROPERTIES,
                }
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
                manager: false,
                members: false,
            },
            Some(list) => Sel {
                props: list
                    .iter()
                    .filter(|p| *p != "manager" && *p != "members" && *p != "id")
                    .cloned()
                    .collect(),
                manager: list.iter().any(|p| p == "manager"),
                members: list.iter().any(|p| p == "members"),
            },
        }
    }
}

/// One item of a delta round's page.
#[derive(Clone)]
enum RoundItem {
    /// Computed when the round started (changes).
    Ready(Value),
    /// A user of an initial round, rendered in its current state when its page is served (so
    /// that a round over a large directory costs its ids, not its JSON).
    User(String),
}

/// A delta round's pages, computed when the round starts.
struct Round {
    entity: Entity,
    query: DeltaQuery,
    pages: Vec<Vec<RoundItem>>,
    /// The generation the round covers up to (its deltaLink's).
    until: u64,
}

#[derive(Clone, Debug)]
enum FaultKind {
    Fail(u16),
    /// Answer this status with the request quoted back (headers and body).
    Echo(u16),
    Throttle(String),
    Unavailable(String),
    Delay(Duration),
    Truncate,
    Abort,
}

impl FaultKind {
    /// Whether the fault replaces the request's handling (vs. altering a 200 afterwards).
    fn before(&self) -> bool {
        !matches!(self, FaultKind::Truncate | FaultKind::Abort)
    }
}

struct Fault {
    prefix: String,
    kind: FaultKind,
    times: usize,
}

struct Inner {
    origin: String,
    tenant: String,
    salt: String,
    apps: HashMap<String, App>,
    tokens: HashMap<String, TokenRec>,
    tokens_issued: usize,
    users: BTreeMap<String, UserRec>,
    hard_deleted: BTreeSet<String>,
    groups: BTreeMap<String, GroupRec>,
    /// Properties users were given that are not in [`KNOWN_USER_PROPERTIES`].
    custom_props: BTreeSet<String>,
    changes: Vec<Change>,
    epoch: u64,
    expiry_mode: ExpiryMode,
    rounds: BTreeMap<u64, Round>,
    next_round: u64,
    page_size: usize,
    replay: bool,
    /// A manager change lists the old manager's `@removed` entry after the new manager.
    old_manager_last: bool,
    last_sent: HashMap<Entity, String>,
    faults: Vec<Fault>,
    requests: Vec<RecordedRequest>,
    /// The current request's `request-id` and `client-request-id`.
    request_id: String,
    client_request_id: String,
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
            headers: vec![("content-type".into(), ODATA_JSON.into())],
            body: serde_json::to_vec(value).expect("serialize"),
        }
    }

    fn empty(status: u16) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Resp {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

type Params = Vec<(String, String)>;

/// A query option by name, case-insensitively (`$select`, `$deltaToken`, …).
fn echo_response(status: u16, login: bool, quoted: &str) -> Resp {
    if status >= 500 {
        return Resp {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: format!("upstream failed for the request:\n{quoted}").into_bytes(),
        };
    }
    let body = if login {
        json!({
            "error": "invalid_client",
            "error_description": format!("AADSTS7000215: Invalid request: {quoted}"),
            "error_codes": [7000215],
        })
    } else {
        json!({"error": {
            "code": "InvalidAuthenticationToken",
            "message": format!("Invalid request: {quoted}"),
        }})
    };
    Resp::json(status, &body)
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The API routes (under `/v1.0`).
enum Route {
    UsersDelta,
    GroupsDelta,
    ListUsers,
    GetUser(String),
    PatchUser(String),
    Manager(String),
    MemberOf(String),
    TransitiveMemberOf(String),
    ListGroups,
    GetGroup(String),
    Members(String),
}

impl Route {
    /// The application permissions that allow the call (any one of them).
    fn permissions(&self) -> &'static [&'static str] {
        const READ_USERS: &[&str] = &[
            "User.Read.All",
            "User.ReadWrite.All",
            "Directory.Read.All",
            "Directory.ReadWrite.All",
        ];
        const READ_GROUPS: &[&str] = &[
            "GroupMember.Read.All",
            "Group.Read.All",
            "Group.ReadWrite.All",
            "Directory.Read.All",
            "Directory.ReadWrite.All",
        ];
        match self {
            Route::UsersDelta | Route::ListUsers | Route::GetUser(_) | Route::Manager(_) => {
                READ_USERS
            }
            Route::PatchUser(_) => &["User.ReadWrite.All", "Directory.ReadWrite.All"],
            Route::MemberOf(_)
            | Route::TransitiveMemberOf(_)
            | Route::GroupsDelta
            | Route::ListGroups
            | Route::GetGroup(_)
            | Route::Members(_) => READ_GROUPS,
        }
    }
}

impl Inner {
    fn new(origin: String, tenant: String) -> Inner {
        Inner {
            origin,
            tenant,
            salt: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 6]>()),
            apps: HashMap::new(),
            tokens: HashMap::new(),
            tokens_issued: 0,
            users: BTreeMap::new(),
            hard_deleted: BTreeSet::new(),
            groups: BTreeMap::new(),
            custom_props: BTreeSet::new(),
            changes: Vec::new(),
            epoch: 0,
            expiry_mode: ExpiryMode::BadRequest400,
            rounds: BTreeMap::new(),
            next_round: 0,
            page_size: DEFAULT_PAGE_SIZE,
            replay: false,
            old_manager_last: false,
            last_sent: HashMap::new(),
            faults: Vec::new(),
            requests: Vec::new(),
            request_id: String::new(),
            client_request_id: String::new(),
        }
    }

    fn record(&mut self, change: Change) {
        self.changes.push(change);
    }

    fn generation(&self) -> u64 {
        self.changes.len() as u64
    }

    fn learn_property(&mut self, name: &str) {
        if self.canonical_property(Entity::User, name).is_none() {
            self.custom_props.insert(name.to_owned());
        }
    }

    /// Merges an update into a user and records the properties whose value changed.
    fn apply_user_update(&mut self, id: &str, changed: Map<String, Value>) {
        let user = self.users.get_mut(id).expect("checked");
        let mut touched = Vec::new();
        for (key, value) in changed {
            let before = user.props.get(&key).cloned().unwrap_or(Value::Null);
            let after = if key == "onPremisesExtensionAttributes" {
                let mut merged = before.as_object().cloned().unwrap_or_default();
                if let Value::Object(patch) = &value {
                    for (k, v) in patch {
                        if v.is_null() {
                            merged.remove(k);
                        } else {
                            merged.insert(k.clone(), v.clone());
                        }
                    }
                }
                if merged.is_empty() {
                    Value::Null
                } else {
                    Value::Object(merged)
                }
            } else {
                value
            };
            if before == after {
                continue;
            }
            if after.is_null() {
                user.props.remove(&key);
            } else {
                user.props.insert(key.clone(), after);
                user.ever_set.insert(key.clone());
            }
            touched.push(key);
        }
        if !touched.is_empty() {
            self.record(Change::UserProps(id.to_owned(), touched));
        }
    }

    fn mint_token(&mut self, client_id: &str, roles: Vec<String>) -> String {
        let now = unix_now();
        let header = json!({ "typ": "JWT", "alg": "RS256", "kid": "fake-graph-key" });
        let payload = json!({
            "aud": "https://graph.microsoft.com",
            "iss": format!("https://sts.windows.net/{}/", self.tenant),
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME_SECS,
            "appid": client_id,
            "roles": roles,
            "tid": self.tenant,
            "uti": uuid(),
            "ver": "1.0",
        });
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()),
        );
        self.tokens.insert(
            token.clone(),
            TokenRec {
                roles,
                expires_at: now + TOKEN_LIFETIME_SECS,
            },
        );
        token
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
        self.request_id = uuid();
        self.client_request_id = headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| self.request_id.clone());
        let login = !path.starts_with("/v1.0/") && path.ends_with("/oauth2/v2.0/token");
        let mut delay = None;
        let mut fault_resp = None;
        match self.take_fault(&path, true) {
            Some(FaultKind::Delay(d)) => delay = Some(d),
            Some(FaultKind::Echo(status)) => {
                let quoted = super::quote::quote_request(method.as_str(), uri, headers, body);
                fault_resp = Some(echo_response(status, login, &quoted));
            }
            Some(kind) => fault_resp = Some(self.fault_response(&kind, login)),
            None => {}
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
        resp = resp.header("date", httpdate::fmt_http_date(SystemTime::now()));
        if login {
            resp = resp
                .header("x-ms-request-id", self.request_id.clone())
                .header("cache-control", "no-store, no-cache")
                .header("pragma", "no-cache");
        } else {
            let diagnostic = json!({ "ServerInfo": {
                "DataCenter": "Fake Region", "Slice": "E", "Ring": "5",
                "ScaleUnit": "000", "RoleInstance": "FAKEGRAPH01",
            }});
            resp = resp
                .header("request-id", self.request_id.clone())
                .header("client-request-id", self.client_request_id.clone())
                .header("x-ms-ags-diagnostic", diagnostic.to_string())
                .header("cache-control", "no-cache");
            if !resp.body.is_empty() {
                resp = resp.header("odata-version", "4.0");
            }
        }
        Outcome { resp, delay, cut }
    }

    fn take_fault(&mut self, path: &str, before: bool) -> Option<FaultKind> {
        let i = self.faults.iter().position(|f| {
            f.times > 0 && f.kind.before() == before && path.starts_with(&f.prefix)
        })?;
        let kind = self.faults[i].kind.clone();
        self.faults[i].times -= 1;
        if self.faults[i].times == 0 {
            self.faults.remove(i);
        }
        Some(kind)
    }

    fn fault_response(&mut self, kind: &FaultKind, login: bool) -> Resp {
        if login {
            let (status, retry_after) = match kind {
                FaultKind::Fail(status) => (*status, None),
                FaultKind::Throttle(after) => (429, Some(after.clone())),
                FaultKind::Unavailable(after) => (503, Some(after.clone())),
                _ => unreachable!("only faults that replace the response"),
            };
            let (error, code, text) = if status >= 500 || status == 429 {
                (
                    "temporarily_unavailable",
                    90033,
                    "A transient error has occurred. Please try again.",
                )
            } else {
                (
                    "invalid_request",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                )
            };
            let mut resp = aad_error(status, error, code, text);
            if let Some(after) = retry_after {
                resp = resp.header("retry-after", after);
            }
            return resp;
        }
        match kind {
            FaultKind::Throttle(after) => {
                let mut body = self.error_body("TooManyRequests", "Please retry again later.");
                let inner = &mut body["error"]["innerError"];
                inner["code"] = json!("429");
                inner["message"] = json!("Please retry after");
                inner["status"] = json!("429");
                Resp::json(429, &body)
                    .header("retry-after", after.clone())
                    .header(
                        "x-ms-throttle-scope",
                        format!("Tenant_Application/ReadWrite/fake-app/{}", self.tenant),
                    )
                    .header("x-ms-throttle-information", "ResourceUnitLimitExceeded")
            }
            FaultKind::Unavailable(after) => self
                .error(
                    503,
                    "serviceNotAvailable",
                    "The service is temporarily unavailable. Please retry later.",
                )
                .header("retry-after", after.clone()),
            FaultKind::Fail(status) => {
                let (code, message) = match status {
                    400 => ("BadRequest", "Bad request (injected)."),
                    401 => (
                        "InvalidAuthenticationToken",
                        "Access token validation failure.",
                    ),
                    403 => (
                        "Authorization_RequestDenied",
                        "Insufficient privileges to complete the operation.",
                    ),
                    404 => ("Request_ResourceNotFound", "Resource not found (injected)."),
                    429 => ("TooManyRequests", "Please retry again later."),
                    500 => ("InternalServerError", "General exception while processing."),
                    502 => ("BadGateway", "Bad Gateway."),
                    503 => (
                        "serviceNotAvailable",
                        "The service is temporarily unavailable. Please retry later.",
                    ),
                    504 => ("GatewayTimeout", "Gateway Timeout."),
                    _ => ("UnknownError", "Injected failure."),
                };
                self.error(*status, code, message)
            }
            FaultKind::Delay(_) | FaultKind::Truncate | FaultKind::Abort | FaultKind::Echo(_) => {
                unreachable!("not a replacing fault, or answered where the request is known")
            }
        }
    }

    // ----- Graph errors (B10) -----------------------------------------------------------------

    fn error_body(&self, code: &str, message: &str) -> Value {
        json!({
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                    "request-id": self.request_id,
                    "client-request-id": self.client_request_id,
                },
            }
        })
    }

    fn error(&self, status: u16, code: &str, message: &str) -> Resp {
        Resp::json(status, &self.error_body(code, message))
    }

    fn not_found(&self, what: &str) -> Resp {
        self.error(
            404,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{what}' does not exist or one of its queried reference-property objects are not present."
            ),
        )
    }

    fn unsupported(&self, message: &str) -> Resp {
        self.error(400, "Request_UnsupportedQuery", message)
    }

    fn bad_request(&self, message: &str) -> Resp {
        self.error(400, "Request_BadRequest", message)
    }

    fn no_property(&self, entity: Entity, name: &str) -> Resp {
        self.error(
            400,
            "BadRequest",
            &format!(
                "Parsing OData Select and Expand failed: Could not find a property named '{name}' on type '{}'.",
                entity.type_name()
            ),
        )
    }

    // ----- Routing --------------------------------------------------------------------------

    fn dispatch(
        &mut self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Resp {
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        if let [tenant, "oauth2", "v2.0", "token"] = segments.as_slice() {
            return self.token_endpoint(tenant, method, headers, body);
        }
        let Some(("v1.0", rest)) = segments.split_first().map(|(a, b)| (*a, b)) else {
            return self.error(
                404,
                "UnknownError",
                "The requested path was not found (fake Graph serves /v1.0 and /{tenant}/oauth2/v2.0/token).",
            );
        };
        let get = method == Method::GET;
        let patch = method == Method::PATCH;
        let route = match rest {
            ["users", "delta"] if get => Route::UsersDelta,
            ["groups", "delta"] if get => Route::GroupsDelta,
            ["users"] if get => Route::ListUsers,
            ["users", id] if get => Route::GetUser((*id).to_owned()),
            ["users", id] if patch => Route::PatchUser((*id).to_owned()),
            ["users", id, "manager"] if get => Route::Manager((*id).to_owned()),
            ["users", id, "memberOf"] if get => Route::MemberOf((*id).to_owned()),
            ["users", id, "transitiveMemberOf"] if get => {
                Route::TransitiveMemberOf((*id).to_owned())
            }
            ["groups"] if get => Route::ListGroups,
            ["groups", id] if get => Route::GetGroup((*id).to_owned()),
            ["groups", id, "members"] if get => Route::Members((*id).to_owned()),
            ["users" | "groups"]
            | ["users" | "groups", _]
            | ["users", _, "manager" | "memberOf" | "transitiveMemberOf"]
            | ["groups", _, "members"] => {
                return self.error(
                    405,
                    "Request_BadRequest",
                    "Specified HTTP method is not allowed for the request target.",
                );
            }
            ["$batch"] => {
                return self.error(
                    501,
                    "NotImplemented",
                    "JSON batching ($batch, B9) is not implemented by the fake Graph.",
                );
            }
            [] => return self.error(400, "BadRequest", "Invalid request."),
            [.., last] => {
                return self.error(
                    400,
                    "BadRequest",
                    &format!("Resource not found for the segment '{last}'."),
                );
            }
        };
        if let Err(resp) = self.authorize(headers, route.permissions()) {
            return resp;
        }
        let params = parse_query(query);
        let result = match route {
            Route::UsersDelta => self.delta(Entity::User, &params, headers),
            Route::GroupsDelta => self.delta(Entity::Group, &params, headers),
            Route::ListUsers => self.list_users(&params, headers),
            Route::GetUser(key) => self.get_user(&key, &params),
            Route::PatchUser(key) => self.patch_user(&key, body),
            Route::Manager(key) => self.get_manager(&key, &params),
            Route::MemberOf(key) => self.member_of(&key, &params, false),
            Route::TransitiveMemberOf(key) => self.member_of(&key, &params, true),
            Route::ListGroups => self.list_groups(&params, headers),
            Route::GetGroup(id) => self.get_group(&id, &params),
            Route::Members(id) => self.group_members(&id, &params),
        };
        result.unwrap_or_else(|resp| resp)
    }

    /// `Authorization: Bearer <token>` (B7): a token of the token endpoint, not expired, with one
    /// of the permissions the route needs.
    fn authorize(&self, headers: &HeaderMap, permissions: &[&str]) -> Result<(), Resp> {
        let challenge = format!(
            "Bearer realm=\"\", authorization_uri=\"{}/common/oauth2/authorize\", client_id=\"{GRAPH_APP_ID}\"",
            self.origin
        );
        let unauthorized = |message: &str| {
            self.error(401, "InvalidAuthenticationToken", message)
                .header("www-authenticate", challenge.clone())
        };
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let token = match authorization.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(unauthorized("Access token is empty.")),
        };
        if token.is_empty() {
            return Err(unauthorized("Access token is empty."));
        }
        if !token.contains('.') {
            return Err(unauthorized(
                "IDX14100: JWT is not well formed, there are no dots (.).",
            ));
        }
        let Some(rec) = self.tokens.get(token) else {
            return Err(unauthorized("Access token validation failure."));
        };
        if rec.expires_at <= unix_now() {
            return Err(unauthorized(
                "Lifetime validation failed, the token is expired.",
            ));
        }
        if !rec.roles.iter().any(|r| permissions.contains(&r.as_str())) {
            return Err(self.error(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ));
        }
        Ok(())
    }

    // ----- Token endpoint (B7) ----------------------------------------------------------------

    fn token_endpoint(
        &mut self,
        tenant: &str,
        method: &Method,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Resp {
        if method != Method::POST {
            return aad_error(
                400,
                "invalid_request",
                900561,
                &format!(
                    "The endpoint only accepts POST, OPTIONS requests. Received a {method} request."
                ),
            );
        }
        if tenant != self.tenant {
            return aad_error(
                400,
                "invalid_request",
                90002,
                &format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
                ),
            );
        }
        let form_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        let form: Params = if form_type {
            url::form_urlencoded::parse(body).into_owned().collect()
        } else {
            Vec::new()
        };
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let missing = |name: &str| {
            aad_error(
                400,
                "invalid_request",
                900144,
                &format!("The request body must contain the following parameter: '{name}'."),
            )
        };
        let Some(grant_type) = field("grant_type") else {
            return missing("grant_type");
        };
        if grant_type != "client_credentials" {
            return aad_error(
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{grant_type}'."),
            );
        }
        // HTTP Basic: client_id:client_secret, each form-encoded (RFC 6749 §2.3.1).
        let basic = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| STANDARD.decode(b.trim()).ok())
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| {
                let (id, secret) = pair.split_once(':')?;
                Some((form_decode(id), form_decode(secret)))
            });
        let client_id = match (&basic, field("client_id")) {
            (Some((id, _)), _) => id.clone(),
            (None, Some(id)) => id.to_owned(),
            (None, None) => return missing("client_id"),
        };
        let secret = basic
            .as_ref()
            .map(|(_, s)| s.clone())
            .or_else(|| field("client_secret").map(str::to_owned));
        let Some(scope) = field("scope") else {
            return missing("scope");
        };
        let Some(app) = self.apps.get(&client_id) else {
            return aad_error(
                400,
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                    self.tenant
                ),
            );
        };
        let assertion = field("client_assertion");
        match (secret, assertion) {
            (Some(_), Some(_)) => {
                return aad_error(
                    400,
                    "invalid_request",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                );
            }
            (None, None) => {
                return aad_error(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                );
            }
            (Some(secret), None) => {
                if !app.secrets.contains(&secret) {
                    return aad_error(
                        401,
                        "invalid_client",
                        7000215,
                        &format!(
                            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                        ),
                    );
                }
            }
            (None, Some(assertion)) => {
                match field("client_assertion_type") {
                    Some(JWT_BEARER) => {}
                    Some(_) => {
                        return aad_error(
                            400,
                            "invalid_request",
                            9002313,
                            "Invalid request. Request is malformed or invalid. (client_assertion_type)",
                        );
                    }
                    None => return missing("client_assertion_type"),
                }
                let token_url = format!("{}/{}/oauth2/v2.0/token", self.origin, self.tenant);
                if let Err((code, text)) = check_assertion(app, &client_id, assertion, &token_url) {
                    return aad_error(401, "invalid_client", code, &text);
                }
            }
        }
        let expected = format!("{}/.default", self.origin);
        if scope.split_whitespace().collect::<Vec<_>>() != [expected.as_str()] {
            return aad_error(
                400,
                "invalid_scope",
                70011,
                &format!(
                    "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                ),
            );
        }
        let roles = app.roles.clone();
        let access_token = self.mint_token(&client_id, roles);
        self.tokens_issued += 1;
        let mut resp = Resp::json(
            200,
            &json!({
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME_SECS,
                "ext_expires_in": TOKEN_LIFETIME_SECS,
                "access_token": access_token,
            }),
        );
        resp.headers[0].1 = "application/json; charset=utf-8".into();
        resp
    }

    // ----- Users --------------------------------------------------------------------------

    /// The canonical name of a property `$select`/`$filter` may use, or `None`.
    fn canonical_property(&self, entity: Entity, name: &str) -> Option<String> {
        if name.eq_ignore_ascii_case("id") {
            return Some("id".into());
        }
        let known = match entity {
            Entity::User => KNOWN_USER_PROPERTIES,
            Entity::Group => KNOWN_GROUP_PROPERTIES,
        };
        if let Some(k) = known.iter().find(|k| k.eq_ignore_ascii_case(name)) {
            return Some((*k).to_owned());
        }
        if entity == Entity::User {
            if is_extension_name(name) {
                return Some(name.to_owned());
            }
            if let Some(k) = self
                .custom_props
                .iter()
                .find(|k| k.eq_ignore_ascii_case(name))
            {
                return Some(k.clone());
            }
        }
        None
    }

    /// `$select` as canonical names; `navigation` lists the navigation properties allowed (B4:
    /// `manager` and `members` in delta queries only).
    fn parse_select(
        &self,
        params: &Params,
        entity: Entity,
        navigation: &[&str],
    ) -> Result<Option<Vec<String>>, Resp> {
        let Some(raw) = param(params, "$select").filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let mut out: Vec<String> = Vec::new();
        for name in raw.split(',').map(str::trim) {
            let canonical = match navigation.iter().find(|n| n.eq_ignore_ascii_case(name)) {
                Some(n) => (*n).to_owned(),
                None => self
                    .canonical_property(entity, name)
                    .ok_or_else(|| self.no_property(entity, name))?,
            };
            if !out.contains(&canonical) {
                out.push(canonical);
            }
        }
        Ok(Some(out))
    }

    /// `$expand=manager` or `manager($select=…)` on users: `Some(select)` when asked.
    fn parse_expand(&self, params: &Params) -> Result<Option<Option<Vec<String>>>, Resp> {
        let Some(raw) = param(params, "$expand")
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        let (name, options) = match raw.split_once('(') {
            Some((name, rest)) => (name.trim(), Some(rest.trim_end_matches(')'))),
            None => (raw, None),
        };
        if !name.eq_ignore_ascii_case("manager") {
            return Err(self.no_property(Entity::User, name));
        }
        let select = match options {
            None => None,
            Some(options) => {
                let nested: Params = options
                    .split(';')
                    .filter_map(|o| o.split_once('='))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                if let Some((k, _)) = nested
                    .iter()
                    .find(|(k, _)| !k.eq_ignore_ascii_case("$select"))
                {
                    return Err(self.unsupported(&format!(
                        "The query option '{k}' is not supported in $expand by the fake Graph."
                    )));
                }
                self.parse_select(&nested, Entity::User, &[])?
            }
        };
        Ok(Some(select))
    }

    /// `$top`: 1..=999 (B2), else the server's page size.
    fn parse_top(&self, params: &Params) -> Result<usize, Resp> {
        match param(params, "$top") {
            None => Ok(self.page_size),
            Some(raw) => match raw.trim().parse::<i64>() {
                Ok(n) if (1..=999).contains(&n) => Ok(n as usize),
                _ => Err(self.unsupported(&format!(
                    "Invalid page size specified: '{raw}'. Must be between 1 and 999 inclusive."
                ))),
            },
        }
    }

    /// Whether the request is an advanced query (B2: `ConsistencyLevel: eventual` and
    /// `$count=true`).
    fn advanced(params: &Params, headers: &HeaderMap) -> bool {
        let eventual = headers
            .get("consistencylevel")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("eventual"));
        eventual && param(params, "$count").is_some_and(|c| c.eq_ignore_ascii_case("true"))
    }

    fn parse_filter(
        &self,
        params: &Params,
        headers: &HeaderMap,
        entity: Entity,
    ) -> Result<Option<FExpr>, Resp> {
        let Some(raw) = param(params, "$filter").filter(|s| !s.trim().is_empty()) else {
            return Ok(None);
        };
        let expr = parse_filter_text(raw).map_err(|why| {
            self.error(400, "BadRequest", &format!("Invalid filter clause: {why}"))
        })?;
        let mut attrs = Vec::new();
        expr.attributes(&mut attrs);
        for attr in attrs {
            if self.canonical_property(entity, &attr).is_none() {
                return Err(self.no_property(entity, &attr));
            }
        }
        if let Some(op) = expr.advanced_operator()
            && !Inner::advanced(params, headers)
        {
            return Err(self.unsupported(&format!(
                "Operator '{op}' is not supported because the required parameters might be missing. Try adding $count=true query parameter and ConsistencyLevel:eventual header. Refer to https://aka.ms/graph-docs/advanced-queries for more information"
            )));
        }
        Ok(Some(expr))
    }

    fn refuse_unsupported_options(&self, params: &Params, options: &[&str]) -> Result<(), Resp> {
        for option in options {
            if param(params, option).is_some() {
                return Err(self.unsupported(&format!(
                    "The query option '{option}' is not supported here (fake Graph)."
                )));
            }
        }
        Ok(())
    }

    /// A user by id or by `userPrincipalName` (case-insensitive); soft-deleted users are not
    /// found.
    fn find_user(&self, key: &str) -> Option<String> {
        if let Some(u) = self.users.get(key) {
            return (!u.deleted).then(|| key.to_owned());
        }
        let key = key.to_lowercase();
        self.users
            .iter()
            .find(|(_, u)| {
                !u.deleted
                    && u.props
                        .get("userPrincipalName")
                        .and_then(Value::as_str)
                        .is_some_and(|upn| upn.to_lowercase() == key)
            })
            .map(|(id, _)| id.clone())
    }

    fn active_user(&self, id: &str) -> Option<&UserRec> {
        self.users.get(id).filter(|u| !u.deleted)
    }

    /// A user as a read (not delta) returns it: the selected (or default) properties, `null`
    /// when unset (`[]` for collections; unset directory extensions omitted), all 15
    /// `extensionAttributeN` of `onPremisesExtensionAttributes`.
    fn user_read_json(
        &self,
        id: &str,
        u: &UserRec,
        select: Option<&[String]>,
    ) -> Map<String, Value> {
        let mut out = Map::new();
        let defaults: Vec<String>;
        let props: &[String] = match select {
            Some(list) => list,
            None => {
                defaults = DEFAULT_USER_PROPERTIES
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect();
                &defaults
            }
        };
        out.insert("id".into(), json!(id));
        for p in props {
            if p == "id" {
                continue;
            }
            match u.props.get(p) {
                Some(v) => {
                    out.insert(p.clone(), full_property(p, v));
                }
                None if is_extension_name(p) => {}
                None if COLLECTION_PROPERTIES.contains(&p.as_str()) => {
                    out.insert(p.clone(), json!([]));
                }
                None if p == "onPremisesExtensionAttributes" => {
                    out.insert(p.clone(), full_property(p, &Value::Null));
                }
                None => {
                    out.insert(p.clone(), Value::Null);
                }
            }
        }
        out
    }

    fn user_with_expand(
        &self,
        id: &str,
        u: &UserRec,
        select: Option<&[String]>,
        expand: Option<&Option<Vec<String>>>,
    ) -> Map<String, Value> {
        let mut out = self.user_read_json(id, u, select);
        if let Some(manager_select) = expand
            && let Some(mid) = &u.manager
            && let Some(m) = self.active_user(mid)
        {
            let mut manager = Map::new();
            manager.insert("@odata.type".into(), json!(USER_TYPE));
            manager.extend(self.user_read_json(mid, m, manager_select.as_deref()));
            out.insert("manager".into(), Value::Object(manager));
        }
        out
    }

    fn context(&self, entity: Entity, select: Option<&[String]>, suffix: &str) -> String {
        match select {
            Some(list) => format!(
                "{}/v1.0/$metadata#{}({}){suffix}",
                self.origin,
                entity.set(),
                list.join(",")
            ),
            None => format!("{}/v1.0/$metadata#{}{suffix}", self.origin, entity.set()),
        }
    }

    fn list_users(&mut self, params: &Params, headers: &HeaderMap) -> Result<Resp, Resp> {
        self.refuse_unsupported_options(params, &["$orderby", "$search", "$skip"])?;
        let select = self.parse_select(params, Entity::User, &[])?;
        let expand = self.parse_expand(params)?;
        let top = self.parse_top(params)?;
        let filter = self.parse_filter(params, headers, Entity::User)?;
        let after = self.list_cursor(params)?;
        let matches = |id: &String, u: &UserRec| {
            !u.deleted
                && filter
                    .as_ref()
                    .is_none_or(|f| f.eval(&|attr| user_attr(id, u, attr)))
        };
        let count = (after.is_none() && Inner::advanced(params, headers))
            .then(|| self.users.iter().filter(|(id, u)| matches(id, u)).count());
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page: Vec<(&String, &UserRec)> = self
            .users
            .range::<String, _>((lower, Bound::Unbounded))
            .filter(|(id, u)| matches(id, u))
            .take(top + 1)
            .collect();
        let more = page.len() > top;
        page.truncate(top);
        let items: Vec<Value> = page
            .iter()
            .map(|(id, u)| {
                Value::Object(self.user_with_expand(id, u, select.as_deref(), expand.as_ref()))
            })
            .collect();
        let next = more.then(|| self.next_list_link("/v1.0/users", params, page[top - 1].0));
        Ok(self.collection(
            self.context(Entity::User, select.as_deref(), ""),
            items,
            next,
            count,
        ))
    }

    fn get_user(&mut self, key: &str, params: &Params) -> Result<Resp, Resp> {
        let select = self.parse_select(params, Entity::User, &[])?;
        let expand = self.parse_expand(params)?;
        let id = self.find_user(key).ok_or_else(|| self.not_found(key))?;
        let mut out = Map::new();
        out.insert(
            "@odata.context".into(),
            json!(self.context(Entity::User, select.as_deref(), "/$entity")),
        );
        out.extend(self.user_with_expand(
            &id,
            &self.users[&id],
            select.as_deref(),
            expand.as_ref(),
        ));
        Ok(Resp::json(200, &Value::Object(out)))
    }

    fn get_manager(&mut self, key: &str, params: &Params) -> Result<Resp, Resp> {
        let select = self.parse_select(params, Entity::User, &[])?;
        let id = self.find_user(key).ok_or_else(|| self.not_found(key))?;
        let manager = self.users[&id]
            .manager
            .clone()
            .filter(|m| self.active_user(m).is_some())
            .ok_or_else(|| self.not_found("manager"))?;
        let mut out = Map::new();
        out.insert(
            "@odata.context".into(),
            json!(format!(
                "{}/v1.0/$metadata#directoryObjects/$entity",
                self.origin
            )),
        );
        out.insert("@odata.type".into(), json!(USER_TYPE));
        out.extend(self.user_read_json(&manager, &self.users[&manager], select.as_deref()));
        Ok(Resp::json(200, &Value::Object(out)))
    }

    /// `/users/{id}/memberOf` (the groups the user is a direct member of: "This operation isn't
    /// transitive", B5) or, with `transitive`, `/users/{id}/transitiveMemberOf` (also the groups
    /// those groups are members of, through any chain; cycles end).
    fn member_of(&mut self, key: &str, params: &Params, transitive: bool) -> Result<Resp, Resp> {
        self.refuse_unsupported_options(params, &["$orderby", "$search", "$filter", "$skip"])?;
        let select = self.parse_select(params, Entity::Group, &[])?;
        let top = self.parse_top(params)?;
        let after = self.list_cursor(params)?;
        let id = self.find_user(key).ok_or_else(|| self.not_found(key))?;
        let groups = if transitive {
            self.transitive_groups(&id)
        } else {
            self.direct_groups(&id)
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page: Vec<(&String, &GroupRec)> = groups
            .range::<String, _>((lower, Bound::Unbounded))
            .filter_map(|gid| self.groups.get_key_value(gid))
            .take(top + 1)
            .collect();
        let more = page.len() > top;
        page.truncate(top);
        let items: Vec<Value> = page
            .iter()
            .map(|(gid, g)| {
                let mut item = Map::new();
                item.insert("@odata.type".into(), json!(GROUP_TYPE));
                item.extend(group_read_json(gid, g, select.as_deref()));
                Value::Object(item)
            })
            .collect();
        let segment = if transitive {
            "transitiveMemberOf"
        } else {
            "memberOf"
        };
        let next = more.then(|| {
            self.next_list_link(
                &format!("/v1.0/users/{key}/{segment}"),
                params,
                page[top - 1].0,
            )
        });
        let context = format!("{}/v1.0/$metadata#directoryObjects", self.origin);
        Ok(self.collection(context, items, next, None))
    }

    /// The groups the user is a direct member of.
    fn direct_groups(&self, user_id: &str) -> BTreeSet<String> {
        self.groups
            .iter()
            .filter(|(_, g)| g.members.contains(user_id))
            .map(|(gid, _)| gid.clone())
            .collect()
    }

    /// The groups the user is in directly or through any chain of nested groups; a cycle ends
    /// because a group is visited once.
    fn transitive_groups(&self, user_id: &str) -> BTreeSet<String> {
        let mut found = self.direct_groups(user_id);
        let mut queue: Vec<String> = found.iter().cloned().collect();
        while let Some(child) = queue.pop() {
            for (gid, g) in &self.groups {
                if g.groups.contains(&child) && found.insert(gid.clone()) {
                    queue.push(gid.clone());
                }
            }
        }
        found
    }

    // ----- Write-back (B6) --------------------------------------------------------------------

    fn patch_user(&mut self, key: &str, body: &[u8]) -> Result<Resp, Resp> {
        let id = self.find_user(key).ok_or_else(|| self.not_found(key))?;
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
            return Err(self.error(
                400,
                "BadRequest",
                "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
            ));
        };
        let synced = self.users[&id]
            .props
            .get("onPremisesSyncEnabled")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let invalid_value = |p: &str| {
            self.bad_request(&format!(
                "Invalid value specified for property '{p}' of resource 'User'."
            ))
        };
        let mut update = Map::new();
        for (key, value) in body {
            if key.starts_with('@') {
                continue;
            }
            let Some(name) = self.canonical_property(Entity::User, &key) else {
                return Err(self.bad_request(&format!(
                    "Property '{key}' does not exist as a declared property or extension property."
                )));
            };
            if READ_ONLY_USER_PROPERTIES.contains(&name.as_str()) {
                return Err(self.bad_request(&format!(
                    "Property '{name}' is read-only and cannot be set."
                )));
            }
            if synced && ON_PREMISES_MASTERED_PROPERTIES.contains(&name.as_str()) {
                return Err(self.bad_request(ON_PREMISES_MASTERED));
            }
            if name == "onPremisesExtensionAttributes" {
                let Value::Object(attrs) = &value else {
                    return Err(invalid_value(&name));
                };
                for (k, v) in attrs {
                    let known = k
                        .strip_prefix("extensionAttribute")
                        .and_then(|n| n.parse::<u8>().ok())
                        .is_some_and(|n| (1..=15).contains(&n));
                    if !known {
                        return Err(self.bad_request(&format!(
                            "Property '{k}' does not exist as a declared property or extension property."
                        )));
                    }
                    if !(v.is_null() || v.as_str().is_some_and(|s| s.len() <= 1024)) {
                        return Err(invalid_value(k));
                    }
                }
            } else if BOOLEAN_PROPERTIES.contains(&name.as_str()) {
                if !value.is_boolean() {
                    return Err(invalid_value(&name));
                }
            } else if COLLECTION_PROPERTIES.contains(&name.as_str()) {
                if !value.is_array() {
                    return Err(invalid_value(&name));
                }
            } else if let Some((_, max)) = MAX_LENGTHS.iter().find(|(p, _)| *p == name)
                && !(value.is_null() || value.as_str().is_some_and(|s| s.chars().count() <= *max))
            {
                return Err(invalid_value(&name));
            }
            if name == "userPrincipalName" {
                let Some(upn) = value.as_str() else {
                    return Err(invalid_value(&name));
                };
                let taken = self.users.iter().any(|(other, u)| {
                    *other != id
                        && u.props
                            .get("userPrincipalName")
                            .and_then(Value::as_str)
                            .is_some_and(|o| o.eq_ignore_ascii_case(upn))
                });
                if taken {
                    return Err(self.bad_request(
                        "Another object with the same value for property userPrincipalName already exists.",
                    ));
                }
            }
            update.insert(name, value);
        }
        for key in update.keys() {
            if self.canonical_property(Entity::User, key).is_none() {
                self.custom_props.insert(key.clone());
            }
        }
        self.apply_user_update(&id, update);
        Ok(Resp::empty(204))
    }

    // ----- Groups -------------------------------------------------------------------------

    fn list_groups(&mut self, params: &Params, headers: &HeaderMap) -> Result<Resp, Resp> {
        self.refuse_unsupported_options(params, &["$orderby", "$search", "$skip", "$expand"])?;
        let select = self.parse_select(params, Entity::Group, &[])?;
        let top = self.parse_top(params)?;
        let filter = self.parse_filter(params, headers, Entity::Group)?;
        let after = self.list_cursor(params)?;
        let matches = |id: &String, g: &GroupRec| {
            filter
                .as_ref()
                .is_none_or(|f| f.eval(&|attr| group_attr(id, g, attr)))
        };
        let count = (after.is_none() && Inner::advanced(params, headers))
            .then(|| self.groups.iter().filter(|(id, g)| matches(id, g)).count());
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page: Vec<(&String, &GroupRec)> = self
            .groups
            .range::<String, _>((lower, Bound::Unbounded))
            .filter(|(id, g)| matches(id, g))
            .take(top + 1)
            .collect();
        let more = page.len() > top;
        page.truncate(top);
        let items: Vec<Value> = page
            .iter()
            .map(|(id, g)| Value::Object(group_read_json(id, g, select.as_deref())))
            .collect();
        let next = more.then(|| self.next_list_link("/v1.0/groups", params, page[top - 1].0));
        Ok(self.collection(
            self.context(Entity::Group, select.as_deref(), ""),
            items,
            next,
            count,
        ))
    }

    fn get_group(&mut self, id: &str, params: &Params) -> Result<Resp, Resp> {
        let select = self.parse_select(params, Entity::Group, &[])?;
        let g = self.groups.get(id).ok_or_else(|| self.not_found(id))?;
        let mut out = Map::new();
        out.insert(
            "@odata.context".into(),
            json!(self.context(Entity::Group, select.as_deref(), "/$entity")),
        );
        out.extend(group_read_json(id, g, select.as_deref()));
        Ok(Resp::json(200, &Value::Object(out)))
    }

    /// `/groups/{id}/members`: the direct members, users and groups (nested groups are listed,
    /// not expanded), in id order. A child group carries the selected properties a group has.
    fn group_members(&mut self, id: &str, params: &Params) -> Result<Resp, Resp> {
        self.refuse_unsupported_options(params, &["$orderby", "$search", "$filter", "$skip"])?;
        let select = self.parse_select(params, Entity::User, &[])?;
        let top = self.parse_top(params)?;
        let after = self.list_cursor(params)?;
        let g = self.groups.get(id).ok_or_else(|| self.not_found(id))?;
        let members: BTreeMap<&String, bool> = g
            .members
            .iter()
            .filter(|uid| self.active_user(uid).is_some())
            .map(|uid| (uid, false))
            .chain(
                g.groups
                    .iter()
                    .filter(|gid| self.groups.contains_key(*gid))
                    .map(|gid| (gid, true)),
            )
            .collect();
        let mut page: Vec<(&String, bool)> = members
            .into_iter()
            .filter(|(member, _)| after.as_ref().is_none_or(|after| *member > after))
            .take(top + 1)
            .collect();
        let more = page.len() > top;
        page.truncate(top);
        let items: Vec<Value> = page
            .iter()
            .map(|(member, is_group)| {
                let mut item = Map::new();
                if *is_group {
                    item.insert("@odata.type".into(), json!(GROUP_TYPE));
                    let group_select: Option<Vec<String>> = select.as_ref().map(|list| {
                        list.iter()
                            .filter(|p| KNOWN_GROUP_PROPERTIES.contains(&p.as_str()))
                            .cloned()
                            .collect()
                    });
                    item.extend(group_read_json(
                        member,
                        &self.groups[*member],
                        group_select.as_deref(),
                    ));
                } else {
                    item.insert("@odata.type".into(), json!(USER_TYPE));
                    item.extend(self.user_read_json(
                        member,
                        &self.users[*member],
                        select.as_deref(),
                    ));
                }
                Value::Object(item)
            })
            .collect();
        let next = more.then(|| {
            self.next_list_link(
                &format!("/v1.0/groups/{id}/members"),
                params,
                page[top - 1].0,
            )
        });
        let context = format!("{}/v1.0/$metadata#directoryObjects", self.origin);
        Ok(self.collection(context, items, next, None))
    }

    // ----- Collections and list paging (B2 "Paging") --------------------------------------------

    fn collection(
        &self,
        context: String,
        items: Vec<Value>,
        next: Option<String>,
        count: Option<usize>,
    ) -> Resp {
        let mut out = Map::new();
        out.insert("@odata.context".into(), json!(context));
        if let Some(count) = count {
            out.insert("@odata.count".into(), json!(count));
        }
        if let Some(next) = next {
            out.insert("@odata.nextLink".into(), json!(next));
        }
        out.insert("value".into(), Value::Array(items));
        Resp::json(200, &Value::Object(out))
    }

    /// The list `$skiptoken` after `last_id` (opaque; invalid after
    /// [`FakeGraph::expire_delta_tokens`]).
    fn list_token(&self, last_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}.l.{last_id}", self.salt, self.epoch))
    }

    fn list_cursor(&self, params: &Params) -> Result<Option<String>, Resp> {
        let Some(token) = param(params, "$skiptoken") else {
            return Ok(None);
        };
        let prefix = format!("{}.{}.l.", self.salt, self.epoch);
        URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|raw| raw.strip_prefix(&prefix).map(str::to_owned))
            .map(Some)
            .ok_or_else(|| {
                self.error(
                    400,
                    "Directory_ExpiredPageToken",
                    "The specified page token value has expired and can no longer be included in your request.",
                )
            })
    }

    /// The request's URL with the same query options and a new `$skiptoken` (B2: "follow
    /// `@odata.nextLink` ... include the entire URL").
    fn next_list_link(&self, path: &str, params: &Params, last_id: &str) -> String {
        let mut next: Params = params
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("$skiptoken"))
            .cloned()
            .collect();
        next.push(("$skiptoken".into(), self.list_token(last_id)));
        format!("{}{path}{}", self.origin, encode_query(&next))
    }

    // ----- Delta query (B4, B5) ------------------------------------------------------------

    fn delta(
        &mut self,
        entity: Entity,
        params: &Params,
        headers: &HeaderMap,
    ) -> Result<Resp, Resp> {
        // B4: "`$expand` is not supported. `$top` is not supported. `$orderby` is not supported."
        // `$top` fails silently (B2: "query parameters ... might fail silently").
        for option in ["$expand", "$orderby", "$search", "$count"] {
            if param(params, option).is_some() {
                return Err(self.unsupported(&format!(
                    "The query option '{option}' is not supported with delta query."
                )));
            }
        }
        let minimal = headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("return=minimal"));
        let skip = param(params, "$skiptoken");
        let delta = param(params, "$deltatoken").filter(|t| !t.is_empty());
        if skip.is_some() && delta.is_some() {
            return Err(self.bad_request("$skiptoken and $deltatoken cannot be used together."));
        }
        if let Some(token) = skip {
            let (round, page) = match self.decode_state(token, entity) {
                Some(StateToken {
                    e,
                    q,
                    r: Some(r),
                    p: Some(p),
                    ..
                }) => {
                    if e != self.epoch {
                        return Err(self.expired(entity, &q));
                    }
                    (r, p)
                }
                _ => return Err(self.sync_state_not_found()),
            };
            return self.serve_page(entity, round, page, minimal);
        }
        let (query, since) = match delta {
            Some("latest") => {
                let query = self.delta_query(entity, params)?;
                let link = self.delta_link(entity, &query, self.generation());
                let body = json!({
                    "@odata.context": self.context(entity, None, ""),
                    "@odata.deltaLink": link,
                    "value": [],
                });
                return Ok(Resp::json(200, &body));
            }
            Some(token) => match self.decode_state(token, entity) {
                Some(StateToken {
                    e, q, g: Some(g), ..
                }) => {
                    if e != self.epoch {
                        return Err(self.expired(entity, &q));
                    }
                    (q, Some(g))
                }
                _ => return Err(self.sync_state_not_found()),
            },
            None => (self.delta_query(entity, params)?, None),
        };
        let pages = match entity {
            Entity::User => {
                let items = self.user_round(&query, since, minimal);
                let size = self.page_size;
                let mut pages: Vec<Vec<RoundItem>> =
                    items.chunks(size).map(<[RoundItem]>::to_vec).collect();
                if pages.is_empty() {
                    pages.push(Vec::new());
                }
                pages
            }
            Entity::Group => self
                .group_pages(&query, since, minimal)
                .into_iter()
                .map(|page| page.into_iter().map(RoundItem::Ready).collect())
                .collect(),
        };
        let id = self.next_round;
        self.next_round += 1;
        self.rounds.insert(
            id,
            Round {
                entity,
                query,
                pages,
                until: self.generation(),
            },
        );
        while self.rounds.len() > KEPT_ROUNDS {
            self.rounds.pop_first();
        }
        self.serve_page(entity, id, 0, minimal)
    }

    /// `$select` and `$filter` of an initial delta request.
    fn delta_query(&self, entity: Entity, params: &Params) -> Result<DeltaQuery, Resp> {
        let navigation: &[&str] = match entity {
            Entity::User => &["manager"],
            Entity::Group => &["members"],
        };
        let select = self.parse_select(params, entity, navigation)?;
        let ids = match param(params, "$filter").filter(|f| !f.trim().is_empty()) {
            None => None,
            Some(raw) => {
                // B4: only `id eq '…'`, or'ed, up to 50.
                let ids = parse_filter_text(raw)
                    .ok()
                    .and_then(|e| e.id_list())
                    .filter(|ids| ids.len() <= 50)
                    .ok_or_else(|| {
                        self.unsupported(
                            "Delta query only supports $filter on id with 'eq', combined with 'or' (at most 50).",
                        )
                    })?;
                Some(ids)
            }
        };
        Ok(DeltaQuery { select, ids })
    }

    fn serve_page(
        &mut self,
        entity: Entity,
        round_id: u64,
        page: usize,
        minimal: bool,
    ) -> Result<Resp, Resp> {
        let Some(round) = self
            .rounds
            .get(&round_id)
            .filter(|r| r.entity == entity && page < r.pages.len())
        else {
            return Err(self.sync_state_not_found());
        };
        let user_sel = Sel::of(Entity::User, round.query.select.as_deref());
        let mut items: Vec<Value> = round.pages[page]
            .iter()
            .filter_map(|item| match item {
                RoundItem::Ready(value) => Some(value.clone()),
                // Deleted since the round started: the next round reports it.
                RoundItem::User(id) => self
                    .active_user(id)
                    .map(|u| self.user_delta_initial(id, u, &user_sel)),
            })
            .collect();
        let last = page + 1 == round.pages.len();
        let query = round.query.clone();
        let until = round.until;
        let sent_last = items
            .last()
            .and_then(|i| i["id"].as_str())
            .map(str::to_owned);
        if self.replay {
            let previous = self.last_sent.get(&entity).cloned();
            let replayed = match previous {
                Some(id) => self
                    .current_item(entity, &id, &query, minimal)
                    .map(|i| (0, i)),
                None => items.first().cloned().map(|i| (items.len(), i)),
            };
            if let Some((at, item)) = replayed {
                items.insert(at, item);
                self.replay = false;
            }
        }
        if let Some(id) = sent_last {
            self.last_sent.insert(entity, id);
        }
        let mut out = Map::new();
        out.insert(
            "@odata.context".into(),
            json!(self.context(entity, None, "")),
        );
        if last {
            out.insert(
                "@odata.deltaLink".into(),
                json!(self.delta_link(entity, &query, until)),
            );
        } else {
            let token = self.encode_state(&StateToken {
                s: self.salt.clone(),
                e: self.epoch,
                k: entity,
                q: query,
                g: None,
                r: Some(round_id),
                p: Some(page + 1),
                n: 0,
            });
            out.insert(
                "@odata.nextLink".into(),
                json!(format!(
                    "{}/v1.0/{}/delta?$skiptoken={token}",
                    self.origin,
                    entity.set()
                )),
            );
        }
        out.insert("value".into(), Value::Array(items));
        let mut resp = Resp::json(200, &Value::Object(out));
        if minimal {
            resp = resp.header("preference-applied", "return=minimal");
        }
        Ok(resp)
    }

    fn delta_link(&self, entity: Entity, query: &DeltaQuery, until: u64) -> String {
        let token = self.encode_state(&StateToken {
            s: self.salt.clone(),
            e: self.epoch,
            k: entity,
            q: query.clone(),
            g: Some(until),
            r: None,
            p: None,
            n: rand::random(),
        });
        format!(
            "{}/v1.0/{}/delta?$deltatoken={token}",
            self.origin,
            entity.set()
        )
    }

    fn encode_state(&self, token: &StateToken) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(token).expect("serialize"))
    }

    fn decode_state(&self, token: &str, entity: Entity) -> Option<StateToken> {
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        let state: StateToken = serde_json::from_slice(&raw).ok()?;
        (state.s == self.salt && state.k == entity).then_some(state)
    }

    fn sync_state_not_found(&self) -> Resp {
        self.error(400, "syncStateNotFound", SYNC_STATE_NOT_FOUND)
    }

    /// An expired token (B4): 400 `syncStateNotFound`, or 410 with `Location` = the initial
    /// query with an empty `$deltaToken`.
    fn expired(&self, entity: Entity, query: &DeltaQuery) -> Resp {
        match self.expiry_mode {
            ExpiryMode::BadRequest400 => self.sync_state_not_found(),
            ExpiryMode::Gone410 => {
                let mut params: Params = Vec::new();
                if let Some(select) = &query.select {
                    params.push(("$select".into(), select.join(",")));
                }
                if let Some(ids) = &query.ids {
                    let clauses: Vec<String> =
                        ids.iter().map(|id| format!("id eq '{id}'")).collect();
                    params.push(("$filter".into(), clauses.join(" or ")));
                }
                params.push(("$deltaToken".into(), String::new()));
                let location = format!(
                    "{}/v1.0/{}/delta{}",
                    self.origin,
                    entity.set(),
                    encode_query(&params)
                );
                self.error(410, "syncStateNotFound", SYNC_STATE_NOT_FOUND)
                    .header("location", location)
            }
        }
    }

    /// A user as delta returns it in full: the selected properties it has, `null` for those it
    /// had once, nothing for those never set (B4, user-delta).
    fn user_delta_full(&self, id: &str, u: &UserRec, sel: &Sel) -> Map<String, Value> {
        let mut out = Map::new();
        for p in &sel.props {
            match u.props.get(p) {
                Some(v) => {
                    out.insert(p.clone(), full_property(p, v));
                }
                None if u.ever_set.contains(p) => {
                    out.insert(p.clone(), Value::Null);
                }
                None => {}
            }
        }
        out.insert("id".into(), json!(id));
        out
    }

    /// A user in full with its current manager, as an initial round (or a creation, a restore,
    /// a replay) returns it.
    fn user_delta_initial(&self, id: &str, u: &UserRec, sel: &Sel) -> Value {
        let mut item = self.user_delta_full(id, u, sel);
        if sel.manager
            && let Some(m) = &u.manager
        {
            item.insert("manager@delta".into(), Inner::manager_delta(Some(m), None));
        }
        Value::Object(item)
    }

    fn manager_delta(added: Option<&str>, removed: Option<&str>) -> Value {
        match (added, removed) {
            (Some(id), _) => json!([{ "@odata.type": USER_TYPE, "id": id }]),
            (None, Some(id)) => {
                json!([{ "@odata.type": USER_TYPE, "id": id, "@removed": { "reason": "deleted" } }])
            }
            (None, None) => json!([]),
        }
    }

    /// The items of a users delta round: everything (initial) or what changed after `since`.
    fn user_round(&self, query: &DeltaQuery, since: Option<u64>, minimal: bool) -> Vec<RoundItem> {
        let sel = Sel::of(Entity::User, query.select.as_deref());
        let wanted = |id: &str| query.ids.as_ref().is_none_or(|ids| ids.contains(id));
        let full = |id: &str, u: &UserRec| self.user_delta_initial(id, u, &sel);
        let Some(since) = since else {
            return self
                .users
                .iter()
                .filter(|(id, u)| !u.deleted && wanted(id))
                .map(|(id, _)| RoundItem::User(id.clone()))
                .collect();
        };
        #[derive(Default)]
        struct Summary {
            created: bool,
            restored: bool,
            soft_deleted: bool,
            props: BTreeSet<String>,
            manager_before: Option<Option<String>>,
        }
        let mut order: Vec<String> = Vec::new();
        let mut summaries: HashMap<String, Summary> = HashMap::new();
        for change in &self.changes[since as usize..] {
            let id = match change {
                Change::UserCreated(id)
                | Change::UserProps(id, _)
                | Change::UserManager { id, .. }
                | Change::UserSoftDeleted(id)
                | Change::UserRestored(id)
                | Change::UserHardDeleted(id) => id,
                _ => continue,
            };
            if !summaries.contains_key(id) {
                order.push(id.clone());
            }
            let s = summaries.entry(id.clone()).or_default();
            match change {
                Change::UserCreated(_) => s.created = true,
                Change::UserProps(_, props) => s.props.extend(props.iter().cloned()),
                Change::UserManager { before, .. } if s.manager_before.is_none() => {
                    s.manager_before = Some(before.clone());
                }
                Change::UserSoftDeleted(_) => s.soft_deleted = true,
                Change::UserRestored(_) => s.restored = true,
                _ => {}
            }
        }
        let mut items = Vec::new();
        for id in order.iter().filter(|id| wanted(id)) {
            let s = &summaries[id];
            let Some(u) = self.users.get(id) else {
                items.push(RoundItem::Ready(
                    json!({ "id": id, "@removed": { "reason": "deleted" } }),
                ));
                continue;
            };
            if u.deleted {
                if s.soft_deleted {
                    items.push(RoundItem::Ready(
                        json!({ "id": id, "@removed": { "reason": "changed" } }),
                    ));
                }
                continue;
            }
            if s.created || s.restored {
                items.push(RoundItem::Ready(full(id, u)));
                continue;
            }
            let changed: Vec<&String> = sel.props.iter().filter(|p| s.props.contains(*p)).collect();
            let manager_changed = sel.manager
                && s.manager_before
                    .as_ref()
                    .is_some_and(|before| *before != u.manager);
            if changed.is_empty() && !manager_changed {
                continue;
            }
            let mut item = if minimal {
                let mut item = Map::new();
                for p in changed {
                    let value = u.props.get(p).map_or(Value::Null, |v| full_property(p, v));
                    item.insert(p.clone(), value);
                }
                item.insert("id".into(), json!(id));
                item
            } else {
                self.user_delta_full(id, u, &sel)
            };
            if manager_changed {
                let before = s.manager_before.clone().flatten();
                let value = match (u.manager.as_deref(), before.as_deref()) {
                    (Some(new), Some(old)) if self.old_manager_last => json!([
                        { "@odata.type": USER_TYPE, "id": new },
                        { "@odata.type": USER_TYPE, "id": old, "@removed": { "reason": "deleted" } }
                    ]),
                    (new, old) => Inner::manager_delta(new, old),
                };
                item.insert("manager@delta".into(), value);
            }
            items.push(RoundItem::Ready(Value::Object(item)));
        }
        items
    }

    fn group_delta_props(&self, id: &str, g: &GroupRec, props: &[String]) -> Map<String, Value> {
        let mut out = Map::new();
        for p in props {
            if let Some(v) = g.props.get(p).filter(|v| !v.is_null()) {
                out.insert(p.clone(), v.clone());
            }
        }
        out.insert("id".into(), json!(id));
        out
    }

    /// A `members@delta` item: a user, or with `group` a nested group (B5: members are
    /// directory objects, each with its `@odata.type`).
    fn member_ref(id: &str, group: bool, removed: bool) -> Value {
        let kind = if group { GROUP_TYPE } else { USER_TYPE };
        if removed {
            json!({ "@odata.type": kind, "id": id, "@removed": { "reason": "deleted" } })
        } else {
            json!({ "@odata.type": kind, "id": id })
        }
    }

    /// The current members of a group as `members@delta` additions: its active users, then its
    /// nested groups.
    fn member_refs(&self, g: &GroupRec) -> Vec<Value> {
        g.members
            .iter()
            .filter(|m| self.active_user(m).is_some())
            .map(|m| Inner::member_ref(m, false, false))
            .chain(
                g.groups
                    .iter()
                    .filter(|child| self.groups.contains_key(*child))
                    .map(|child| Inner::member_ref(child, true, false)),
            )
            .collect()
    }

    /// The pages of a groups delta round. A group whose `members@delta` holds more than a page
    /// size of members is split: the same group object again on the next page with the other
    /// members (B5).
    fn group_pages(
        &self,
        query: &DeltaQuery,
        since: Option<u64>,
        minimal: bool,
    ) -> Vec<Vec<Value>> {
        let sel = Sel::of(Entity::Group, query.select.as_deref());
        let wanted = |id: &str| query.ids.as_ref().is_none_or(|ids| ids.contains(id));
        // (group id, properties, member references)
        let mut objects: Vec<(String, Map<String, Value>, Vec<Value>)> = Vec::new();
        // Groups deleted in the window: `@removed`, without members.
        let mut deleted: Vec<String> = Vec::new();
        let full = |id: &str, g: &GroupRec| {
            let members = self.member_refs(g);
            (
                id.to_owned(),
                self.group_delta_props(id, g, &sel.props),
                members,
            )
        };
        match since {
            None => {
                for (id, g) in self.groups.iter().filter(|(id, _)| wanted(id)) {
                    objects.push(full(id, g));
                }
            }
            Some(since) => {
                #[derive(Default)]
                struct Summary {
                    created: bool,
                    props: BTreeSet<String>,
                    /// user → whether the first change in the window added it.
                    first_added: BTreeMap<String, bool>,
                    /// nested group → whether the first change in the window added it.
                    first_nested: BTreeMap<String, bool>,
                }
                let mut order: Vec<String> = Vec::new();
                let mut summaries: HashMap<String, Summary> = HashMap::new();
                for change in &self.changes[since as usize..] {
                    let id = match change {
                        Change::GroupCreated(id) | Change::GroupProps(id, _) => id,
                        Change::GroupMember { group, .. } | Change::GroupNested { group, .. } => {
                            group
                        }
                        Change::GroupDeleted(id) => {
                            if wanted(id) && !self.groups.contains_key(id) {
                                deleted.push(id.clone());
                            }
                            continue;
                        }
                        _ => continue,
                    };
                    if !summaries.contains_key(id) {
                        order.push(id.clone());
                    }
                    let s = summaries.entry(id.clone()).or_default();
                    match change {
                        Change::GroupCreated(_) => s.created = true,
                        Change::GroupProps(_, props) => s.props.extend(props.iter().cloned()),
                        Change::GroupMember { user, added, .. } => {
                            s.first_added.entry(user.clone()).or_insert(*added);
                        }
                        Change::GroupNested { child, added, .. } => {
                            s.first_nested.entry(child.clone()).or_insert(*added);
                        }
                        _ => {}
                    }
                }
                for id in order.iter().filter(|id| wanted(id)) {
                    let Some(g) = self.groups.get(id) else {
                        continue;
                    };
                    let s = &summaries[id];
                    if s.created {
                        objects.push(full(id, g));
                        continue;
                    }
                    let mut members = Vec::new();
                    if sel.members {
                        for (user, first_added) in &s.first_added {
                            let before = !first_added;
                            let now = g.members.contains(user) && self.active_user(user).is_some();
                            if before != now {
                                members.push(Inner::member_ref(user, false, !now));
                            }
                        }
                        for (child, first_added) in &s.first_nested {
                            let before = !first_added;
                            let now = g.groups.contains(child) && self.groups.contains_key(child);
                            if before != now {
                                members.push(Inner::member_ref(child, true, !now));
                            }
                        }
                    }
                    let changed: Vec<String> = sel
                        .props
                        .iter()
                        .filter(|p| s.props.contains(*p))
                        .cloned()
                        .collect();
                    if changed.is_empty() && members.is_empty() {
                        continue;
                    }
                    // A membership-only change carries just id + members@delta (B5).
                    let props = if changed.is_empty() {
                        self.group_delta_props(id, g, &[])
                    } else if minimal {
                        self.group_delta_props(id, g, &changed)
                    } else {
                        self.group_delta_props(id, g, &sel.props)
                    };
                    objects.push((id.clone(), props, members));
                }
            }
        }
        let size = self.page_size;
        let mut pages: Vec<Vec<Value>> = vec![Vec::new()];
        deleted.sort();
        deleted.dedup();
        for id in deleted {
            if pages.last().is_some_and(|page| page.len() >= size) {
                pages.push(Vec::new());
            }
            pages
                .last_mut()
                .expect("one page at least")
                .push(json!({ "id": id, "@removed": { "reason": "deleted" } }));
        }
        for (_, props, members) in objects {
            let chunks: Vec<&[Value]> = if sel.members && !members.is_empty() {
                members.chunks(size).collect()
            } else {
                vec![&[] as &[Value]]
            };
            for (i, chunk) in chunks.into_iter().enumerate() {
                let page = pages.last_mut().expect("one page at least");
                // The same group object again goes to the next page.
                if page.len() >= size || (i > 0 && !page.is_empty()) {
                    pages.push(Vec::new());
                }
                let mut item = props.clone();
                if sel.members && !chunk.is_empty() {
                    item.insert("members@delta".into(), Value::Array(chunk.to_vec()));
                }
                pages
                    .last_mut()
                    .expect("one page at least")
                    .push(Value::Object(item));
            }
        }
        pages
    }

    /// The current delta item of one object (for replays): in full, or its removal.
    fn current_item(
        &self,
        entity: Entity,
        id: &str,
        query: &DeltaQuery,
        _minimal: bool,
    ) -> Option<Value> {
        match entity {
            Entity::User => {
                let sel = Sel::of(Entity::User, query.select.as_deref());
                Some(match self.users.get(id) {
                    None => json!({ "id": id, "@removed": { "reason": "deleted" } }),
                    Some(u) if u.deleted => {
                        json!({ "id": id, "@removed": { "reason": "changed" } })
                    }
                    Some(u) => self.user_delta_initial(id, u, &sel),
                })
            }
            Entity::Group => {
                let sel = Sel::of(Entity::Group, query.select.as_deref());
                let g = self.groups.get(id)?;
                let mut item = self.group_delta_props(id, g, &sel.props);
                if sel.members {
                    let members: Vec<Value> = self
                        .member_refs(g)
                        .into_iter()
                        .take(self.page_size)
                        .collect();
                    if !members.is_empty() {
                        item.insert("members@delta".into(), Value::Array(members));
                    }
                }
                Some(Value::Object(item))
            }
        }
    }
}

/// A group as a read returns it (all known properties without `$select`).
fn group_read_json(id: &str, g: &GroupRec, select: Option<&[String]>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("id".into(), json!(id));
    let all: Vec<String>;
    let props: &[String] = match select {
        Some(list) => list,
        None => {
            all = KNOWN_GROUP_PROPERTIES
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            &all
        }
    };
    for p in props.iter().filter(|p| *p != "id") {
        out.insert(p.clone(), g.props.get(p).cloned().unwrap_or(Value::Null));
    }
    out
}

/// `onPremisesExtensionAttributes` is always returned with all 15 keys (unset ones `null`).
fn full_property(name: &str, value: &Value) -> Value {
    if name != "onPremisesExtensionAttributes" {
        return value.clone();
    }
    let mut out = Map::new();
    for n in 1..=15 {
        let key = format!("extensionAttribute{n}");
        out.insert(key.clone(), value.get(&key).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

/// `extension_<app id without hyphens: 32 hex>_<name>` (B6).
fn is_extension_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("extension_") else {
        return false;
    };
    let Some((app, prop)) = rest.split_once('_') else {
        return false;
    };
    app.len() == 32
        && app.chars().all(|c| c.is_ascii_hexdigit())
        && !prop.is_empty()
        && prop.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn user_attr(id: &str, u: &UserRec, attr: &str) -> Option<Value> {
    if attr.eq_ignore_ascii_case("id") {
        return Some(json!(id));
    }
    u.props
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .map(|(_, v)| v.clone())
}

fn group_attr(id: &str, g: &GroupRec, attr: &str) -> Option<Value> {
    if attr.eq_ignore_ascii_case("id") {
        return Some(json!(id));
    }
    g.props
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .map(|(_, v)| v.clone())
}

// ===== Token endpoint helpers (B7) ============================================================

/// An identity-platform error: `error`, `error_description` ("AADSTSnnnn: … Trace ID … Correlation
/// ID … Timestamp …"), `error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`.
fn aad_error(status: u16, error: &str, code: u32, text: &str) -> Resp {
    let timestamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    let trace_id = uuid();
    let correlation_id = uuid();
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {text}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    let mut resp = Resp::json(status, &body);
    resp.headers[0].1 = "application/json; charset=utf-8".into();
    resp
}

/// Checks a certificate client assertion (B7; codes as in the Azure SDK troubleshooting table:
/// 700027 signature/certificate, 700021 iss/sub, 700023 audience, 700024 time range, 50027
/// malformed).
fn check_assertion(
    app: &App,
    client_id: &str,
    assertion: &str,
    token_url: &str,
) -> Result<(), (u32, String)> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| (50027, "JWT token is invalid or malformed.".to_owned()))?;
    if !matches!(header.alg, Algorithm::PS256 | Algorithm::RS256) {
        return Err((
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - The signing algorithm '{:?}' is not supported.]",
                header.alg
            ),
        ));
    }
    let presented = header
        .x5t_s256
        .as_deref()
        .map(|t| (t, true))
        .or(header.x5t.as_deref().map(|t| (t, false)));
    let Some((thumb, sha256)) = presented else {
        return Err((
            700027,
            "Client assertion contains an invalid signature. [Reason - The key was not found. The assertion header has neither 'x5t#S256' nor 'x5t'.]".to_owned(),
        ));
    };
    let cert = app
        .certs
        .iter()
        .find(|c| if sha256 { c.sha256 == thumb } else { c.sha1 == thumb })
        .ok_or_else(|| {
            let hex: String = URL_SAFE_NO_PAD
                .decode(thumb)
                .unwrap_or_default()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect();
            (
                700027,
                format!(
                    "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{hex}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"
                ),
            )
        })?;
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(assertion, &cert.key, &validation)
        .map_err(|_| {
            (
                700027,
                "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value.]".to_owned(),
            )
        })?
        .claims;
    if claims["iss"] != client_id || claims["sub"] != client_id {
        return Err((
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .".to_owned(),
        ));
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == token_url,
        Value::Array(list) => list.iter().any(|a| a == token_url),
        _ => false,
    };
    if !aud_ok {
        return Err((
            700023,
            "Client assertion audience claim does not match Realm issuer. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .".to_owned(),
        ));
    }
    let now = unix_now();
    let exp = claims["exp"].as_i64();
    let nbf = claims["nbf"].as_i64();
    let in_range = exp.is_some_and(|exp| exp + SKEW_SECS > now)
        && nbf.is_none_or(|nbf| nbf - SKEW_SECS <= now);
    if !in_range {
        let fmt = |t: Option<i64>| {
            t.and_then(|t| chrono::DateTime::<chrono::Utc>::from_timestamp(t, 0))
                .map(|t| t.format("%m/%d/%Y %H:%M:%S").to_string())
                .unwrap_or_else(|| "(none)".into())
        };
        return Err((
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}.",
                fmt(Some(now)),
                fmt(nbf),
                fmt(exp)
            ),
        ));
    }
    Ok(())
}

// ===== $filter (B2) ============================================================================

#[derive(Clone, Debug)]
enum FLit {
    Str(String),
    Bool(bool),
    Null,
    Num(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum FOp {
    Eq,
    Ne,
    Ge,
    Le,
}

#[derive(Clone, Debug)]
enum FExpr {
    Or(Box<FExpr>, Box<FExpr>),
    And(Box<FExpr>, Box<FExpr>),
    Not(Box<FExpr>),
    Cmp(String, FOp, FLit),
    In(String, Vec<FLit>),
    StartsWith(String, String),
    EndsWith(String, String),
}

impl FExpr {
    fn attributes(&self, out: &mut Vec<String>) {
        match self {
            FExpr::Or(a, b) | FExpr::And(a, b) => {
                a.attributes(out);
                b.attributes(out);
            }
            FExpr::Not(a) => a.attributes(out),
            FExpr::Cmp(attr, _, _)
            | FExpr::In(attr, _)
            | FExpr::StartsWith(attr, _)
            | FExpr::EndsWith(attr, _) => out.push(attr.clone()),
        }
    }

    /// The first operator that needs an advanced query (B2: `ne`, `not`, `endsWith`).
    fn advanced_operator(&self) -> Option<&'static str> {
        match self {
            FExpr::Or(a, b) | FExpr::And(a, b) => a.advanced_operator().or(b.advanced_operator()),
            FExpr::Not(_) => Some("not"),
            FExpr::Cmp(_, FOp::Ne, _) => Some("ne"),
            FExpr::EndsWith(_, _) => Some("endsWith"),
            _ => None,
        }
    }

    /// `id eq 'a' or id eq 'b' …` as a set of ids.
    fn id_list(&self) -> Option<BTreeSet<String>> {
        match self {
            FExpr::Or(a, b) => {
                let mut ids = a.id_list()?;
                ids.extend(b.id_list()?);
                Some(ids)
            }
            FExpr::Cmp(attr, FOp::Eq, FLit::Str(id)) if attr.eq_ignore_ascii_case("id") => {
                Some(BTreeSet::from([id.clone()]))
            }
            _ => None,
        }
    }

    fn eval(&self, get: &dyn Fn(&str) -> Option<Value>) -> bool {
        match self {
            FExpr::Or(a, b) => a.eval(get) || b.eval(get),
            FExpr::And(a, b) => a.eval(get) && b.eval(get),
            FExpr::Not(a) => !a.eval(get),
            FExpr::Cmp(attr, op, lit) => {
                let value = get(attr).unwrap_or(Value::Null);
                let ordering = compare_lit(&value, lit);
                match op {
                    FOp::Eq => ordering == Some(std::cmp::Ordering::Equal),
                    FOp::Ne => ordering != Some(std::cmp::Ordering::Equal),
                    FOp::Ge => ordering.is_some_and(|o| o != std::cmp::Ordering::Less),
                    FOp::Le => ordering.is_some_and(|o| o != std::cmp::Ordering::Greater),
                }
            }
            FExpr::In(attr, lits) => {
                let value = get(attr).unwrap_or(Value::Null);
                lits.iter()
                    .any(|l| compare_lit(&value, l) == Some(std::cmp::Ordering::Equal))
            }
            FExpr::StartsWith(attr, prefix) => get(attr)
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|v| v.to_lowercase().starts_with(&prefix.to_lowercase())),
            FExpr::EndsWith(attr, suffix) => get(attr)
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|v| v.to_lowercase().ends_with(&suffix.to_lowercase())),
        }
    }
}

/// Directory string comparisons are case-insensitive.
fn compare_lit(value: &Value, lit: &FLit) -> Option<std::cmp::Ordering> {
    match (value, lit) {
        (Value::Null, FLit::Null) => Some(std::cmp::Ordering::Equal),
        (Value::String(v), FLit::Str(s)) => Some(v.to_lowercase().cmp(&s.to_lowercase())),
        (Value::Array(items), FLit::Str(_)) => items
            .iter()
            .any(|i| compare_lit(i, lit) == Some(std::cmp::Ordering::Equal))
            .then_some(std::cmp::Ordering::Equal),
        (Value::Bool(v), FLit::Bool(b)) => Some(v.cmp(b)),
        (Value::Number(n), FLit::Num(x)) => n.as_f64().and_then(|n| n.partial_cmp(x)),
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq)]
enum FTok {
    Open,
    Close,
    Comma,
    Word(String),
    Str(String),
}

fn filter_tokens(text: &str) -> Result<Vec<FTok>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(FTok::Open);
            }
            ')' => {
                chars.next();
                out.push(FTok::Close);
            }
            ',' => {
                chars.next();
                out.push(FTok::Comma);
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated string literal".into()),
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            s.push('\'');
                        }
                        Some('\'') => break,
                        Some(other) => s.push(other),
                    }
                }
                out.push(FTok::Str(s));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | ',' | '\'') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(FTok::Word(word));
            }
        }
    }
    Ok(out)
}

fn parse_filter_text(text: &str) -> Result<FExpr, String> {
    let tokens = filter_tokens(text)?;
    let mut parser = FParser { tokens, at: 0 };
    let expr = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(format!("unexpected token at position {}", parser.at));
    }
    Ok(expr)
}

struct FParser {
    tokens: Vec<FTok>,
    at: usize,
}

impl FParser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(FTok::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn next(&mut self) -> Option<FTok> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn expect(&mut self, tok: FTok) -> Result<(), String> {
        if self.next() == Some(tok.clone()) {
            Ok(())
        } else {
            Err(format!("expected {tok:?}"))
        }
    }

    fn or(&mut self) -> Result<FExpr, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            left = FExpr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<FExpr, String> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.at += 1;
            left = FExpr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<FExpr, String> {
        if self.peek_word("not") {
            self.at += 1;
            return Ok(FExpr::Not(Box::new(self.unary()?)));
        }
        match self.next() {
            Some(FTok::Open) => {
                let inner = self.or()?;
                self.expect(FTok::Close)?;
                Ok(inner)
            }
            Some(FTok::Word(word))
                if word.eq_ignore_ascii_case("startsWith")
                    || word.eq_ignore_ascii_case("endsWith") =>
            {
                self.expect(FTok::Open)?;
                let Some(FTok::Word(attr)) = self.next() else {
                    return Err(format!("{word} needs a property"));
                };
                self.expect(FTok::Comma)?;
                let Some(FTok::Str(arg)) = self.next() else {
                    return Err(format!("{word} needs a string"));
                };
                self.expect(FTok::Close)?;
                Ok(if word.eq_ignore_ascii_case("startsWith") {
                    FExpr::StartsWith(attr, arg)
                } else {
                    FExpr::EndsWith(attr, arg)
                })
            }
            Some(FTok::Word(attr)) => {
                let Some(FTok::Word(op)) = self.next() else {
                    return Err(format!("missing operator after '{attr}'"));
                };
                let op = match op.to_ascii_lowercase().as_str() {
                    "eq" => FOp::Eq,
                    "ne" => FOp::Ne,
                    "ge" => FOp::Ge,
                    "le" => FOp::Le,
                    "in" => {
                        self.expect(FTok::Open)?;
                        let mut lits = vec![self.literal()?];
                        while self.tokens.get(self.at) == Some(&FTok::Comma) {
                            self.at += 1;
                            lits.push(self.literal()?);
                        }
                        self.expect(FTok::Close)?;
                        return Ok(FExpr::In(attr, lits));
                    }
                    other => return Err(format!("unsupported operator '{other}'")),
                };
                Ok(FExpr::Cmp(attr, op, self.literal()?))
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }

    fn literal(&mut self) -> Result<FLit, String> {
        match self.next() {
            Some(FTok::Str(s)) => Ok(FLit::Str(s)),
            Some(FTok::Word(w)) if w == "true" => Ok(FLit::Bool(true)),
            Some(FTok::Word(w)) if w == "false" => Ok(FLit::Bool(false)),
            Some(FTok::Word(w)) if w == "null" => Ok(FLit::Null),
            Some(FTok::Word(w)) => w
                .parse::<f64>()
                .map(FLit::Num)
                .map_err(|_| format!("invalid literal '{w}'")),
            other => Err(format!("expected a literal, got {other:?}")),
        }
    }
}

// ===== Small helpers ==========================================================================

fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-4{:x}{:02x}-{:x}{:x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6] & 0x0f,
        b[7],
        8 | (b[8] & 0x3),
        b[8] >> 4,
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// Graph's date format (`2026-11-26T10:00:00Z`).
fn graph_date_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
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

/// `?k=v&…`: percent-encodes all but unreserved characters and those Graph leaves as they are in
/// its links (`$ , ' ( ) :`), so `$select=a,b` stays readable and a space is `%20`.
fn encode_query(params: &Params) -> String {
    if params.is_empty() {
        return String::new();
    }
    let encode = |text: &str| {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric()
                || matches!(
                    byte,
                    b'-' | b'.' | b'_' | b'~' | b'$' | b',' | b'\'' | b'(' | b')' | b':'
                )
            {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    };
    let parts: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

fn form_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
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
                                    "fake Graph aborts the body",
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
