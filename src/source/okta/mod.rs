//! The Okta source (`[source] kind = "okta"`): the Management API read in full
//! (`GET /api/v1/users`, the configured groups' members) or incrementally
//! (`search=lastUpdated gt "<watermark>"`, which also returns DEPROVISIONED users, plus the
//! System Log's `group.user_membership.add/remove` events, because a membership change does not
//! touch a user's `lastUpdated`). Incremental reads take groups and managers of users outside the
//! batch from the source cache that every read keeps in the state. Only this module and its
//! children know Okta's JSON.

pub mod auth;
pub mod client;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use serde_json::value::RawValue;

use self::auth::OktaAuth;
use self::client::{OktaClient, OktaError};
use super::SourceError;
use super::groups::GroupFilter;
use crate::config::OktaConfig;
use crate::model::{
    Attrs, CacheUpdate, IdpId, ManagerRef, RejectedRecord, SourceCommit, SourceKind, SourceRead,
    SourceUser,
};
use crate::state::State;

/// The state key of the incremental watermark (server time at the start of the last read).
pub const WATERMARK_KEY: &str = "okta.watermark";
/// How far before the watermark an incremental read starts: Okta's search index is eventually
/// consistent (typically under a second), and clocks drift; re-reading a few users is harmless.
pub const OVERLAP: Duration = Duration::from_secs(120);
/// Users per page (Okta's maximum for `/api/v1/users`).
const USER_PAGE: usize = 200;
/// Members per page of `/api/v1/groups/{id}/users`.
const MEMBER_PAGE: usize = 1000;
/// Events per page of `/api/v1/logs` (Okta's maximum).
const LOG_PAGE: usize = 1000;
/// Ids per `search=id eq … or …` request.
const IDS_PER_SEARCH: usize = 20;
/// Timeout of one request to Okta.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of one request to Okta (429, 5xx, transport errors).
const MAX_RETRIES: u32 = 5;

/// The System Log events that change what users' `groups` hold: membership added or removed,
/// a group renamed, a group deleted.
const GROUP_EVENTS: &str = "eventType eq \"group.user_membership.add\" or eventType eq \"group.user_membership.remove\" or eventType eq \"group.profile.update\" or eventType eq \"group.lifecycle.delete\"";

/// State key: group id → name, as of the last read (so that a rename or a deletion, which names
/// the group by id, reaches the users who hold its old name).
pub const GROUP_NAMES_KEY: &str = "okta.group_names";

/// State key: the System Log events already applied inside the overlap window (`uuid` →
/// `published`), so that an event read again is never applied twice.
pub const APPLIED_EVENTS_KEY: &str = "okta.applied_events";

/// Builds the client for the configured org (reads the credentials now).
///
/// # Errors
/// [`SourceError::Secret`] when a credential is missing; [`SourceError::Unreadable`] when the
/// key cannot be used.
pub fn client(config: &OktaConfig) -> Result<OktaClient, SourceError> {
    let auth = match &config.client_id {
        None => OktaAuth::api_token(config.token.resolve()?),
        Some(client_id) => OktaAuth::service_app(
            &config.org_url,
            client_id.clone(),
            config.private_key.resolve()?,
            config.scopes.clone(),
        )
        .map_err(|error| unreadable(config, error))?,
    };
    OktaClient::new(config.org_url.clone(), auth, TIMEOUT, MAX_RETRIES)
        .map_err(|error| unreadable(config, error))
}

/// Reads Okta, in full or incrementally (see the module docs).
///
/// # Errors
/// [`SourceError`] when any page fails; nothing partial is returned.
pub async fn read(
    config: &OktaConfig,
    state: Option<&State>,
    full: bool,
) -> Result<SourceRead, SourceError> {
    let filter = GroupFilter::new(&config.groups).map_err(|message| SourceError::Unreadable {
        location: "source.okta.groups".into(),
        message,
    })?;
    let client = client(config)?;
    // A state without the group names (written by an older version) is read in full once.
    let watermark = match state {
        Some(state) if !full && state.meta(GROUP_NAMES_KEY)?.is_some() => state
            .meta(WATERMARK_KEY)?
            .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
            .map(|time| time.with_timezone(&Utc)),
        _ => None,
    };
    match (watermark, state) {
        (Some(watermark), Some(state)) => {
            read_incremental(&client, config, &filter, state, watermark).await
        }
        _ => read_full(&client, config, &filter)
            .await
            .map_err(ReadError::from),
    }
    .map_err(|error| match error {
        ReadError::Okta(error) => unreadable(config, error),
        ReadError::State(error) => SourceError::State(error),
    })
}

