//! The OneLogin source (`[source] kind = "onelogin"`): OneLogin's API v2 (v1 only where v2 has
//! no equivalent), read in full or incrementally. Only this module and its children know
//! OneLogin's JSON.
//!
//! # What OneLogin documents, and what this module relies on
//!
//! From developers.onelogin.com (API v2 reference, "Generate Tokens", "List Users", "Roles",
//! "Get Groups" v1, "Rate Limits"; request shapes checked against the official SDKs
//! onelogin/onelogin-python-sdk `UsersV2Api`/`RolesApi` and onelogin-go-sdk):
//! - **Auth.** `POST /auth/oauth2/v2/token` with `{"grant_type":"client_credentials"}` and the
//!   API credential's client id and secret as HTTP Basic; the answer carries `access_token`
//!   and `expires_in` (36000 s, ten hours). API calls send `Authorization: Bearer <token>`.
//!   The token is kept until shortly before it expires and replaced once on a 401.
//!   Credentials whose creating admin was deleted answer 500 to every call: after a few tries
//!   that is reported as an authentication problem with what to do, not retried forever.
//! - **Users.** `GET /api/2/users` answers a bare JSON array, at most `limit` = 100 per page;
//!   the next page's cursor comes in the `After-Cursor` header and goes back as `cursor=`
//!   together with the same filters (`Total-Pages`, `Current-Page`, `Total-Count` are not
//!   needed); `fields=` asks for the attributes the list leaves out by default; `updated_since`
//!   (ISO 8601) narrows it to users updated since then; `user_ids`, `username` and `email`
//!   filter it. Ids are integers (kept as text here). `status`: 0 unactivated, 1 active,
//!   2 suspended, 3 locked, 4 password expired, 5 awaiting password reset, 7 password pending,
//!   8 security questions required; `state`: 0 unapproved, 1 approved, 2 rejected,
//!   3 unlicensed. `role_ids` (many), `group_id` (at most one), `manager_user_id`,
//!   `custom_attributes` (an object of short name → string or null).
//! - **Roles** `GET /api/2/roles` (array, `After-Cursor` paging) and their members
//!   `GET /api/2/roles/{id}/users`; **groups** only in v1: `GET /api/1/groups`, answered as
//!   `{"status", "pagination": {"after_cursor"}, "data": [{"id", "name", "reference"}]}`.
//! - **Rate limits**: `X-RateLimit-Limit/-Remaining/-Reset` (seconds to the reset) on
//!   answers, per account and per hour; 429 when used up (see [`client`]).
//! - **Write-back**: `PUT /api/2/users/{id}` with `{"custom_attributes": {"<name>": "…"}}`;
//!   the custom attribute must exist (Users → Custom User Fields) or OneLogin refuses it.
//!
//! # Reads
//!
//! A full read lists the roles and groups (names, every run), then every user with the
//! fields the model needs; role and group memberships come from each user's `role_ids` and
//! `group_id`. An incremental read asks for users with `updated_since` = the watermark (the
//! server's `Date` when the last committed read began) minus [`OVERLAP`], and re-reads the
//! members of the roles it uses (`groups` globs) because a role assignment need not move a
//! user's `updated_at`; it compares them, and the role and group names, with the memberships
//! cached by id in the state ([`MEMBERSHIP_KEY`]), and re-emits every user whose roles or
//! group name changed (fetched by `user_ids`, 50 a request, so that a user deleted meanwhile
//! is not re-emitted; from the source cache when more than a thousand changed at once, as
//! when a big role is renamed). A group has no member
//! list in the API: a user's group is its `group_id`, which moves `updated_at`; a renamed or
//! deleted group re-emits its cached members. Deleted users simply vanish from OneLogin's
//! API, which `updated_since` cannot show: they are caught by full runs (`full_cron`).
//! Cursors and the cache advance only when the run commits.

pub mod client;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use self::client::{OneLoginClient, OneLoginError, Paging};
use super::SourceError;
use super::groups::GroupFilter;
use crate::config::OneLoginConfig;
use crate::model::{
    Attrs, CacheUpdate, IdpId, ManagerRef, RejectedRecord, SourceCommit, SourceKind, SourceRead,
    SourceUser,
};
use crate::net::retry::Backoff;
use crate::state::State;

