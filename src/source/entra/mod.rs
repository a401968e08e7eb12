//! The Microsoft Entra ID source (`[source] kind = "entra"`), through Microsoft Graph's delta
//! queries: `/v1.0/users/delta` (with `$select` of the fields the model needs, the configured
//! `extra_attributes`, and `manager`) and `/v1.0/groups/delta` (`displayName`, `members`). A full
//! read starts both from scratch; an incremental read follows the stored delta links, which
//! return only what changed (possibly only the changed properties), `@removed` users and
//! `manager@delta` / `members@delta` changes; those are merged over the source cache kept in the
//! state. An expired delta link (`400 syncStateNotFound`, `410 Gone`) falls back to a full read,
//! which the planner matches against the state, so nothing is created twice. Only this module
//! and its children know Graph's JSON.

pub mod auth;
pub mod client;
pub mod membership;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use self::auth::GraphAuth;
use self::client::{GraphClient, GraphError};
use super::SourceError;
use super::groups::GroupFilter;
use crate::config::EntraConfig;
use crate::model::{
    Attrs, CacheUpdate, IdpId, ManagerRef, RejectedRecord, SourceCommit, SourceKind, SourceRead,
    SourceUser,
};
use crate::state::{State, StateError};

/// The state key of the users delta link.
pub const USERS_LINK_KEY: &str = "entra.users_delta_link";
/// The state key of the groups delta link.
pub const GROUPS_LINK_KEY: &str = "entra.groups_delta_link";
/// The state key of the known groups (id → display name, JSON), because a later groups delta
/// may name a changed group by id only.
pub const GROUP_NAMES_KEY: &str = "entra.group_names";
/// The properties every read selects (the model's fields); `extra_attributes` are added.
pub const BASE_SELECT: [&str; 10] = [
    "id",
    "userPrincipalName",
    "mail",
    "givenName",
    "surname",
    "displayName",
    "accountEnabled",
    "department",
    "jobTitle",
    "employeeId",
];
/// Timeout of one request to Graph.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of one request to Graph (429, 5xx, transport errors).
const MAX_RETRIES: u32 = 5;

/// Builds the Graph client (reads the credentials now).
///
/// # Errors
/// [`SourceError::Secret`] when a credential is missing; [`SourceError::Unreadable`] when the
/// certificate or key cannot be used.
pub fn client(config: &EntraConfig) -> Result<GraphClient, SourceError> {
    let scope = format!(
        "{}/.default",
        config.graph_url.as_str().trim_end_matches('/')
    );
    let auth = match &config.certificate_file {
        None => GraphAuth::client_secret(
            &config.login_url,
            &config.tenant_id,
            &config.client_id,
            config.client_secret.resolve()?,
            scope,
        ),
        Some(path) => {
            let certificate =
                std::fs::read_to_string(path).map_err(|error| SourceError::Unreadable {
                    location: format!("source.entra.certificate_file {}", path.display()),
                    message: error.to_string(),
                })?;
            GraphAuth::certificate(
                &config.login_url,
                &config.tenant_id,
                &config.client_id,
                &certificate,
                config.private_key.resolve()?,
                scope,
            )
            .map_err(|error| unreadable(config, error))?
        }
    };
    GraphClient::new(config.graph_url.clone(), auth, TIMEOUT, MAX_RETRIES)
        .map_err(|error| unreadable(config, error))
}