/// Finds one user by id, login or email, with groups and manager (for `preview`).
///
/// # Errors
/// [`SourceError`] when Okta cannot be read.
pub async fn read_one(
    config: &OktaConfig,
    _state: Option<&State>,
    wanted: &str,
) -> Result<Option<SourceRead>, SourceError> {
    let filter = GroupFilter::new(&config.groups).map_err(|message| SourceError::Unreadable {
        location: "source.okta.groups".into(),
        message,
    })?;
    let client = client(config)?;
    let fail = |error| unreadable(config, error);
    let mut found = client
        .get_json(&format!("/api/v1/users/{}", path_segment(wanted)))
        .await
        .map_err(fail)?;
    if found.is_none() && wanted.contains('@') {
        let mut matches = Vec::new();
        let query = format!("profile.email eq \"{}\"", escape(wanted));
        client
            .get_pages(&search_path(&query), None, |items| {
                matches.extend(items);
                Ok(false)
            })
            .await
            .map_err(fail)?;
        found = matches.into_iter().next();
    }
    let Some(raw) = found else {
        return Ok(None);
    };
    let mut user = match convert(raw, config.suspended_is_active) {
        Ok(user) => user,
        Err(rejected) => {
            return Err(SourceError::Unreadable {
                location: rejected.location,
                message: rejected.error,
            });
        }
    };
    let groups = client
        .get_json(&format!(
            "/api/v1/users/{}/groups",
            path_segment(&user.user.id.0)
        ))
        .await
        .map_err(fail)?
        .unwrap_or(Value::Array(Vec::new()));
    user.user.groups = group_names(&groups)
        .into_iter()
        .filter(|name| filter.matches(name))
        .collect();
    user.user.groups.sort();
    let mut warnings = Vec::new();
    if let Some(manager) = fetch_manager(&client, &user).await.map_err(fail)? {
        user.user.manager = Some(manager);
    } else if user.user.manager_id.is_some() || user.manager_login.is_some() {
        warnings.push(manager_warning(&user));
    }
    Ok(Some(SourceRead {
        kind: SourceKind::Okta,
        full: false,
        users: vec![Arc::new(user.user)],
        removed: Vec::new(),
        rejected: Vec::new(),
        warnings,
        reasons: Default::default(),
        commit: SourceCommit::default(),
    }))
}

/// Authenticates and reads one item from every endpoint a run uses: users, groups and the
/// System Log (membership changes, on every incremental run). Every endpoint is tried; a
/// refusal names the scope or admin role that is missing.
///
/// # Errors
/// [`SourceError::Secret`] or [`SourceError::Unreadable`] when the credentials cannot be built;
/// [`SourceError::Unreadable`] listing every endpoint that failed.
pub async fn check(config: &OktaConfig) -> Result<String, SourceError> {
    let client = client(config)?;
    let mut read = Vec::new();
    let mut failed = Vec::new();
    for (what, path) in [
        ("users", "/api/v1/users?limit=1"),
        ("groups", "/api/v1/groups?limit=1"),
        ("System Log", "/api/v1/logs?limit=1"),
    ] {
        let mut seen = 0;
        let result = client
            .get_pages(path, None, |items| {
                seen = items.len();
                Ok(false)
            })
            .await;
        match result {
            Ok(_) => read.push(format!("{what} ({seen})")),
            // Authentication failing fails every endpoint alike: say it once.
            Err(error @ (OktaError::Auth(_) | OktaError::Unauthorized { .. })) => {
                return Err(unreadable(config, error));
            }
            Err(error) => failed.push(error.to_string()),
        }
    }
    if !failed.is_empty() {
        return Err(unreadable(config, failed.join("; ")));
    }
    Ok(format!(
        "authenticated to {}; read a page of {}",
        config.org_url,
        read.join(", ")
    ))
}

/// Sets one profile attribute of an Okta user (`POST /api/v1/users/{id}` with a partial
/// profile), for write-back.
///
/// # Errors
/// A message that says what to change in Okta when it refuses.
pub async fn write_attribute(
    client: &OktaClient,
    idp_id: &IdpId,
    attribute: &str,
    value: &str,
) -> Result<(), String> {
    let mut profile = serde_json::Map::new();
    profile.insert(attribute.to_owned(), Value::String(value.to_owned()));
    let body = serde_json::json!({ "profile": profile });
    match client
        .post_json(&format!("/api/v1/users/{}", path_segment(&idp_id.0)), &body)
        .await
    {
        Ok(_) => Ok(()),
        Err(OktaError::Rejected {
            status: 400,
            summary,
            ..
        }) if summary.contains("not defined") || summary.contains("Property name") => Err(format!(
            "Okta has no profile attribute `{attribute}` ({summary}): add it to the user profile (Directory → Profile Editor → Okta user, type string) or change [writeback] attribute"
        )),
        Err(error @ OktaError::Forbidden { .. }) => Err(format!(
            "{error}; write-back needs the okta.users.manage scope (or an API token of an admin who may edit users)"
        )),
        Err(error) => Err(error.to_string()),
    }
}

fn unreadable(config: &OktaConfig, error: impl std::fmt::Display) -> SourceError {
    SourceError::Unreadable {
        location: format!("Okta {}", config.org_url.as_str().trim_end_matches('/')),
        message: error.to_string(),
    }
}

/// An incremental read fails on Okta or on the state's cache.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Okta(#[from] OktaError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// A converted Okta user plus what is needed to resolve its manager.
#[derive(Debug, Clone)]
struct OktaUser {
    user: SourceUser,
    /// `profile.manager` when it is used as the manager's login (no `managerId`).
    manager_login: Option<String>,
}

async fn read_full(
    client: &OktaClient,
    config: &OktaConfig,
    filter: &GroupFilter,
) -> Result<SourceRead, OktaError> {
    let mut read = empty_read(true);
    // Each page is converted as it arrives, while the next one is on its way.
    let mut users = Converted::default();
    client
        .get_pages_of(
            &format!("/api/v1/users?limit={USER_PAGE}"),
            None,
            |items: Vec<RawUser>| {
                users.extend(items, config.suspended_is_active, &mut read.rejected);
                Ok(true)
            },
        )
        .await?;
    let started = client.first_server_date().unwrap_or_else(Utc::now);
    let (memberships, group_names) = read_memberships(client, filter).await?;
    let mut users = users.users;
    if !memberships.is_empty() {
        for user in &mut users {
            if let Some(groups) = memberships.get(&user.user.id.0) {
                user.user.groups = groups.iter().cloned().collect();
            }
        }
    }
    let managers = Directory::of(&users).managers(&users);
    for (index, manager) in managers.into_iter().enumerate() {
        match manager {
            Some(manager) => users[index].user.manager = Some(users[manager].user.as_manager()),
            None if users[index].user.manager_id.is_some()
                || users[index].manager_login.is_some() =>
            {
                read.warnings.push(manager_warning(&users[index]));
            }
            None => {}
        }
    }
    read.users = users.into_iter().map(|user| Arc::new(user.user)).collect();
    read.commit = SourceCommit {
        cursors: vec![
            (WATERMARK_KEY.to_owned(), format_time(started)),
            (
                GROUP_NAMES_KEY.to_owned(),
                serde_json::to_string(&group_names).unwrap_or_default(),
            ),
            (APPLIED_EVENTS_KEY.to_owned(), "{}".to_owned()),
        ],
        tables: Vec::new(),
        cache: CacheUpdate::Replace(read.users.clone()),
    };
    Ok(read)
}