/// The state key of the incremental watermark.
pub const WATERMARK_KEY: &str = "onelogin.watermark";
/// The state key of the role and group memberships, cached by id.
pub const MEMBERSHIP_KEY: &str = "onelogin.memberships";
/// How far before the watermark an incremental read starts (clock skew, indexing delay).
pub const OVERLAP: Duration = Duration::from_secs(120);
/// Users per page (OneLogin's maximum).
const PAGE: usize = 100;
/// Users whose membership changed without an update that are fetched by id (more come from
/// the source cache).
const FETCH_AFFECTED_MAX: usize = 1000;
/// Ids per `user_ids=` request.
const IDS_PER_REQUEST: usize = 50;
/// Timeout of one request.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of one request (429, 5xx, transport errors).
const MAX_RETRIES: u32 = 5;
/// The user fields asked for with `fields=` (the list answers only a few by default).
pub const FIELDS: &str = "id,username,email,firstname,lastname,department,title,company,\
phone,status,state,role_ids,group_id,manager_user_id,manager_ad_id,custom_attributes,\
external_id,directory_id,distinguished_name,member_of,samaccountname,userprincipalname,\
comment,preferred_locale_code,created_at,updated_at,activated_at,last_login";

/// The settings a conversion needs.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Status 2 counts as active.
    pub suspended_is_active: bool,
    /// Status 0 counts as active.
    pub unactivated_is_active: bool,
    /// The custom attribute read as `employee_id`.
    pub employee_id_attribute: Option<String>,
}

impl Rules {
    fn of(config: &OneLoginConfig) -> Rules {
        Rules {
            suspended_is_active: config.suspended_is_active,
            unactivated_is_active: config.unactivated_is_active,
            employee_id_attribute: config.employee_id_attribute.clone(),
        }
    }
}

/// The name of a status code (lowercase, as `user.status` shows it).
pub fn status_name(code: i64) -> String {
    match code {
        0 => "unactivated".into(),
        1 => "active".into(),
        2 => "suspended".into(),
        3 => "locked".into(),
        4 => "password_expired".into(),
        5 => "awaiting_password_reset".into(),
        7 => "password_pending".into(),
        8 => "security_questions_required".into(),
        other => format!("status_{other}"),
    }
}

/// Whether a user with this `state` and `status` counts as active: approved (`state` 1) and
/// status 1, 3, 4, 5, 7 or 8; status 2 and 0 as configured.
pub fn is_active(state: i64, status: i64, rules: &Rules) -> bool {
    state == 1
        && match status {
            1 | 3 | 4 | 5 | 7 | 8 => true,
            2 => rules.suspended_is_active,
            0 => rules.unactivated_is_active,
            _ => false,
        }
}

/// Builds the client (reads the secret now).
///
/// # Errors
/// [`SourceError::Secret`] when the secret is missing.
pub fn client(config: &OneLoginConfig) -> Result<OneLoginClient, SourceError> {
    let secret = config.client_secret.resolve()?;
    OneLoginClient::new(
        config.api_url.clone(),
        config.client_id.clone(),
        secret,
        TIMEOUT,
        Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
            MAX_RETRIES,
        ),
    )
    .map_err(|error| unreadable(config, error))
}

/// Reads OneLogin, in full or incrementally (see the module docs).
///
/// # Errors
/// [`SourceError`] when any page fails; nothing partial is returned.
pub async fn read(
    config: &OneLoginConfig,
    state: Option<&State>,
    full: bool,
) -> Result<SourceRead, SourceError> {
    let filter = filter(config)?;
    let client = client(config)?;
    let rules = Rules::of(config);
    let previous = match state {
        Some(state) if !full => {
            let watermark = state
                .meta(WATERMARK_KEY)?
                .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
                .map(|time| time.with_timezone(&Utc));
            let memberships = state
                .meta(MEMBERSHIP_KEY)?
                .and_then(|text| serde_json::from_str::<Memberships>(&text).ok());
            watermark.zip(memberships)
        }
        _ => None,
    };
    match (previous, state) {
        (Some((watermark, memberships)), Some(state)) => {
            read_incremental(&client, &rules, &filter, state, watermark, memberships).await
        }
        _ => read_full(&client, &rules, &filter)
            .await
            .map_err(ReadError::from),
    }
    .map_err(|error| match error {
        ReadError::OneLogin(error) => unreadable(config, error),
        ReadError::State(error) => SourceError::State(error),
    })
}

/// Whether a read with this state is full: without a watermark or cached memberships it is.
pub fn has_cursors(state: Option<&State>) -> bool {
    let has = |key: &str| {
        state
            .and_then(|state| state.meta(key).ok().flatten())
            .is_some()
    };
    has(WATERMARK_KEY) && has(MEMBERSHIP_KEY)
}