/// Reads Entra ID, in full or incrementally (see the module docs).
///
/// # Errors
/// [`SourceError`] when any page fails; nothing partial is returned.
pub async fn read(
    config: &EntraConfig,
    state: Option<&State>,
    full: bool,
) -> Result<SourceRead, SourceError> {
    let filter = group_filter(config)?;
    let client = client(config)?;
    let links = match state {
        Some(state) if !full => match (state.meta(USERS_LINK_KEY)?, state.meta(GROUPS_LINK_KEY)?) {
            (Some(users), Some(groups)) => Some((users, groups)),
            _ => None,
        },
        _ => None,
    };
    let outcome = match (links, state) {
        (Some((users_link, groups_link)), Some(state)) => {
            match read_incremental(&client, config, &filter, state, &users_link, &groups_link).await
            {
                // An expired link, or one that no longer fits `graph_url`: start over in full;
                // the planner matches the full read against the state, so nothing is created
                // twice.
                Err(ReadError::Graph(
                    GraphError::SyncStateExpired { .. } | GraphError::InvalidUrl { .. },
                )) => {
                    tracing::warn!(
                        message = "The Graph delta link cannot be used; reading Entra ID in full.",
                        tenant = %config.tenant_id
                    );
                    read_full(&client, config, &filter).await.map(|mut read| {
                        read.warnings.push(
                            "the stored Graph delta link had expired; this run read Entra ID in full"
                                .into(),
                        );
                        read
                    })
                }
                other => other,
            }
        }
        _ => read_full(&client, config, &filter).await,
    };
    outcome.map_err(|error| match error {
        ReadError::Graph(error) => unreadable(config, error),
        ReadError::State(error) => SourceError::State(error),
    })
}

/// Finds one user by id, userPrincipalName or mail, with groups and manager (for `preview`).
///
/// # Errors
/// [`SourceError`] when Graph cannot be read.
pub async fn read_one(
    config: &EntraConfig,
    _state: Option<&State>,
    wanted: &str,
) -> Result<Option<SourceRead>, SourceError> {
    let filter = group_filter(config)?;
    let client = client(config)?;
    let fail = |error| unreadable(config, error);
    // `manager` is a navigation property: expanded here, not selected.
    let select = select(config);
    let select = select.trim_end_matches(",manager").to_owned();
    let expand = "manager($select=id,userPrincipalName,mail,displayName,accountEnabled)";
    let mut found = client
        .get_json(&format!(
            "/v1.0/users/{}?$select={}&$expand={}",
            encode(wanted),
            encode(&select),
            encode(expand)
        ))
        .await
        .map_err(fail)?;
    if found.is_none() && wanted.contains('@') {
        let mut matches = Vec::new();
        client
            .get_pages(
                &format!(
                    "/v1.0/users?$filter={}&$select={}&$expand={}",
                    encode(&format!("mail eq '{}'", wanted.replace('\'', "''"))),
                    encode(&select),
                    encode(expand)
                ),
                |items| {
                    matches.extend(items);
                    Ok(false)
                },
            )
            .await
            .map_err(fail)?;
        found = matches.into_iter().next();
    }
    let Some(mut raw) = found else {
        return Ok(None);
    };
    let manager = raw
        .as_object_mut()
        .and_then(|object| object.remove("manager"))
        .filter(Value::is_object);
    let props = properties(&raw);
    let mut user = match convert(props) {
        Ok(user) => user,
        Err(rejected) => {
            return Err(SourceError::Unreadable {
                location: rejected.location,
                message: rejected.error,
            });
        }
    };
    if let Some(manager) = &manager {
        let manager_props = properties(manager);
        if let Ok(manager) = convert(manager_props) {
            user.manager_id = Some(manager.id.clone());
            user.manager = Some(manager.as_manager());
        }
    }
    let mut groups = Vec::new();
    client
        .get_pages(
            &format!(
                "/v1.0/users/{}/memberOf?$select=id,displayName",
                encode(&user.id.0)
            ),
            |items| {
                groups.extend(items);
                Ok(true)
            },
        )
        .await
        .map_err(fail)?;
    user.groups = groups
        .iter()
        .filter(|item| {
            item.get("@odata.type").and_then(Value::as_str) == Some("#microsoft.graph.group")
        })
        .filter_map(|group| group.get("displayName").and_then(Value::as_str))
        .filter(|name| filter.matches(name))
        .map(str::to_owned)
        .collect();
    user.groups.sort();
    Ok(Some(SourceRead {
        kind: SourceKind::Entra,
        full: false,
        users: vec![Arc::new(user)],
        removed: Vec::new(),
        rejected: Vec::new(),
        warnings: Vec::new(),
        reasons: Default::default(),
        commit: SourceCommit::default(),
    }))
}