async fn read_incremental(
    client: &OktaClient,
    config: &OktaConfig,
    filter: &GroupFilter,
    state: &State,
    watermark: DateTime<Utc>,
) -> Result<SourceRead, ReadError> {
    let since = watermark - chrono::Duration::from_std(OVERLAP).unwrap_or_default();
    let since_text = format_time(since);
    let mut raw: Vec<RawUser> = Vec::new();
    client
        .get_pages_of(
            &search_path(&format!("lastUpdated gt \"{since_text}\"")),
            None,
            |items: Vec<RawUser>| {
                raw.extend(items);
                Ok(true)
            },
        )
        .await?;
    let started = client.first_server_date().unwrap_or_else(Utc::now);

    // Group membership changes since the watermark, in the order Okta recorded them.
    let mut events = Vec::new();
    client
        .get_pages(
            &format!(
                "/api/v1/logs?since={}&sortOrder=ASCENDING&limit={LOG_PAGE}&filter={}",
                encode(&since_text),
                encode(GROUP_EVENTS)
            ),
            Some(LOG_PAGE),
            |items| {
                events.extend(items);
                Ok(true)
            },
        )
        .await?;
    // What the events mean, applied once each: per user and group the latest event by
    // `published` (Okta may return them out of order), renames and deletions of groups.
    let known_names: BTreeMap<String, String> = state
        .meta(GROUP_NAMES_KEY)?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let applied: BTreeMap<String, String> = state
        .meta(APPLIED_EVENTS_KEY)?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let mut group_changes = GroupChanges::of(&events, &applied, &known_names);
    for id in group_changes.renamed_ids() {
        let name = client
            .get_json(&format!("/api/v1/groups/{}", path_segment(&id)))
            .await?
            .and_then(|group| group.pointer("/profile/name")?.as_str().map(str::to_owned));
        group_changes.set_new_name(&id, name);
    }

    let mut read = empty_read(false);
    let mut users = convert_all(raw, config.suspended_is_active, &mut read.rejected);
    let mut known: HashMap<String, usize> = users
        .iter()
        .enumerate()
        .map(|(index, user)| (user.user.id.0.clone(), index))
        .collect();
    let cached = |id: &str| state.cached_source_user(&IdpId(id.to_owned()));
    let from_cache = |user: SourceUser| OktaUser {
        manager_login: user
            .attrs
            .get("manager")
            .as_ref()
            .and_then(Value::as_str)
            .filter(|_| user.manager_id.is_none())
            .map(str::to_owned),
        user,
    };

    // Members of renamed or deleted groups: found in the cache by the old name (no request per
    // user); a group renamed into the filter is read whole.
    let mut reasons: BTreeMap<IdpId, String> = BTreeMap::new();
    let mut joined: Vec<(String, String)> = Vec::new();
    for event in &group_changes.groups {
        if let Some(old) = &event.old_name
            && filter.matches(old)
        {
            for user in state.cached_members_of(old)? {
                reasons
                    .entry(user.id.clone())
                    .or_insert_with(|| event.reason());
                if !known.contains_key(&user.id.0) {
                    known.insert(user.id.0.clone(), users.len());
                    users.push(from_cache(user));
                }
            }
        }
        if let Some(new) = &event.new_name
            && filter.matches(new)
            && !event
                .old_name
                .as_deref()
                .is_some_and(|old| filter.matches(old))
        {
            let mut members = Vec::new();
            client
                .get_pages(
                    &format!(
                        "/api/v1/groups/{}/users?limit={MEMBER_PAGE}",
                        path_segment(&event.id)
                    ),
                    None,
                    |items| {
                        members.extend(
                            items
                                .iter()
                                .filter_map(|item| item.get("id").and_then(Value::as_str))
                                .map(str::to_owned),
                        );
                        Ok(true)
                    },
                )
                .await?;
            for member in members {
                reasons
                    .entry(IdpId(member.clone()))
                    .or_insert_with(|| event.reason());
                joined.push((member, new.clone()));
            }
        }
    }
    let memberships: Vec<(String, String, bool)> = group_changes
        .memberships
        .iter()
        .filter(|change| !change.already_applied)
        .filter_map(|change| {
            let name = group_changes.name_of(&change.group_id, &change.group)?;
            Some((change.user_id.clone(), name, change.added))
        })
        .chain(joined.into_iter().map(|(user, name)| (user, name, true)))
        .filter(|(_, name, _)| filter.matches(name))
        .collect();

    // Users whose membership changed but whose profile did not: from the cache, else from Okta.
    let mut missing = Vec::new();
    for (user_id, _, _) in &memberships {
        if known.contains_key(user_id) || missing.contains(user_id) {
            continue;
        }
        match cached(user_id)? {
            Some(user) => {
                known.insert(user_id.clone(), users.len());
                users.push(from_cache(user));
            }
            None => missing.push(user_id.clone()),
        }
    }
    for fetched in fetch_by_ids(
        client,
        &missing,
        config.suspended_is_active,
        &mut read.rejected,
    )
    .await?
    {
        known.insert(fetched.user.id.0.clone(), users.len());
        users.push(fetched);
    }

    // Groups: what the cache knew, with renames, deletions and memberships applied.
    for user in &mut users {
        let mut groups: BTreeSet<String> = cached(&user.user.id.0)?
            .map(|cached| cached.groups.into_iter().collect())
            .unwrap_or_default();
        for event in &group_changes.groups {
            if let Some(old) = &event.old_name
                && groups.remove(old)
                && let Some(new) = &event.new_name
                && filter.matches(new)
            {
                groups.insert(new.clone());
            }
        }
        for (_, name, added) in memberships.iter().filter(|c| c.0 == user.user.id.0) {
            if *added {
                groups.insert(name.clone());
            } else {
                groups.remove(name);
            }
        }
        user.user.groups = groups.into_iter().collect();
    }

    // Managers: in the batch, else in the cache, else fetched from Okta.
    let in_batch = Directory::of(&users).managers(&users);
    let in_batch: Vec<Option<std::sync::Arc<ManagerRef>>> = in_batch
        .into_iter()
        .map(|manager| manager.map(|manager| users[manager].user.as_manager()))
        .collect();
    let mut unresolved = Vec::new();
    for ((index, user), in_batch) in users.iter_mut().enumerate().zip(in_batch) {
        let manager = match in_batch {
            Some(manager) => Some(manager),
            None => match &user.user.manager_id {
                Some(id) => cached(&id.0)?.map(|cached| cached.as_manager()),
                None => None,
            },
        };
        match manager {
            Some(manager) => user.user.manager = Some(manager),
            None if user.user.manager_id.is_some() || user.manager_login.is_some() => {
                unresolved.push(index);
            }
            None => {}
        }
    }
    for index in unresolved {
        match fetch_manager(client, &users[index]).await? {
            Some(manager) => users[index].user.manager = Some(manager),
            None => read.warnings.push(manager_warning(&users[index])),
        }
    }

    read.users = users.into_iter().map(|user| Arc::new(user.user)).collect();
    read.reasons = reasons;
    let names = group_changes.names_after(&known_names);
    let applied = group_changes.applied_after(&since_text);
    read.commit = SourceCommit {
        cursors: vec![
            (WATERMARK_KEY.to_owned(), format_time(started)),
            (
                GROUP_NAMES_KEY.to_owned(),
                serde_json::to_string(&names).unwrap_or_default(),
            ),
            (
                APPLIED_EVENTS_KEY.to_owned(),
                serde_json::to_string(&applied).unwrap_or_default(),
            ),
        ],
        tables: Vec::new(),
        cache: CacheUpdate::Merge {
            upsert: read.users.clone(),
            remove: Vec::new(),
        },
    };
    Ok(read)
}