/// Finds one user by id, username or email, with groups and manager (for `preview`).
///
/// # Errors
/// [`SourceError`] when OneLogin cannot be read, or the user's record is unusable.
pub async fn read_one(
    config: &OneLoginConfig,
    wanted: &str,
) -> Result<Option<SourceRead>, SourceError> {
    let filter = filter(config)?;
    let client = client(config)?;
    let rules = Rules::of(config);
    let fail = |error| unreadable(config, error);
    let wanted = wanted.trim();
    let mut queries = Vec::new();
    if !wanted.is_empty() && wanted.bytes().all(|byte| byte.is_ascii_digit()) {
        queries.push(format!("user_ids={wanted}"));
    }
    queries.push(format!("username={}", encode(wanted)));
    if wanted.contains('@') {
        queries.push(format!("email={}", encode(wanted)));
    }
    let mut found = None;
    for query in queries {
        let mut items: Vec<Box<RawValue>> = Vec::new();
        client
            .get_pages(&users_path(&query), Paging::V2, |page| {
                items.extend(page);
                Ok(false)
            })
            .await
            .map_err(fail)?;
        if let Some(first) = items.into_iter().next() {
            found = Some(first);
            break;
        }
    }
    let Some(raw) = found else {
        return Ok(None);
    };
    let mut user = convert(raw, &rules).map_err(|rejected| SourceError::Unreadable {
        location: rejected.location,
        message: rejected.error,
    })?;
    let directory = read_directory(&client).await.map_err(fail)?;
    user.user.groups = group_names(&user.role_ids, user.group_id, &directory, &filter);
    let mut warnings = Vec::new();
    if let Some(manager_id) = user.user.manager_id.clone() {
        match fetch_users(
            &client,
            std::slice::from_ref(&manager_id.0),
            &rules,
            &mut Vec::new(),
        )
        .await
        .map_err(fail)?
        .into_iter()
        .next()
        {
            Some(manager) => user.user.manager = Some(manager.user.as_manager()),
            None => warnings.push(manager_warning(&user.user)),
        }
    }
    Ok(Some(SourceRead {
        kind: SourceKind::OneLogin,
        full: false,
        users: vec![Arc::new(user.user)],
        removed: Vec::new(),
        rejected: Vec::new(),
        warnings,
        reasons: Default::default(),
        commit: SourceCommit::default(),
    }))
}

/// Authenticates and reads from every endpoint a run uses (for `check-config --connect`): one
/// page of users with the fields a run asks for, the roles, the groups (API v1) and one role's
/// members. Every endpoint is tried; a refusal names the permission the credential lacks.
///
/// # Errors
/// [`SourceError`] naming every endpoint that failed.
pub async fn check(config: &OneLoginConfig) -> Result<String, SourceError> {
    let client = client(config)?;
    let fail = |error| unreadable(config, error);
    client.authenticate().await.map_err(fail)?;
    let mut failures = Vec::new();
    let mut users = 0;
    if let Err(error) = client
        .get_pages::<Box<RawValue>>(&users_path(""), Paging::V2, |page| {
            users = page.len();
            Ok(false)
        })
        .await
    {
        failures.push(error.to_string());
    }
    let mut roles = Vec::new();
    if let Err(error) = client
        .get_pages::<NamedItem>(&format!("/api/2/roles?limit={PAGE}"), Paging::V2, |page| {
            roles.extend(page);
            Ok(true)
        })
        .await
    {
        failures.push(error.to_string());
    }
    let mut groups = 0;
    if let Err(error) = client
        .get_pages::<NamedItem>("/api/1/groups", Paging::V1, |page| {
            groups += page.len();
            Ok(false)
        })
        .await
    {
        failures.push(error.to_string());
    }
    if let Some(role) = roles.iter().find_map(|role| integer(&role.id))
        && let Err(error) = client
            .get_pages::<Box<RawValue>>(
                &format!("/api/2/roles/{role}/users?limit={PAGE}"),
                Paging::V2,
                |_| Ok(false),
            )
            .await
    {
        failures.push(error.to_string());
    }
    if !failures.is_empty() {
        return Err(unreadable(config, failures.join("; ")));
    }
    Ok(format!(
        "authenticated to {} as client {}; read a page of {users} user(s), {} role(s) and {groups} group(s)",
        config.api_url.as_str().trim_end_matches('/'),
        config.client_id,
        roles.len()
    ))
}