/// Authenticates and reads from every endpoint a run uses: the first page of the users delta
/// query (with the `$select` a run uses) and of the groups delta query (with members), and one
/// user's manager. Every endpoint is tried; a refusal names the permission that is missing.
///
/// # Errors
/// [`SourceError::Secret`] or [`SourceError::Unreadable`] when the credentials cannot be built;
/// [`SourceError::Unreadable`] listing every endpoint that failed.
pub async fn check(config: &EntraConfig) -> Result<String, SourceError> {
    let client = client(config)?;
    let mut read = Vec::new();
    let mut failed = Vec::new();
    let mut first_user = None;
    let users = client
        .get_pages(
            &format!("/v1.0/users/delta?$select={}", encode(&select(config))),
            |items| {
                first_user = items
                    .iter()
                    .find_map(|item| item.get("id").and_then(Value::as_str).map(str::to_owned));
                read.push(format!("users delta ({})", items.len()));
                Ok(false)
            },
        )
        .await;
    let mut outcomes = vec![users.map(drop)];
    let groups = client
        .get_pages("/v1.0/groups/delta?$select=displayName,members", |items| {
            read.push(format!("groups delta ({})", items.len()));
            Ok(false)
        })
        .await;
    outcomes.push(groups.map(drop));
    if let Some(id) = &first_user {
        let manager = client
            .get_json(&format!("/v1.0/users/{}/manager?$select=id", encode(id)))
            .await;
        match &manager {
            Ok(Some(_)) => read.push("a manager".to_owned()),
            Ok(None) => read.push("a manager (that user has none)".to_owned()),
            Err(_) => {}
        }
        outcomes.push(manager.map(drop));
    }
    for outcome in outcomes {
        match outcome {
            Ok(()) => {}
            // Authentication failing fails every endpoint alike: say it once.
            Err(error @ (GraphError::Auth(_) | GraphError::Unauthorized { .. })) => {
                return Err(unreadable(config, error));
            }
            Err(error) => failed.push(error.to_string()),
        }
    }
    if !failed.is_empty() {
        return Err(unreadable(config, failed.join("; ")));
    }
    Ok(format!(
        "authenticated to tenant {} as {}; read {}",
        config.tenant_id,
        config.client_id,
        read.join(", ")
    ))
}