/// The members of every group the filter selects (user id → group names), and the name of
/// every group by id.
async fn read_memberships(
    client: &OktaClient,
    filter: &GroupFilter,
) -> Result<(HashMap<String, BTreeSet<String>>, BTreeMap<String, String>), OktaError> {
    let mut groups = Vec::new();
    client
        .get_pages(
            &format!("/api/v1/groups?limit={USER_PAGE}"),
            None,
            |items| {
                groups.extend(items);
                Ok(true)
            },
        )
        .await?;
    let mut memberships: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut names = BTreeMap::new();
    for group in &groups {
        let (Some(id), Some(name)) = (
            group.get("id").and_then(Value::as_str),
            group.pointer("/profile/name").and_then(Value::as_str),
        ) else {
            continue;
        };
        names.insert(id.to_owned(), name.to_owned());
        if !filter.matches(name) {
            continue;
        }
        client
            .get_pages(
                &format!(
                    "/api/v1/groups/{}/users?limit={MEMBER_PAGE}",
                    path_segment(id)
                ),
                None,
                |members| {
                    for member in members {
                        if let Some(user_id) = member.get("id").and_then(Value::as_str) {
                            memberships
                                .entry(user_id.to_owned())
                                .or_default()
                                .insert(name.to_owned());
                        }
                    }
                    Ok(true)
                },
            )
            .await?;
    }
    Ok((memberships, names))
}

/// Users by id, through `search=id eq "…" or …` in small batches.
async fn fetch_by_ids(
    client: &OktaClient,
    ids: &[String],
    suspended_is_active: bool,
    rejected: &mut Vec<RejectedRecord>,
) -> Result<Vec<OktaUser>, OktaError> {
    let mut raw: Vec<RawUser> = Vec::new();
    for chunk in ids.chunks(IDS_PER_SEARCH) {
        let query = chunk
            .iter()
            .map(|id| format!("id eq \"{}\"", escape(id)))
            .collect::<Vec<_>>()
            .join(" or ");
        client
            .get_pages_of(&search_path(&query), None, |items: Vec<RawUser>| {
                raw.extend(items);
                Ok(true)
            })
            .await?;
    }
    Ok(convert_all(raw, suspended_is_active, rejected))
}

/// Looks the manager of `user` up in Okta (by id, else by login).
async fn fetch_manager(
    client: &OktaClient,
    user: &OktaUser,
) -> Result<Option<std::sync::Arc<ManagerRef>>, OktaError> {
    let key = match (&user.user.manager_id, &user.manager_login) {
        (Some(id), _) => id.0.clone(),
        (None, Some(login)) => login.clone(),
        (None, None) => return Ok(None),
    };
    let Some(raw) = client
        .get_json(&format!("/api/v1/users/{}", path_segment(&key)))
        .await?
    else {
        return Ok(None);
    };
    Ok(convert(raw, false)
        .ok()
        .map(|manager| manager.user.as_manager()))
}