/// Sets one custom attribute of a OneLogin user (`PUT /api/2/users/{id}` with
/// `custom_attributes`), for write-back; `attribute` is `custom_attributes.<short name>` (as
/// `[writeback] attribute` gives it) or the short name.
///
/// # Errors
/// A message that says what to change in OneLogin when it refuses.
pub async fn write_attribute(
    client: &OneLoginClient,
    idp_id: &IdpId,
    attribute: &str,
    value: &str,
) -> Result<(), String> {
    if idp_id.0.is_empty() || !idp_id.0.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!("{idp_id} is not a OneLogin user id"));
    }
    // The configuration names it `custom_attributes.<short name>`.
    let attribute = attribute
        .strip_prefix("custom_attributes.")
        .unwrap_or(attribute);
    let body = serde_json::json!({ "custom_attributes": { attribute: value } });
    match client
        .put_json(&format!("/api/2/users/{}", idp_id.0), &body)
        .await
    {
        Ok(_) => Ok(()),
        Err(OneLoginError::Rejected {
            status: 400 | 422,
            detail,
            ..
        }) => Err(format!(
            "OneLogin refused the custom attribute `{attribute}` ({detail}): create it first \
             (Users → Custom User Fields, short name `{attribute}`) or change [writeback] attribute"
        )),
        Err(error) => Err(error.to_string()),
    }
}

fn filter(config: &OneLoginConfig) -> Result<GroupFilter, SourceError> {
    GroupFilter::new(&config.groups).map_err(|message| SourceError::Unreadable {
        location: "source.onelogin.groups".into(),
        message,
    })
}