/// Sets one property of an Entra ID user (`PATCH /v1.0/users/{id}`), for write-back;
/// `a.b` sets `b` inside the complex property `a` (`onPremisesExtensionAttributes`).
///
/// # Errors
/// A message that says what to change in Entra ID when Graph refuses.
pub async fn write_attribute(
    client: &GraphClient,
    idp_id: &IdpId,
    attribute: &str,
    value: &str,
) -> Result<(), String> {
    let body = match attribute.split_once('.') {
        Some((outer, inner)) => serde_json::json!({ outer: { inner: value } }),
        None => serde_json::json!({ attribute: value }),
    };
    match client
        .patch_json(&format!("/v1.0/users/{}", encode(&idp_id.0)), &body)
        .await
    {
        Ok(()) => Ok(()),
        Err(GraphError::Rejected {
            status: 400,
            message,
            ..
        }) if message.contains("on-premises mastered") => Err(format!(
            "Entra ID refuses `{attribute}` for this user because it is synced from on-premises Active Directory ({message}); write back into a directory extension instead ([writeback] attribute = \"extension_<appid>_<name>\")"
        )),
        Err(error @ GraphError::Forbidden { .. }) => Err(format!(
            "{error}; write-back needs the User.ReadWrite.All application permission"
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// The `$select` of user reads: the model's fields, `extra_attributes`, and `manager`.
pub fn select(config: &EntraConfig) -> String {
    let mut fields: Vec<&str> = BASE_SELECT.to_vec();
    for extra in &config.extra_attributes {
        if !fields.contains(&extra.as_str()) {
            fields.push(extra);
        }
    }
    fields.push("manager");
    fields.join(",")
}

fn group_filter(config: &EntraConfig) -> Result<GroupFilter, SourceError> {
    GroupFilter::new(&config.groups).map_err(|message| SourceError::Unreadable {
        location: "source.entra.groups".into(),
        message,
    })
}

fn unreadable(config: &EntraConfig, error: impl std::fmt::Display) -> SourceError {
    SourceError::Unreadable {
        location: format!("Entra ID tenant {}", config.tenant_id),
        message: error.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// One user as the delta pages described it, merged over replays.
#[derive(Debug, Clone, Default)]
struct UserDelta {
    /// The properties sent (null means cleared).
    props: Map<String, Value>,
    /// `Some(Some(id))` manager set, `Some(None)` manager removed, `None` not mentioned.
    manager: Option<Option<String>>,
    /// `@removed` (soft or hard deleted).
    removed: bool,
    /// `@removed` with reason `deleted`: gone for good (a soft delete can be restored).
    gone: bool,
}

/// Applies the items of users delta pages, in order, to a map of per-user changes.
fn collect_user_deltas(items: Vec<Value>, deltas: &mut BTreeMap<String, UserDelta>) {
    for item in items {
        let Value::Object(mut object) = item else {
            continue;
        };
        let Some(id) = object.get("id").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        let delta = deltas.entry(id).or_default();
        if let Some(removed) = object.get("@removed") {
            *delta = UserDelta {
                removed: true,
                gone: removed.get("reason").and_then(Value::as_str) == Some("deleted"),
                ..UserDelta::default()
            };
            continue;
        }
        // A user that appears again after a removal in the same round was restored.
        delta.removed = false;
        if let Some(Value::Array(changes)) = object.remove("manager@delta") {
            // Removals first, then additions: the array's order says nothing (a new manager and
            // the old one's `@removed` entry may come either way round).
            let added = changes
                .iter()
                .filter(|change| change.get("@removed").is_none())
                .filter_map(|change| change.get("id").and_then(Value::as_str))
                .next_back();
            let removed = changes
                .iter()
                .any(|change| change.get("@removed").is_some());
            match added {
                Some(manager) => delta.manager = Some(Some(manager.to_owned())),
                None if removed => delta.manager = Some(None),
                None => {}
            }
        }
        for (key, value) in object {
            if key.contains('@') {
                continue;
            }
            delta.props.insert(key, value);
        }
    }
}

/// One group as the delta pages described it, merged over split pages.
#[derive(Debug, Clone, Default)]
struct GroupDelta {
    name: Option<String>,
    added: BTreeSet<String>,
    removed_members: BTreeSet<String>,
    removed: bool,
}

fn collect_group_deltas(items: Vec<Value>, deltas: &mut BTreeMap<String, GroupDelta>) {
    for item in items {
        let Some(id) = item.get("id").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        let delta = deltas.entry(id).or_default();
        if item.get("@removed").is_some() {
            delta.removed = true;
            continue;
        }
        if let Some(name) = item.get("displayName").and_then(Value::as_str) {
            delta.name = Some(name.to_owned());
        }
        for member in item
            .get("members@delta")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(member_id) = member.get("id").and_then(Value::as_str) else {
                continue;
            };
            let is_user = member
                .get("@odata.type")
                .and_then(Value::as_str)
                .is_none_or(|kind| kind == "#microsoft.graph.user");
            if !is_user {
                continue;
            }
            if member.get("@removed").is_some() {
                delta.added.remove(member_id);
                delta.removed_members.insert(member_id.to_owned());
            } else {
                delta.removed_members.remove(member_id);
                delta.added.insert(member_id.to_owned());
            }
        }
    }
}

async fn read_full(
    client: &GraphClient,
    config: &EntraConfig,
    filter: &GroupFilter,
) -> Result<SourceRead, ReadError> {
    let mut deltas = BTreeMap::new();
    let users_link = client
        .get_pages(
            &format!("/v1.0/users/delta?$select={}", encode(&select(config))),
            |items| {
                collect_user_deltas(items, &mut deltas);
                Ok(true)
            },
        )
        .await?;
    let mut groups = BTreeMap::new();
    let groups_link = client
        .get_pages("/v1.0/groups/delta?$select=displayName,members", |items| {
            collect_group_deltas(items, &mut groups);
            Ok(true)
        })
        .await?;
    let users_link = users_link.ok_or_else(|| missing_link("/v1.0/users/delta"))?;
    let groups_link = groups_link.ok_or_else(|| missing_link("/v1.0/groups/delta"))?;

    let mut group_names: BTreeMap<String, String> = BTreeMap::new();
    let mut memberships: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (id, group) in &groups {
        let Some(name) = group.name.as_ref().filter(|_| !group.removed) else {
            continue;
        };
        group_names.insert(id.clone(), name.clone());
        if !filter.matches(name) {
            continue;
        }
        for member in &group.added {
            memberships
                .entry(member.clone())
                .or_default()
                .insert(name.clone());
        }
    }

    let mut read = empty_read(true);
    let mut users = Vec::new();
    for (id, delta) in deltas {
        if delta.removed {
            continue;
        }
        match convert(delta.props) {
            Ok(mut user) => {
                user.manager_id = delta.manager.flatten().map(IdpId);
                user.groups = memberships
                    .get(&id)
                    .map(|names| names.iter().cloned().collect())
                    .unwrap_or_default();
                users.push(user);
            }
            Err(rejected) => read.rejected.push(rejected),
        }
    }
    let directory: HashMap<IdpId, std::sync::Arc<ManagerRef>> = users
        .iter()
        .map(|user| (user.id.clone(), user.as_manager()))
        .collect();
    for user in &mut users {
        let Some(manager_id) = &user.manager_id else {
            continue;
        };
        match directory.get(manager_id) {
            Some(manager) if manager.id != user.id => user.manager = Some(manager.clone()),
            _ => read.warnings.push(manager_warning(user)),
        }
    }
    read.users = users.into_iter().map(Arc::new).collect();
    read.commit = SourceCommit {
        cursors: vec![
            (USERS_LINK_KEY.to_owned(), users_link),
            (GROUPS_LINK_KEY.to_owned(), groups_link),
            (
                GROUP_NAMES_KEY.to_owned(),
                Value::from(json_map(&group_names)).to_string(),
            ),
        ],
        tables: Vec::new(),
        cache: CacheUpdate::Replace(read.users.clone()),
    };
    Ok(read)
}

async fn read_incremental(
    client: &GraphClient,
    config: &EntraConfig,
    filter: &GroupFilter,
    state: &State,
    users_link: &str,
    groups_link: &str,
) -> Result<SourceRead, ReadError> {
    let mut deltas = BTreeMap::new();
    let new_users_link = client
        .get_pages(users_link, |items| {
            collect_user_deltas(items, &mut deltas);
            Ok(true)
        })
        .await?
        .ok_or_else(|| missing_link("the users delta link"))?;
    let mut groups = BTreeMap::new();
    let new_groups_link = client
        .get_pages(groups_link, |items| {
            collect_group_deltas(items, &mut groups);
            Ok(true)
        })
        .await?
        .ok_or_else(|| missing_link("the groups delta link"))?;

    let mut group_names: BTreeMap<String, String> = state
        .meta(GROUP_NAMES_KEY)?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    // Groups renamed or deleted: every cached member of the old name is affected, found in the
    // source cache (no request per user); a group renamed into the filter is read whole.
    let renamed_or_deleted = group_events(&groups, &group_names);
    let mut reasons: BTreeMap<IdpId, String> = BTreeMap::new();
    let mut affected: BTreeMap<String, SourceUser> = BTreeMap::new();
    let mut membership: HashMap<String, Vec<(String, bool)>> = HashMap::new();
    for event in &renamed_or_deleted {
        if filter.matches(event.old_name()) {
            for user in state.cached_members_of(event.old_name())? {
                reasons
                    .entry(user.id.clone())
                    .or_insert_with(|| event.reason());
                affected.entry(user.id.0.clone()).or_insert(user);
            }
        }
        if let GroupEvent::Renamed { id, old, new } = event
            && filter.matches(new)
            && !filter.matches(old)
        {
            for member in read_group_members(client, id).await? {
                reasons
                    .entry(IdpId(member.clone()))
                    .or_insert_with(|| event.reason());
                membership
                    .entry(member)
                    .or_default()
                    .push((new.clone(), true));
            }
        }
    }
    // Membership changes per user, for the groups the filter selects.
    for (id, group) in &groups {
        let old_name = group_names.get(id).cloned();
        if group.removed {
            group_names.remove(id);
        } else if let Some(name) = &group.name {
            group_names.insert(id.clone(), name.clone());
        }
        let Some(name) = group.name.clone().or(old_name) else {
            continue;
        };
        if !filter.matches(&name) {
            continue;
        }
        for member in &group.added {
            membership
                .entry(member.clone())
                .or_default()
                .push((name.clone(), true));
        }
        for member in &group.removed_members {
            membership
                .entry(member.clone())
                .or_default()
                .push((name.clone(), false));
        }
    }

    let mut read = empty_read(false);
    let mut users: BTreeMap<String, SourceUser> = BTreeMap::new();
    let mut removed = Vec::new();
    // Soft-deleted users stay in the cache (with their groups) so that a restore finds them,
    // marked inactive: Graph keeps their memberships, so a later change of one of their groups
    // reaches them from the cache, and must not bring them back before a restore does.
    let mut gone = Vec::new();
    let mut soft_deleted = Vec::new();
    for (id, delta) in deltas {
        if delta.removed {
            if delta.gone {
                gone.push(IdpId(id.clone()));
            } else if let Some(mut cached) = state.cached_source_user(&IdpId(id.clone()))? {
                cached.active = false;
                cached.status = Some("disabled".to_owned());
                soft_deleted.push(Arc::new(cached));
            }
            removed.push(IdpId(id));
            continue;
        }
        let cached = state.cached_source_user(&IdpId(id.clone()))?;
        let mut props = cached
            .as_ref()
            .map(|user| user.attrs.to_map())
            .unwrap_or_default();
        for (key, value) in delta.props {
            if value.is_null() {
                props.remove(&key);
            } else {
                props.insert(key, value);
            }
        }
        props.insert("id".into(), Value::String(id.clone()));
        match convert(props) {
            Ok(mut user) => {
                user.manager_id = match delta.manager {
                    Some(manager) => manager.map(IdpId),
                    None => cached.as_ref().and_then(|c| c.manager_id.clone()),
                };
                user.groups = cached.map(|c| c.groups).unwrap_or_default();
                affected.remove(&id);
                users.insert(id, user);
            }
            Err(rejected) => read.rejected.push(rejected),
        }
    }
    // Members of renamed or deleted groups who did not change themselves.
    for (id, user) in affected {
        if !removed.iter().any(|r| r.0 == id) {
            users.entry(id).or_insert(user);
        }
    }
    // Users whose membership changed but who did not change themselves.
    let mut missing = Vec::new();
    for id in membership.keys() {
        if users.contains_key(id) || removed.iter().any(|r| &r.0 == id) {
            continue;
        }
        match state.cached_source_user(&IdpId(id.clone()))? {
            Some(user) => {
                users.insert(id.clone(), user);
            }
            None => missing.push(id.clone()),
        }
    }
    for id in missing {
        if let Some(user) = fetch_user(client, config, &id).await? {
            users.insert(id, user);
        }
    }
    for (id, user) in &mut users {
        let mut names: BTreeSet<String> = user.groups.iter().cloned().collect();
        for event in &renamed_or_deleted {
            if names.remove(event.old_name())
                && let GroupEvent::Renamed { new, .. } = event
                && filter.matches(new)
            {
                names.insert(new.clone());
            }
        }
        for (name, added) in membership.get(id).into_iter().flatten() {
            if *added {
                names.insert(name.clone());
            } else {
                names.remove(name);
            }
        }
        user.groups = names.into_iter().collect();
    }

    // Managers: in the batch, else in the cache, else from Graph.
    let batch: HashMap<IdpId, std::sync::Arc<ManagerRef>> = users
        .values()
        .map(|user| (user.id.clone(), user.as_manager()))
        .collect();
    for user in users.values_mut() {
        let Some(manager_id) = user.manager_id.clone() else {
            continue;
        };
        let manager = match batch.get(&manager_id) {
            Some(manager) => Some(manager.clone()),
            None => match state.cached_source_user(&manager_id)? {
                Some(cached) => Some(cached.as_manager()),
                None => fetch_user(client, config, &manager_id.0)
                    .await?
                    .map(|fetched| fetched.as_manager()),
            },
        };
        match manager.filter(|manager| manager.id != user.id) {
            Some(manager) => user.manager = Some(manager),
            None => read.warnings.push(manager_warning(user)),
        }
    }

    read.users = users.into_values().map(Arc::new).collect();
    read.removed = removed;
    read.reasons = reasons;
    read.commit = SourceCommit {
        cursors: vec![
            (USERS_LINK_KEY.to_owned(), new_users_link),
            (GROUPS_LINK_KEY.to_owned(), new_groups_link),
            (
                GROUP_NAMES_KEY.to_owned(),
                Value::from(json_map(&group_names)).to_string(),
            ),
        ],
        tables: Vec::new(),
        cache: CacheUpdate::Merge {
            upsert: read.users.iter().cloned().chain(soft_deleted).collect(),
            remove: gone,
        },
    };
    Ok(read)
}

/// A group renamed or deleted in a delta round, as it reaches its members' `groups`.
#[derive(Debug, Clone, PartialEq)]
enum GroupEvent {
    /// The group `id` was called `old` and is called `new` now.
    Renamed {
        id: String,
        old: String,
        new: String,
    },
    /// The group called `name` is gone.
    Deleted { name: String },
}

impl GroupEvent {
    /// The name the cache knows the group by.
    fn old_name(&self) -> &str {
        match self {
            GroupEvent::Renamed { old, .. } => old,
            GroupEvent::Deleted { name } => name,
        }
    }

    /// Why its members are updated (the action's `reason`).
    fn reason(&self) -> String {
        match self {
            GroupEvent::Renamed { old, new, .. } => format!("group renamed: {old} → {new}"),
            GroupEvent::Deleted { name } => format!("group deleted: {name}"),
        }
    }
}

/// The renames and deletions of a groups delta round, against the names the state knew.
fn group_events(
    groups: &BTreeMap<String, GroupDelta>,
    known: &BTreeMap<String, String>,
) -> Vec<GroupEvent> {
    groups
        .iter()
        .filter_map(|(id, group)| {
            let old = known.get(id)?;
            match (&group.name, group.removed) {
                (_, true) => Some(GroupEvent::Deleted { name: old.clone() }),
                (Some(new), false) if new != old => Some(GroupEvent::Renamed {
                    id: id.clone(),
                    old: old.clone(),
                    new: new.clone(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// The ids of a group's user members (`/groups/{id}/members`, paged).
async fn read_group_members(client: &GraphClient, id: &str) -> Result<Vec<String>, GraphError> {
    let mut members = Vec::new();
    client
        .get_pages(
            &format!("/v1.0/groups/{}/members?$select=id", encode(id)),
            |items| {
                members.extend(
                    items
                        .iter()
                        .filter(|item| {
                            item.get("@odata.type")
                                .and_then(Value::as_str)
                                .is_none_or(|kind| kind == "#microsoft.graph.user")
                        })
                        .filter_map(|item| item.get("id").and_then(Value::as_str))
                        .map(str::to_owned),
                );
                Ok(true)
            },
        )
        .await?;
    Ok(members)
}

/// One user by id, for a manager or a membership change outside the batch.
async fn fetch_user(
    client: &GraphClient,
    config: &EntraConfig,
    id: &str,
) -> Result<Option<SourceUser>, GraphError> {
    let fields = select(config);
    let fields = fields.trim_end_matches(",manager");
    let Some(raw) = client
        .get_json(&format!(
            "/v1.0/users/{}?$select={}",
            encode(id),
            encode(fields)
        ))
        .await?
    else {
        return Ok(None);
    };
    Ok(convert(properties(&raw)).ok())
}

fn missing_link(what: &str) -> GraphError {
    GraphError::InvalidResponse {
        url: what.to_owned(),
        message: "the last page has no @odata.deltaLink".into(),
    }
}

fn manager_warning(user: &SourceUser) -> String {
    format!(
        "Entra ID user {} ({}) has manager {}, which matches nobody; provisioned without a manager",
        user.label(),
        user.id,
        user.manager_id.as_ref().map_or("?", |id| id.0.as_str())
    )
}

/// The properties of a Graph object, without OData annotations.
fn properties(raw: &Value) -> Map<String, Value> {
    raw.as_object()
        .map(|object| {
            object
                .iter()
                .filter(|(key, _)| !key.contains('@'))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Turns a user's selected properties into a [`SourceUser`] (groups and manager set later).
fn convert(props: Map<String, Value>) -> Result<SourceUser, RejectedRecord> {
    let id = props
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty());
    let Some(id) = id else {
        return Err(RejectedRecord {
            idp_id: None,
            location: "Entra ID user without an id".into(),
            error: "the user object has no `id`".into(),
        });
    };
    let reject = |error: String| RejectedRecord {
        idp_id: Some(IdpId(id.to_owned())),
        location: format!("Entra ID user {id}"),
        error,
    };
    let text = |field: &str| -> Result<Option<String>, RejectedRecord> {
        match props.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(reject(format!("{field} must be a string, found {other}"))),
        }
    };
    let active = match props.get("accountEnabled") {
        Some(Value::Bool(enabled)) => *enabled,
        None | Some(Value::Null) => {
            return Err(reject(
                "accountEnabled is missing, so whether the account is enabled is unknown".into(),
            ));
        }
        Some(other) => {
            return Err(reject(format!(
                "accountEnabled must be true or false, found {other}"
            )));
        }
    };
    let login = text("userPrincipalName")?;
    Ok(SourceUser {
        id: IdpId(id.to_owned()),
        email: text("mail")?.or_else(|| login.clone()),
        login,
        given_name: text("givenName")?,
        family_name: text("surname")?,
        display_name: text("displayName")?,
        active,
        status: Some(if active { "enabled" } else { "disabled" }.to_owned()),
        department: text("department")?,
        title: text("jobTitle")?,
        employee_id: text("employeeId")?,
        manager_id: None,
        manager: None,
        groups: Vec::new(),
        attrs: Attrs::from_map(&props),
    })
}

fn empty_read(full: bool) -> SourceRead {
    SourceRead {
        kind: SourceKind::Entra,
        full,
        users: Vec::new(),
        removed: Vec::new(),
        rejected: Vec::new(),
        warnings: Vec::new(),
        reasons: Default::default(),
        commit: SourceCommit::default(),
    }
}

fn json_map(map: &BTreeMap<String, String>) -> Map<String, Value> {
    map.iter()
        .map(|(key, value)| (key.clone(), Value::String(value.clone())))
        .collect()
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests;