/// Ids and logins of a batch, for manager resolution: positions in the batch, so that building
/// it copies nothing but the logins that need lower-casing.
struct Directory<'a> {
    users: &'a [OktaUser],
    by_id: HashMap<&'a str, usize>,
    by_login: HashMap<Cow<'a, str>, usize>,
}

impl<'a> Directory<'a> {
    fn of(users: &'a [OktaUser]) -> Directory<'a> {
        let mut by_id = HashMap::with_capacity(users.len());
        let mut by_login = HashMap::with_capacity(users.len());
        for (index, user) in users.iter().enumerate() {
            if let Some(login) = &user.user.login {
                by_login.insert(lowercase(login), index);
            }
            by_id.insert(user.user.id.0.as_str(), index);
        }
        Directory {
            users,
            by_id,
            by_login,
        }
    }

    /// The position of each user's manager in the batch (see [`Directory::manager_of`]).
    fn managers(&self, users: &[OktaUser]) -> Vec<Option<usize>> {
        users.iter().map(|user| self.manager_of(user)).collect()
    }

    /// `profile.managerId`, else `profile.manager` as a login: the manager's position in the
    /// batch, unless it is the user.
    fn manager_of(&self, user: &OktaUser) -> Option<usize> {
        let manager = match (&user.user.manager_id, &user.manager_login) {
            (Some(id), _) => self.by_id.get(id.0.as_str()),
            (None, Some(login)) => self.by_login.get(&lowercase(login)),
            (None, None) => None,
        }
        .copied()?;
        (self.users[manager].user.id != user.user.id).then_some(manager)
    }
}

/// `text.to_lowercase()`, borrowed when that changes nothing (checked for ASCII only).
fn lowercase(text: &str) -> Cow<'_, str> {
    if text.is_ascii() && !text.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.to_lowercase())
    }
}

fn manager_warning(user: &OktaUser) -> String {
    let reference = match (&user.user.manager_id, &user.manager_login) {
        (Some(id), _) => format!("managerId {id}"),
        (None, Some(login)) => format!("manager {login}"),
        (None, None) => "no manager".into(),
    };
    format!(
        "Okta user {} ({}) has {reference}, which matches nobody; provisioned without a manager",
        user.user.label(),
        user.user.id
    )
}

fn convert_all(
    raw: Vec<RawUser>,
    suspended_is_active: bool,
    rejected: &mut Vec<RejectedRecord>,
) -> Vec<OktaUser> {
    let mut users = Converted::default();
    users.extend(raw, suspended_is_active, rejected);
    users.users
}

/// Users converted so far, one per id.
#[derive(Default)]
struct Converted {
    users: Vec<OktaUser>,
    seen: std::collections::HashSet<String>,
}

impl Converted {
    /// Converts `raw` and appends the users not seen yet; rejected records go to `rejected`.
    fn extend(
        &mut self,
        raw: Vec<RawUser>,
        suspended_is_active: bool,
        rejected: &mut Vec<RejectedRecord>,
    ) {
        self.users.reserve(raw.len());
        for item in raw {
            match convert_raw(item, suspended_is_active) {
                // Okta's search may return a user twice across pages while it changes; keep one.
                Ok(user) if self.seen.insert(user.user.id.0.clone()) => self.users.push(user),
                Ok(_) => {}
                Err(record) => rejected.push(record),
            }
        }
    }
}

/// The parts of an Okta user object that the source reads. A page is deserialized straight
/// into these: the rest of each object (`_links`, `credentials`, `type`, the timestamps) is
/// skipped without being built. Any JSON value is accepted, so that an odd record is rejected
/// on its own by [`convert_raw`] rather than failing its page: a field of the wrong type is
/// `None` (as `Value::as_str` would give), an item that is not an object has no fields.
#[derive(Debug, Default)]
struct RawUser {
    /// `id`, when it is a string.
    id: Option<String>,
    /// `status`, when it is a string.
    status: Option<String>,
    /// `profile`, whatever it is (`None` when absent), as the JSON text it came in: it becomes
    /// [`SourceUser::attrs`] as it is, and only the fields [`SourceUser`] has slots for are
    /// read out of it ([`ProfileFields`]).
    profile: Option<Box<RawValue>>,
}