fn unreadable(config: &OneLoginConfig, error: impl std::fmt::Display) -> SourceError {
    SourceError::Unreadable {
        location: format!("OneLogin {}", config.api_url.as_str().trim_end_matches('/')),
        message: error.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    OneLogin(#[from] OneLoginError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// A converted user plus its role and group ids.
#[derive(Debug, Clone)]
struct OneLoginUser {
    user: SourceUser,
    role_ids: BTreeSet<u64>,
    group_id: Option<u64>,
}

/// Role and group names by id, as read this run.
#[derive(Debug, Default)]
struct Directory {
    roles: BTreeMap<u64, String>,
    groups: BTreeMap<u64, String>,
}

/// What the state keeps between runs: for every role and group the filter selects, its name
/// and its members' ids.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Memberships {
    roles: BTreeMap<u64, Members>,
    groups: BTreeMap<u64, Members>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Members {
    name: String,
    members: BTreeSet<String>,
}

/// `{"id": …, "name": …}` of a role, group or role member.
#[derive(Debug, Deserialize)]
struct NamedItem {
    #[serde(default)]
    id: Value,
    #[serde(default)]
    name: Value,
}

async fn read_directory(client: &OneLoginClient) -> Result<Directory, OneLoginError> {
    let mut directory = Directory::default();
    let add = |target: &mut BTreeMap<u64, String>, items: Vec<NamedItem>| {
        for item in items {
            if let (Some(id), Some(name)) = (integer(&item.id), item.name.as_str()) {
                target.insert(id, name.to_owned());
            }
        }
    };
    let mut roles = Vec::new();
    client
        .get_pages::<NamedItem>(&format!("/api/2/roles?limit={PAGE}"), Paging::V2, |page| {
            roles.extend(page);
            Ok(true)
        })
        .await?;
    add(&mut directory.roles, roles);
    let mut groups = Vec::new();
    client
        .get_pages::<NamedItem>("/api/1/groups", Paging::V1, |page| {
            groups.extend(page);
            Ok(true)
        })
        .await?;
    add(&mut directory.groups, groups);
    Ok(directory)
}

async fn read_full(
    client: &OneLoginClient,
    rules: &Rules,
    filter: &GroupFilter,
) -> Result<SourceRead, OneLoginError> {
    let mut read = empty_read(true);
    let mut users: Vec<OneLoginUser> = Vec::new();
    let mut seen = HashSet::new();
    client
        .get_pages::<UserRecord>(&users_path(""), Paging::V2, |page| {
            users.reserve(page.len());
            for record in page {
                match convert_record(record, rules) {
                    Ok(user) if seen.insert(user.user.id.0.clone()) => users.push(user),
                    Ok(_) => {}
                    Err(record) => read.rejected.push(record),
                }
            }
            Ok(true)
        })
        .await?;
    let started = client.first_server_date().unwrap_or_else(Utc::now);
    let directory = read_directory(client).await?;
    let mut memberships = Memberships::default();
    for (id, name) in &directory.roles {
        if filter.matches(name) {
            memberships.roles.insert(
                *id,
                Members {
                    name: name.clone(),
                    members: BTreeSet::new(),
                },
            );
        }
    }
    for (id, name) in &directory.groups {
        if filter.matches(name) {
            memberships.groups.insert(
                *id,
                Members {
                    name: name.clone(),
                    members: BTreeSet::new(),
                },
            );
        }
    }
    for user in &mut users {
        for role in &user.role_ids {
            if let Some(entry) = memberships.roles.get_mut(role) {
                entry.members.insert(user.user.id.0.clone());
            }
        }
        if let Some(entry) = user
            .group_id
            .and_then(|group| memberships.groups.get_mut(&group))
        {
            entry.members.insert(user.user.id.0.clone());
        }
        user.user.groups = group_names(&user.role_ids, user.group_id, &directory, filter);
    }
    resolve_managers_in_batch(&mut users);
    for user in &users {
        if user.user.manager_id.is_some() && user.user.manager.is_none() {
            read.warnings.push(manager_warning(&user.user));
        }
    }
    read.users = users.into_iter().map(|user| Arc::new(user.user)).collect();
    read.commit = SourceCommit {
        // The memberships before the watermark: the cursor moves last.
        cursors: vec![
            (MEMBERSHIP_KEY.to_owned(), encode_memberships(&memberships)),
            (WATERMARK_KEY.to_owned(), format_time(started)),
        ],
        tables: Vec::new(),
        cache: CacheUpdate::Replace(read.users.clone()),
    };
    Ok(read)
}

async fn read_incremental(
    client: &OneLoginClient,
    rules: &Rules,
    filter: &GroupFilter,
    state: &State,
    watermark: DateTime<Utc>,
    cached: Memberships,
) -> Result<SourceRead, ReadError> {
    let since = watermark - chrono::Duration::from_std(OVERLAP).unwrap_or_default();
    let mut read = empty_read(false);
    let mut users: Vec<OneLoginUser> = Vec::new();
    let mut seen = HashSet::new();
    client
        .get_pages::<UserRecord>(
            &users_path(&format!("updated_since={}", encode(&format_time(since)))),
            Paging::V2,
            |page| {
                for record in page {
                    match convert_record(record, rules) {
                        Ok(user) if seen.insert(user.user.id.0.clone()) => users.push(user),
                        Ok(_) => {}
                        Err(record) => read.rejected.push(record),
                    }
                }
                Ok(true)
            },
        )
        .await?;
    let started = client.first_server_date().unwrap_or_else(Utc::now);
    let directory = read_directory(client).await?;

    // Roles: members re-read, since an assignment need not move `updated_at`.
    let mut now = Memberships::default();
    for (id, name) in &directory.roles {
        if !filter.matches(name) {
            continue;
        }
        let mut members = BTreeSet::new();
        client
            .get_pages::<NamedItem>(
                &format!("/api/2/roles/{id}/users?limit={PAGE}"),
                Paging::V2,
                |page| {
                    members.extend(
                        page.iter()
                            .filter_map(|member| integer(&member.id))
                            .map(|id| id.to_string()),
                    );
                    Ok(true)
                },
            )
            .await?;
        now.roles.insert(
            *id,
            Members {
                name: name.clone(),
                members,
            },
        );
    }
    // Groups: the cached members, moved by the changed users' `group_id`.
    for (id, name) in &directory.groups {
        if filter.matches(name) {
            let members = cached
                .groups
                .get(id)
                .map(|cached| cached.members.clone())
                .unwrap_or_default();
            now.groups.insert(
                *id,
                Members {
                    name: name.clone(),
                    members,
                },
            );
        }
    }
    for user in &users {
        for entry in now.groups.values_mut() {
            entry.members.remove(&user.user.id.0);
        }
        if let Some(entry) = user.group_id.and_then(|group| now.groups.get_mut(&group)) {
            entry.members.insert(user.user.id.0.clone());
        }
    }

    // Whose groups may have changed: membership differences, renamed, new or gone entries.
    let mut affected: BTreeSet<String> = BTreeSet::new();
    for (before, after) in [(&cached.roles, &now.roles), (&cached.groups, &now.groups)] {
        for (id, entry) in after {
            match before.get(id) {
                Some(old) if old.name == entry.name => {
                    affected.extend(old.members.symmetric_difference(&entry.members).cloned());
                }
                Some(old) => {
                    affected.extend(old.members.iter().cloned());
                    affected.extend(entry.members.iter().cloned());
                }
                None => affected.extend(entry.members.iter().cloned()),
            }
        }
        for (id, old) in before {
            if !after.contains_key(id) {
                affected.extend(old.members.iter().cloned());
            }
        }
    }
    // Users whose roles or group changed but whose record did not: fetched by id, so that
    // one deleted meanwhile is not re-emitted (the next full run deactivates it); beyond
    // FETCH_AFFECTED_MAX (a big role renamed) from the source cache.
    let affected: Vec<String> = affected
        .into_iter()
        .filter(|id| !seen.contains(id))
        .collect();
    let fetch = if affected.len() <= FETCH_AFFECTED_MAX {
        affected
    } else {
        let mut missing = Vec::new();
        for id in affected {
            match state.cached_source_user(&IdpId(id.clone()))? {
                Some(user) => {
                    let role_ids = integer_set(user.attrs.get("role_ids").as_ref());
                    let group_id = user.attrs.get("group_id").as_ref().and_then(integer);
                    seen.insert(id);
                    users.push(OneLoginUser {
                        user,
                        role_ids,
                        group_id,
                    });
                }
                None => missing.push(id),
            }
        }
        missing
    };
    for user in fetch_users(client, &fetch, rules, &mut read.rejected).await? {
        if seen.insert(user.user.id.0.clone()) {
            users.push(user);
        }
    }

    // Groups of every user in the batch: selected roles from this run's member lists.
    for user in &mut users {
        let id = &user.user.id.0;
        let mut role_ids: BTreeSet<u64> = user
            .role_ids
            .iter()
            .copied()
            .filter(|role| !now.roles.contains_key(role))
            .collect();
        role_ids.extend(
            now.roles
                .iter()
                .filter(|(_, entry)| entry.members.contains(id))
                .map(|(role, _)| *role),
        );
        if role_ids != user.role_ids {
            user.user.attrs = with_role_ids(&user.user.attrs, &role_ids);
            user.role_ids = role_ids;
        }
        user.user.groups = group_names(&user.role_ids, user.group_id, &directory, filter);
    }

    // Managers: in the batch, else in the cache, else fetched.
    resolve_managers_in_batch(&mut users);
    let mut unresolved = Vec::new();
    for (index, user) in users.iter_mut().enumerate() {
        if user.user.manager.is_some() {
            continue;
        }
        if let Some(manager_id) = user.user.manager_id.clone() {
            match state.cached_source_user(&manager_id)? {
                Some(manager) => user.user.manager = Some(manager.as_manager()),
                None => unresolved.push((index, manager_id.0)),
            }
        }
    }
    if !unresolved.is_empty() {
        let ids: Vec<String> = unresolved
            .iter()
            .map(|(_, id)| id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let managers: HashMap<String, Arc<ManagerRef>> =
            fetch_users(client, &ids, rules, &mut Vec::new())
                .await?
                .into_iter()
                .map(|manager| (manager.user.id.0.clone(), manager.user.as_manager()))
                .collect();
        for (index, id) in unresolved {
            match managers.get(&id) {
                Some(manager) => users[index].user.manager = Some(manager.clone()),
                None => read.warnings.push(manager_warning(&users[index].user)),
            }
        }
    }

    read.users = users.into_iter().map(|user| Arc::new(user.user)).collect();
    read.commit = SourceCommit {
        // The memberships before the watermark: the cursor moves last.
        cursors: vec![
            (MEMBERSHIP_KEY.to_owned(), encode_memberships(&now)),
            (WATERMARK_KEY.to_owned(), format_time(started)),
        ],
        tables: Vec::new(),
        cache: CacheUpdate::Merge {
            upsert: read.users.clone(),
            remove: Vec::new(),
        },
    };
    Ok(read)
}

/// Users by id, through `user_ids=` in small batches.
async fn fetch_users(
    client: &OneLoginClient,
    ids: &[String],
    rules: &Rules,
    rejected: &mut Vec<RejectedRecord>,
) -> Result<Vec<OneLoginUser>, OneLoginError> {
    let mut users = Vec::new();
    for chunk in ids.chunks(IDS_PER_REQUEST) {
        let mut items: Vec<Box<RawValue>> = Vec::new();
        client
            .get_pages(
                &users_path(&format!("user_ids={}", chunk.join(","))),
                Paging::V2,
                |page| {
                    items.extend(page);
                    Ok(true)
                },
            )
            .await?;
        for raw in items {
            match convert(raw, rules) {
                Ok(user) => users.push(user),
                Err(record) => rejected.push(record),
            }
        }
    }
    Ok(users)
}

fn resolve_managers_in_batch(users: &mut [OneLoginUser]) {
    let by_id: HashMap<&str, usize> = users
        .iter()
        .enumerate()
        .map(|(index, user)| (user.user.id.0.as_str(), index))
        .collect();
    // One reference per manager, shared by all of its reports.
    let mut shared: HashMap<usize, Arc<ManagerRef>> = HashMap::new();
    let managers: Vec<Option<Arc<ManagerRef>>> = users
        .iter()
        .enumerate()
        .map(|(index, user)| {
            let manager = *by_id.get(user.user.manager_id.as_ref()?.0.as_str())?;
            (manager != index).then(|| {
                shared
                    .entry(manager)
                    .or_insert_with(|| users[manager].user.as_manager())
                    .clone()
            })
        })
        .collect();
    for (user, manager) in users.iter_mut().zip(managers) {
        if manager.is_some() {
            user.user.manager = manager;
        }
    }
}

/// The names of the user's roles and group that the filter selects, sorted.
fn group_names(
    role_ids: &BTreeSet<u64>,
    group_id: Option<u64>,
    directory: &Directory,
    filter: &GroupFilter,
) -> Vec<String> {
    let mut names: BTreeSet<String> = role_ids
        .iter()
        .filter_map(|role| directory.roles.get(role))
        .filter(|name| filter.matches(name))
        .cloned()
        .collect();
    if let Some(name) = group_id.and_then(|group| directory.groups.get(&group))
        && filter.matches(name)
    {
        names.insert(name.clone());
    }
    names.into_iter().collect()
}

/// The user's fields the model reads; anything else in the object is kept in `attrs` only.
#[derive(Debug, Default, Deserialize)]
struct RawUser {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    username: Option<Value>,
    #[serde(default)]
    email: Option<Value>,
    #[serde(default)]
    firstname: Option<Value>,
    #[serde(default)]
    lastname: Option<Value>,
    #[serde(default)]
    department: Option<Value>,
    #[serde(default)]
    title: Option<Value>,
    #[serde(default)]
    status: Option<Value>,
    #[serde(default)]
    state: Option<Value>,
    #[serde(default)]
    role_ids: Option<Value>,
    #[serde(default)]
    group_id: Option<Value>,
    #[serde(default)]
    manager_user_id: Option<Value>,
    #[serde(default)]
    custom_attributes: Option<Box<RawValue>>,
}

/// One item of a users page, parsed where the page is parsed (on the task that fetches the
/// pages, ahead of the conversion): the object's fields the model reads, and its text kept
/// as `attrs`. Any JSON value is accepted, so that an odd item is rejected on its own.
#[derive(Debug)]
struct UserRecord {
    fields: Result<RawUser, String>,
    attrs: Result<Attrs, String>,
}

impl UserRecord {
    fn from_raw(raw: Box<RawValue>) -> UserRecord {
        // A derived struct would also take an array; a user is an object.
        if !raw.get().starts_with('{') {
            let error = format!(
                "not a user object: {}",
                crate::net::text::excerpt(raw.get())
            );
            return UserRecord {
                fields: Err(error.clone()),
                attrs: Err(error),
            };
        }
        let fields = serde_json::from_str::<RawUser>(raw.get())
            .map_err(|error| format!("not a user object: {error}"));
        let attrs = match Attrs::from_json_object(raw) {
            Ok(Some(attrs)) => Ok(attrs),
            Ok(None) => Err("the user record is not an object".to_owned()),
            Err(error) => Err(format!("the user object cannot be read: {error}")),
        };
        UserRecord { fields, attrs }
    }
}

impl<'de> Deserialize<'de> for UserRecord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<UserRecord, D::Error> {
        Ok(UserRecord::from_raw(Box::<RawValue>::deserialize(
            deserializer,
        )?))
    }
}

/// Turns one OneLogin user object (its JSON text) into a [`SourceUser`]; groups and manager
/// are resolved later. A record without an integer id, without an email, or with a field of
/// the wrong type is rejected on its own.
fn convert(raw: Box<RawValue>, rules: &Rules) -> Result<OneLoginUser, RejectedRecord> {
    convert_record(UserRecord::from_raw(raw), rules)
}

/// [`convert`] of a record parsed with its page.
fn convert_record(record: UserRecord, rules: &Rules) -> Result<OneLoginUser, RejectedRecord> {
    let UserRecord { fields, attrs } = record;
    let fields: RawUser = fields.map_err(|error| RejectedRecord {
        idp_id: None,
        location: "OneLogin user record".into(),
        error,
    })?;
    let id = match &fields.id {
        Some(id) => match integer(id) {
            Some(id) => id.to_string(),
            None => {
                return Err(RejectedRecord {
                    idp_id: None,
                    location: format!("OneLogin user with id {id}"),
                    error: format!("the id must be an integer, found {id}"),
                });
            }
        },
        None => {
            return Err(RejectedRecord {
                idp_id: None,
                location: "OneLogin user without an id".into(),
                error: "the user object has no `id`".into(),
            });
        }
    };
    let reject = |error: String| RejectedRecord {
        idp_id: Some(IdpId(id.clone())),
        location: format!("OneLogin user {id}"),
        error,
    };
    let text = |value: &Option<Value>, field: &str| -> Result<Option<String>, RejectedRecord> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok((!text.trim().is_empty()).then(|| text.clone())),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(other) => Err(reject(format!("`{field}` must be a string, found {other}"))),
        }
    };
    let code = |value: &Option<Value>, field: &str| -> Result<i64, RejectedRecord> {
        match value {
            Some(Value::Number(number)) if number.as_i64().is_some() => {
                Ok(number.as_i64().unwrap_or_default())
            }
            None | Some(Value::Null) => Err(reject(format!("the user object has no `{field}`"))),
            Some(other) => Err(reject(format!(
                "`{field}` must be an integer code, found {other}"
            ))),
        }
    };
    let status = code(&fields.status, "status")?;
    let state = code(&fields.state, "state")?;
    let login = text(&fields.username, "username")?;
    let Some(email) = text(&fields.email, "email")? else {
        return Err(reject("the user has no `email`".into()));
    };
    let given_name = text(&fields.firstname, "firstname")?;
    let family_name = text(&fields.lastname, "lastname")?;
    let department = text(&fields.department, "department")?;
    let title = text(&fields.title, "title")?;
    let manager_id = match &fields.manager_user_id {
        None | Some(Value::Null) => None,
        Some(value) => match integer(value) {
            Some(0) => None,
            Some(manager) => Some(IdpId(manager.to_string())),
            None => {
                return Err(reject(format!(
                    "`manager_user_id` must be an integer, found {value}"
                )));
            }
        },
    };
    let group_id = match &fields.group_id {
        None | Some(Value::Null) => None,
        Some(value) => match integer(value) {
            Some(group) => Some(group),
            None => {
                return Err(reject(format!(
                    "`group_id` must be an integer, found {value}"
                )));
            }
        },
    };
    let role_ids = match &fields.role_ids {
        None | Some(Value::Null) => BTreeSet::new(),
        Some(Value::Array(items)) => items.iter().filter_map(integer).collect(),
        Some(other) => return Err(reject(format!("`role_ids` must be a list, found {other}"))),
    };
    let employee_id = match (&rules.employee_id_attribute, &fields.custom_attributes) {
        (Some(name), Some(custom)) => {
            let custom: Value = serde_json::from_str(custom.get()).unwrap_or(Value::Null);
            text(
                &custom.get(name).cloned(),
                &format!("custom_attributes.{name}"),
            )?
        }
        _ => None,
    };
    let display_name = match (&given_name, &family_name) {
        (None, None) => None,
        (first, last) => Some(
            [first.as_deref(), last.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
        ),
    };
    let attrs = attrs.map_err(reject)?;
    Ok(OneLoginUser {
        user: SourceUser {
            id: IdpId(id.clone()),
            login,
            email: Some(email),
            given_name,
            family_name,
            display_name,
            active: is_active(state, status, rules),
            status: Some(status_name(status)),
            department,
            title,
            employee_id,
            manager_id,
            manager: None,
            groups: Vec::new(),
            attrs,
        },
        role_ids,
        group_id,
    })
}

/// An integer id: a JSON integer, or a string of digits.
fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse().ok()
        }
        _ => None,
    }
}