impl RawUser {
    /// The same parts of a user object already parsed (single users, tests).
    fn from_value(raw: Value) -> RawUser {
        let Value::Object(mut object) = raw else {
            return RawUser::default();
        };
        let text = |value: Option<Value>| match value {
            Some(Value::String(text)) => Some(text),
            _ => None,
        };
        RawUser {
            id: text(object.remove("id")),
            status: text(object.remove("status")),
            // Serialising a `Value` cannot fail (its keys are strings).
            profile: object
                .remove("profile")
                .and_then(|profile| serde_json::value::to_raw_value(&profile).ok()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for RawUser {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RawUser, D::Error> {
        deserializer.deserialize_any(RawUserVisitor)
    }
}

/// Reads a [`RawUser`] out of any JSON value (see there).
struct RawUserVisitor;

impl<'de> serde::de::Visitor<'de> for RawUserVisitor {
    type Value = RawUser;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an Okta user object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawUser, A::Error> {
        let text = |value: Value| match value {
            Value::String(text) => Some(text),
            _ => None,
        };
        let mut user = RawUser::default();
        // As with `Value`, a repeated key's last value wins.
        while let Some(field) = map.next_key::<UserField>()? {
            match field {
                UserField::Id => user.id = text(map.next_value()?),
                UserField::Status => user.status = text(map.next_value()?),
                UserField::Profile => user.profile = Some(map.next_value()?),
                UserField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(user)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawUser, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(RawUser::default())
    }

    fn visit_bool<E>(self, _: bool) -> Result<RawUser, E> {
        Ok(RawUser::default())
    }

    fn visit_i64<E>(self, _: i64) -> Result<RawUser, E> {
        Ok(RawUser::default())
    }

    fn visit_u64<E>(self, _: u64) -> Result<RawUser, E> {
        Ok(RawUser::default())
    }

    fn visit_f64<E>(self, _: f64) -> Result<RawUser, E> {
        Ok(RawUser::default())
    }

    fn visit_str<E>(self, _: &str) -> Result<RawUser, E> {
        Ok(RawUser::default())
    }

    fn visit_unit<E>(self) -> Result<RawUser, E> {
        Ok(RawUser::default())
    }
}

/// A key of an Okta user object, read without allocating.
enum UserField {
    Id,
    Status,
    Profile,
    Other,
}

impl<'de> serde::Deserialize<'de> for UserField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<UserField, D::Error> {
        struct FieldVisitor;
        impl serde::de::Visitor<'_> for FieldVisitor {
            type Value = UserField;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a key")
            }

            fn visit_str<E>(self, key: &str) -> Result<UserField, E> {
                Ok(match key {
                    "id" => UserField::Id,
                    "status" => UserField::Status,
                    "profile" => UserField::Profile,
                    _ => UserField::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// Turns one Okta user object into a [`SourceUser`] (groups and manager resolved later).
fn convert(raw: Value, suspended_is_active: bool) -> Result<OktaUser, RejectedRecord> {
    convert_raw(RawUser::from_value(raw), suspended_is_active)
}

/// Turns the parts of one Okta user object into a [`SourceUser`] (groups and manager resolved
/// later).
fn convert_raw(raw: RawUser, suspended_is_active: bool) -> Result<OktaUser, RejectedRecord> {
    let RawUser {
        id,
        status,
        profile,
    } = raw;
    let Some(id) = id.filter(|id| !id.is_empty()) else {
        return Err(RejectedRecord {
            idp_id: None,
            location: "Okta user without an id".into(),
            error: "the user object has no `id`".into(),
        });
    };
    let reject = |error: String| RejectedRecord {
        idp_id: Some(IdpId(id.clone())),
        location: format!("Okta user {id}"),
        error,
    };
    let Some(status) = status else {
        return Err(reject("the user object has no `status`".into()));
    };
    let attrs = match profile.map(Attrs::from_json_object) {
        Some(Ok(Some(attrs))) => attrs,
        Some(Err(error)) => {
            return Err(reject(format!(
                "the `profile` object cannot be read: {error}"
            )));
        }
        Some(Ok(None)) | None => {
            return Err(reject("the user object has no `profile` object".into()));
        }
    };
    // The profile is valid JSON and an object, and any values are accepted: this cannot fail.
    let fields: ProfileFields = serde_json::from_str(attrs.as_json())
        .map_err(|error| reject(format!("the `profile` object cannot be read: {error}")))?;
    let text = |value: ProfileField, field: &str| -> Result<Option<String>, RejectedRecord> {
        match value {
            ProfileField::Absent => Ok(None),
            ProfileField::Text(text) => Ok(text),
            ProfileField::Other(other) => Err(reject(format!(
                "profile.{field} must be a string, found {other}"
            ))),
        }
    };
    let active = match status.as_str() {
        "ACTIVE" | "PASSWORD_EXPIRED" | "LOCKED_OUT" | "RECOVERY" => true,
        "SUSPENDED" => suspended_is_active,
        _ => false,
    };
    // Checked in this order, so that a record with several bad fields names the same one.
    let manager_id = text(fields.manager_id, "managerId")?.map(IdpId);
    let manager_login = if manager_id.is_none() {
        text(fields.manager, "manager")?
    } else {
        None
    };
    let login = text(fields.login, "login")?;
    let email = text(fields.email, "email")?;
    let given_name = text(fields.first_name, "firstName")?;
    let family_name = text(fields.last_name, "lastName")?;
    let display_name = text(fields.display_name, "displayName")?;
    let department = text(fields.department, "department")?;
    let title = text(fields.title, "title")?;
    let employee_id = text(fields.employee_number, "employeeNumber")?;
    Ok(OktaUser {
        user: SourceUser {
            id: IdpId(id),
            login,
            email,
            given_name,
            family_name,
            display_name,
            active,
            status: Some(status),
            department,
            title,
            employee_id,
            manager_id,
            manager: None,
            groups: Vec::new(),
            attrs,
        },
        manager_login,
    })
}

/// The profile attributes that [`SourceUser`] has fields for, read out of the profile's text
/// in one pass: other attributes are skipped unbuilt, and a key is matched without being
/// allocated. As with `Value`, a repeated key's last value wins.
#[derive(Default)]
struct ProfileFields {
    login: ProfileField,
    email: ProfileField,
    first_name: ProfileField,
    last_name: ProfileField,
    display_name: ProfileField,
    department: ProfileField,
    title: ProfileField,
    employee_number: ProfileField,
    manager_id: ProfileField,
    manager: ProfileField,
}

/// One profile field, read as `convert_raw` takes it: text when it is a string or a number, the
/// JSON of anything else so that the rejection can show it. Nothing is decided here, so that
/// a record with several bad fields names the one `convert_raw` checks first.
#[derive(Default)]
enum ProfileField {
    /// Not in the profile.
    #[default]
    Absent,
    /// A string (`None` when null or blank) or a number (as `Number::to_string` writes it).
    Text(Option<String>),
    /// Anything else, as compact JSON.
    Other(String),
}

impl<'de> serde::Deserialize<'de> for ProfileFields {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ProfileFields, D::Error> {
        deserializer.deserialize_map(ProfileFieldsVisitor)
    }
}

struct ProfileFieldsVisitor;

impl<'de> serde::de::Visitor<'de> for ProfileFieldsVisitor {
    type Value = ProfileFields;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an Okta profile object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<ProfileFields, A::Error> {
        let mut fields = ProfileFields::default();
        while let Some(key) = map.next_key::<ProfileKey>()? {
            let slot = match key {
                ProfileKey::Login => &mut fields.login,
                ProfileKey::Email => &mut fields.email,
                ProfileKey::FirstName => &mut fields.first_name,
                ProfileKey::LastName => &mut fields.last_name,
                ProfileKey::DisplayName => &mut fields.display_name,
                ProfileKey::Department => &mut fields.department,
                ProfileKey::Title => &mut fields.title,
                ProfileKey::EmployeeNumber => &mut fields.employee_number,
                ProfileKey::ManagerId => &mut fields.manager_id,
                ProfileKey::Manager => &mut fields.manager,
                ProfileKey::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value()?;
        }
        Ok(fields)
    }
}

impl<'de> serde::Deserialize<'de> for ProfileField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ProfileField, D::Error> {
        deserializer.deserialize_any(ProfileFieldVisitor)
    }
}

struct ProfileFieldVisitor;

impl ProfileFieldVisitor {
    fn number(number: serde_json::Number) -> ProfileField {
        ProfileField::Text(Some(number.to_string()))
    }
}

impl<'de> serde::de::Visitor<'de> for ProfileFieldVisitor {
    type Value = ProfileField;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_str<E>(self, text: &str) -> Result<ProfileField, E> {
        Ok(ProfileField::Text(
            (!text.trim().is_empty()).then(|| text.to_owned()),
        ))
    }

    fn visit_unit<E>(self) -> Result<ProfileField, E> {
        Ok(ProfileField::Text(None))
    }

    fn visit_i64<E>(self, number: i64) -> Result<ProfileField, E> {
        Ok(Self::number(number.into()))
    }

    fn visit_u64<E>(self, number: u64) -> Result<ProfileField, E> {
        Ok(Self::number(number.into()))
    }

    fn visit_f64<E>(self, number: f64) -> Result<ProfileField, E> {
        // JSON has no infinities or NaN, so the number always exists.
        Ok(match serde_json::Number::from_f64(number) {
            Some(number) => Self::number(number),
            None => ProfileField::Other(number.to_string()),
        })
    }

    fn visit_bool<E>(self, value: bool) -> Result<ProfileField, E> {
        Ok(ProfileField::Other(value.to_string()))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<ProfileField, A::Error> {
        let value = <Value as serde::Deserialize>::deserialize(
            serde::de::value::SeqAccessDeserializer::new(seq),
        )?;
        Ok(ProfileField::Other(value.to_string()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ProfileField, A::Error> {
        let value = <Value as serde::Deserialize>::deserialize(
            serde::de::value::MapAccessDeserializer::new(map),
        )?;
        Ok(ProfileField::Other(value.to_string()))
    }
}

/// A key of an Okta profile, read without allocating.
enum ProfileKey {
    Login,
    Email,
    FirstName,
    LastName,
    DisplayName,
    Department,
    Title,
    EmployeeNumber,
    ManagerId,
    Manager,
    Other,
}

impl<'de> serde::Deserialize<'de> for ProfileKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ProfileKey, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = ProfileKey;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a key")
            }

            fn visit_str<E>(self, key: &str) -> Result<ProfileKey, E> {
                Ok(match key {
                    "login" => ProfileKey::Login,
                    "email" => ProfileKey::Email,
                    "firstName" => ProfileKey::FirstName,
                    "lastName" => ProfileKey::LastName,
                    "displayName" => ProfileKey::DisplayName,
                    "department" => ProfileKey::Department,
                    "title" => ProfileKey::Title,
                    "employeeNumber" => ProfileKey::EmployeeNumber,
                    "managerId" => ProfileKey::ManagerId,
                    "manager" => ProfileKey::Manager,
                    _ => ProfileKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// One `group.user_membership.add/remove` event.
#[derive(Debug, Clone, PartialEq)]
struct MembershipChange {
    /// The user's id.
    user_id: String,
    /// The group's id.
    group_id: String,
    /// The group's name as the event gives it.
    group: String,
    /// Added, or removed.
    added: bool,
    /// Applied by an earlier run (read again inside the overlap window).
    already_applied: bool,
}

/// A group renamed or deleted, as it reaches the users' `groups`.
#[derive(Debug, Clone, PartialEq)]
struct GroupEvent {
    /// The group's id.
    id: String,
    /// The name the cache knows it by (none for a group the state never saw).
    old_name: Option<String>,
    /// Its name now; none when it is deleted.
    new_name: Option<String>,
}

impl GroupEvent {
    /// Why its members are updated (the action's `reason`).
    fn reason(&self) -> String {
        let old = self.old_name.as_deref().unwrap_or(&self.id);
        match &self.new_name {
            Some(new) => format!("group renamed: {old} → {new}"),
            None => format!("group deleted: {old}"),
        }
    }
}

/// What a window of System Log events means for users' `groups`: per user and group only the
/// event with the latest `published` counts (Okta may return them out of order), an event is
/// applied once (by `uuid`), and groups renamed or deleted are listed.
#[derive(Debug, Clone, Default, PartialEq)]
struct GroupChanges {
    /// The latest membership event per user and group.
    memberships: Vec<MembershipChange>,
    /// Groups renamed (their new name still to be read) or deleted.
    groups: Vec<GroupEvent>,
    /// Every event of the window: `uuid` → `published`.
    seen: BTreeMap<String, String>,
}

impl GroupChanges {
    /// Reads the events; `applied` are those an earlier run applied, `known` the group names
    /// the state holds by id.
    fn of(
        events: &[Value],
        applied: &BTreeMap<String, String>,
        known: &BTreeMap<String, String>,
    ) -> GroupChanges {
        let mut changes = GroupChanges::default();
        // (user, group) → (published, position, change): the latest wins, ties by position.
        let mut latest: BTreeMap<(String, String), (String, usize, MembershipChange)> =
            BTreeMap::new();
        for (position, event) in events.iter().enumerate() {
            let text = |pointer: &str| event.pointer(pointer).and_then(Value::as_str);
            let (Some(uuid), Some(published), Some(kind)) =
                (text("/uuid"), text("/published"), text("/eventType"))
            else {
                continue;
            };
            if text("/outcome/result") == Some("FAILURE") {
                continue;
            }
            changes.seen.insert(uuid.to_owned(), published.to_owned());
            let already_applied = applied.contains_key(uuid);
            let targets = event
                .get("target")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let of_type = |wanted: &str| {
                targets
                    .iter()
                    .find(|target| target.get("type").and_then(Value::as_str) == Some(wanted))
            };
            let field = |target: Option<&Value>, name: &str| {
                target
                    .and_then(|target| target.get(name))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            let group = of_type("UserGroup");
            let Some(group_id) = field(group, "id") else {
                continue;
            };
            match kind {
                "group.user_membership.add" | "group.user_membership.remove" => {
                    let (Some(user_id), Some(name)) =
                        (field(of_type("User"), "id"), field(group, "displayName"))
                    else {
                        continue;
                    };
                    let change = MembershipChange {
                        user_id: user_id.clone(),
                        group_id: group_id.clone(),
                        group: name,
                        added: kind == "group.user_membership.add",
                        already_applied,
                    };
                    let key = (user_id, group_id);
                    let newer = latest
                        .get(&key)
                        .is_none_or(|(when, at, _)| (published, position) >= (when.as_str(), *at));
                    if newer {
                        latest.insert(key, (published.to_owned(), position, change));
                    }
                }
                "group.profile.update" | "group.lifecycle.delete" if !already_applied => {
                    let deleted = kind == "group.lifecycle.delete";
                    match changes.groups.iter_mut().find(|g| g.id == group_id) {
                        Some(existing) if deleted => existing.new_name = None,
                        Some(_) => {}
                        None => changes.groups.push(GroupEvent {
                            old_name: known.get(&group_id).cloned(),
                            // A rename's new name is read from Okta ([`GroupChanges::set_new_name`]).
                            new_name: (!deleted).then(|| group_id.clone()),
                            id: group_id,
                        }),
                    }
                }
                _ => {}
            }
        }
        changes.memberships = latest.into_values().map(|(_, _, change)| change).collect();
        changes
    }

    /// The groups whose new name is to be read.
    fn renamed_ids(&self) -> Vec<String> {
        self.groups
            .iter()
            .filter(|group| group.new_name.is_some())
            .map(|group| group.id.clone())
            .collect()
    }

    /// The name a renamed group has now (`None`: it is gone since). A profile update that
    /// left the name as it was changes nobody.
    fn set_new_name(&mut self, id: &str, name: Option<String>) {
        for group in self.groups.iter_mut().filter(|group| group.id == id) {
            group.new_name = name.clone();
        }
        self.groups
            .retain(|group| group.new_name.is_none() || group.new_name != group.old_name);
    }

    /// The name a membership event's group goes by now: its new name when renamed, none when
    /// deleted, else the event's.
    fn name_of(&self, group_id: &str, event_name: &str) -> Option<String> {
        match self.groups.iter().find(|group| group.id == group_id) {
            Some(group) => group.new_name.clone(),
            None => Some(event_name.to_owned()),
        }
    }

    /// The group names by id after these changes.
    fn names_after(&self, known: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut names = known.clone();
        for change in &self.memberships {
            names
                .entry(change.group_id.clone())
                .or_insert_with(|| change.group.clone());
        }
        for group in &self.groups {
            match &group.new_name {
                Some(name) => names.insert(group.id.clone(), name.clone()),
                None => names.remove(&group.id),
            };
        }
        names
    }

    /// The events to remember as applied: those published at or after `since` (the start of
    /// the next run's overlap window at the earliest).
    fn applied_after(&self, since: &str) -> BTreeMap<String, String> {
        self.seen
            .iter()
            .filter(|(_, published)| published.as_str() >= since)
            .map(|(uuid, published)| (uuid.clone(), published.clone()))
            .collect()
    }
}

fn group_names(groups: &Value) -> Vec<String> {
    groups
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .filter_map(|group| group.pointer("/profile/name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn empty_read(full: bool) -> SourceRead {
    SourceRead {
        kind: SourceKind::Okta,
        full,
        users: Vec::new(),
        removed: Vec::new(),
        rejected: Vec::new(),
        warnings: Vec::new(),
        reasons: Default::default(),
        commit: SourceCommit::default(),
    }
}

fn search_path(query: &str) -> String {
    format!("/api/v1/users?limit={USER_PAGE}&search={}", encode(query))
}

/// Okta's date format (`YYYY-MM-DDTHH:mm:ss.SSSZ`).
fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn path_segment(text: &str) -> String {
    encode(text)
}

/// Escapes a value for a quoted string in an Okta search expression.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests;