fn integer_set(value: Option<&Value>) -> BTreeSet<u64> {
    value
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(integer).collect())
        .unwrap_or_default()
}

/// `attrs` with `role_ids` replaced (a user whose roles changed without an update).
fn with_role_ids(attrs: &Attrs, role_ids: &BTreeSet<u64>) -> Attrs {
    let mut map = attrs.to_map();
    map.insert(
        "role_ids".into(),
        Value::Array(role_ids.iter().map(|id| Value::from(*id)).collect()),
    );
    Attrs::from_map(&map)
}

fn manager_warning(user: &SourceUser) -> String {
    format!(
        "OneLogin user {} ({}) has manager_user_id {}, which matches nobody; provisioned without a manager",
        user.label(),
        user.id,
        user.manager_id
            .as_ref()
            .map(|id| id.0.as_str())
            .unwrap_or_default()
    )
}

fn encode_memberships(memberships: &Memberships) -> String {
    // Maps of strings and sets serialise without failing.
    serde_json::to_string(memberships).unwrap_or_default()
}

fn empty_read(full: bool) -> SourceRead {
    SourceRead {
        kind: SourceKind::OneLogin,
        full,
        users: Vec::new(),
        removed: Vec::new(),
        rejected: Vec::new(),
        warnings: Vec::new(),
        reasons: Default::default(),
        commit: SourceCommit::default(),
    }
}

/// `/api/2/users` with the page size, the fields and `query` (more filters).
fn users_path(query: &str) -> String {
    let mut path = format!("/api/2/users?limit={PAGE}&fields={}", encode(FIELDS));
    if !query.is_empty() {
        path.push('&');
        path.push_str(query);
    }
    path
}

/// ISO 8601 in UTC, to the second.
fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests;
