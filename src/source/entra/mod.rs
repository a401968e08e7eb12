//! The Microsoft Entra ID source (`[source] kind = "entra"`), through Microsoft Graph's delta
//! queries: `/v1.0/users/delta` (with `$select` of the fields the model needs, the configured
//! `extra_attributes`, and `manager`) and `/v1.0/groups/delta` (`displayName`, `members`). A full
//! read starts both from scratch; an incremental read follows the stored delta links, which
//! return only what changed (possibly only the changed properties), `@removed` users and
//! `manager@delta` / `members@delta` changes; those are merged over the source cache kept in the
//! state. An expired delta link (`400 syncStateNotFound`, `410 Gone`) falls back to a full read,
//! which the planner matches against the state, so nothing is created twice. Only this module
//! and its children know Graph's JSON.
//!
//! Group membership is kept in the state as a graph of ids, for every group the groups delta
//! returns ([`membership`]): each group's direct user members (one key per group under
//! [`GROUP_MEMBERS_PREFIX`]) and child groups (in [`GROUP_GRAPH_KEY`], with the settings it was
//! read with), and the names by id ([`GROUP_NAMES_KEY`]). With `nested_groups` (the default) a
//! user's `groups` are the selected names of every group it is in directly or through child
//! groups, whether or not the globs select those; an incremental read applies a round's
//! `members@delta` (users and groups), renames and deletions to the graph and recomputes the
//! users they reach, from the cache, with the change as the reason. A state without that cache
//! (an older version's) or built with other settings is read in full once.

pub mod auth;
pub mod client;
pub mod membership;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use self::auth::GraphAuth;
use self::client::{GraphClient, GraphError};
use self::membership::{Children, Nesting};
use super::SourceError;
use super::groups::GroupFilter;
use crate::config::EntraConfig;
use crate::model::{
    Attrs, CacheUpdate, IdpId, ManagerRef, RejectedRecord, SourceCommit, SourceKind, SourceRead,
    SourceUser, TableUpdate,
};
use crate::state::{State, StateError};

/// The state key of the users delta link.
pub const USERS_LINK_KEY: &str = "entra.users_delta_link";
/// The state key of the groups delta link.
pub const GROUPS_LINK_KEY: &str = "entra.groups_delta_link";
/// The state key of the known groups (id → display name, JSON), because a later groups delta
/// may name a changed group by id only.
pub const GROUP_NAMES_KEY: &str = "entra.group_names";
/// The state key of the membership graph's header (JSON): its format, the `nested_groups` and
/// `groups` settings it was read with, and every group's child groups (id → ids). Without it,
/// or with other settings, the next read is full.
pub const GROUP_GRAPH_KEY: &str = "entra.group_graph";
/// The prefix of the state keys that hold each group's direct user members (the group's id
/// follows; a JSON array of user ids, sorted; groups without user members have none).
pub const GROUP_MEMBERS_PREFIX: &str = "entra.group_members.";
/// The format of the membership cache; a version that changes what it holds bumps it, which
/// forces one full read.
const GROUP_GRAPH_FORMAT: u32 = 1;
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
    let mut unfit_cache = false;
    let links = match state {
        Some(state) if !full => match (state.meta(USERS_LINK_KEY)?, state.meta(GROUPS_LINK_KEY)?) {
            (Some(users), Some(groups)) => match fitting_header(config, state)? {
                Some(header) => Some(Links {
                    users,
                    groups,
                    header,
                }),
                None => {
                    unfit_cache = true;
                    None
                }
            },
            _ => None,
        },
        _ => None,
    };
    let outcome = match (links, state) {
        (Some(links), Some(state)) => {
            match read_incremental(&client, config, &filter, state, links).await {
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
        // A state without the membership cache (written by an older version), or with one
        // read with other `groups` or `nested_groups` settings: one full read rebuilds it.
        _ if unfit_cache => read_full(&client, config, &filter).await.map(|mut read| {
            read.warnings.push(
                "the state held no Entra ID group membership cache for the current `groups` and `nested_groups` settings (an older version's state, or changed settings); this run read Entra ID in full"
                    .into(),
            );
            read
        }),
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
    // `transitiveMemberOf` lists the groups above the user's groups too (cycles end on Graph's
    // side); `memberOf` only the direct ones.
    let relationship = if config.nested_groups {
        "transitiveMemberOf"
    } else {
        "memberOf"
    };
    let mut groups = Vec::new();
    client
        .get_pages(
            &format!(
                "/v1.0/users/{}/{relationship}?$select=id,displayName",
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
    user.groups.dedup();
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
    /// User members added.
    added: BTreeSet<String>,
    /// User members removed.
    removed_members: BTreeSet<String>,
    /// Child groups added (members of type `#microsoft.graph.group`).
    added_groups: BTreeSet<String>,
    /// Child groups removed.
    removed_groups: BTreeSet<String>,
    removed: bool,
}

/// What a `members@delta` item is: Graph lists every kind of directory object; users and
/// groups count (an item without a type is taken as a user, as Graph's older examples show).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberKind {
    User,
    Group,
    Other,
}

fn member_kind(member: &Value) -> MemberKind {
    match member.get("@odata.type").and_then(Value::as_str) {
        None | Some("#microsoft.graph.user") => MemberKind::User,
        Some("#microsoft.graph.group") => MemberKind::Group,
        Some(_) => MemberKind::Other,
    }
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
            let (added, removed) = match member_kind(member) {
                MemberKind::User => (&mut delta.added, &mut delta.removed_members),
                MemberKind::Group => (&mut delta.added_groups, &mut delta.removed_groups),
                MemberKind::Other => continue,
            };
            if member.get("@removed").is_some() {
                added.remove(member_id);
                removed.insert(member_id.to_owned());
            } else {
                removed.remove(member_id);
                added.insert(member_id.to_owned());
            }
        }
    }
}

/// What the membership cache was built with, and every group's child groups (the small part of
/// the graph: each group's user members have a state key of their own, under
/// [`GROUP_MEMBERS_PREFIX`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GraphHeader {
    /// [`GROUP_GRAPH_FORMAT`].
    format: u32,
    /// `nested_groups` when it was built.
    nested_groups: bool,
    /// The `groups` globs when it was built.
    groups: Vec<String>,
    /// Group id → the ids of its child groups (groups with none are left out).
    children: Children,
}

impl GraphHeader {
    fn new(config: &EntraConfig, children: Children) -> GraphHeader {
        GraphHeader {
            format: GROUP_GRAPH_FORMAT,
            nested_groups: config.nested_groups,
            groups: config.groups.clone(),
            children,
        }
    }

    /// Whether a cache built this way serves `config`: the names that reach `user.groups` of
    /// the cached users depend on both settings.
    fn fits(&self, config: &EntraConfig) -> bool {
        self.format == GROUP_GRAPH_FORMAT
            && self.nested_groups == config.nested_groups
            && self.groups == config.groups
    }
}

/// The membership cache's header, when the state holds one that serves `config`.
fn fitting_header(config: &EntraConfig, state: &State) -> Result<Option<GraphHeader>, StateError> {
    Ok(state
        .meta(GROUP_GRAPH_KEY)?
        .and_then(|text| serde_json::from_str::<GraphHeader>(&text).ok())
        .filter(|header| header.fits(config)))
}

/// Whether the state holds a membership cache that serves `config` (else the next read is
/// full).
pub fn cache_fits(config: &EntraConfig, state: &State) -> bool {
    matches!(fitting_header(config, state), Ok(Some(_)))
}

/// The names of these groups, sorted, each once.
fn names_of<'a>(
    ids: impl IntoIterator<Item = &'a str>,
    names: &BTreeMap<String, String>,
) -> Vec<String> {
    let names: BTreeSet<&String> = ids.into_iter().filter_map(|id| names.get(id)).collect();
    names.into_iter().cloned().collect()
}

/// Whether the group `id`, by its name, is one the `groups` globs select.
fn selected(filter: &GroupFilter, names: &BTreeMap<String, String>, id: &str) -> bool {
    names.get(id).is_some_and(|name| filter.matches(name))
}

/// A group's user members as the state keeps them: a JSON array of ids, sorted.
fn member_list(users: &BTreeSet<String>) -> String {
    serde_json::to_string(users).unwrap_or_default()
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

    // The membership graph of every group, whatever the globs select: a child group counts
    // whether or not they select it, and a later rename may bring any group in.
    let mut group_names: BTreeMap<String, String> = BTreeMap::new();
    let mut users_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut children = Children::new();
    for (id, group) in groups {
        if group.removed {
            continue;
        }
        if let Some(name) = group.name {
            group_names.insert(id.clone(), name);
        }
        if !group.added_groups.is_empty() {
            children.insert(id.clone(), group.added_groups);
        }
        if !group.added.is_empty() {
            users_of.insert(id, group.added);
        }
    }
    let closures = membership::closures(
        group_names.keys(),
        &children,
        Nesting::of(config.nested_groups),
        |id| selected(filter, &group_names, id),
    );
    let memberships = membership::flatten(&users_of, &closures);

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
                    .map(|ids| names_of(ids.iter().map(String::as_str), &group_names))
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
    let header = GraphHeader::new(config, children);
    read.commit = SourceCommit {
        // The links last: a cursor never runs ahead of what it read.
        cursors: vec![
            (
                GROUP_NAMES_KEY.to_owned(),
                Value::from(json_map(&group_names)).to_string(),
            ),
            (GROUP_GRAPH_KEY.to_owned(), header_text(&header)),
            (USERS_LINK_KEY.to_owned(), users_link),
            (GROUPS_LINK_KEY.to_owned(), groups_link),
        ],
        tables: vec![TableUpdate::Replace {
            prefix: GROUP_MEMBERS_PREFIX.to_owned(),
            entries: users_of
                .iter()
                .map(|(id, users)| (id.clone(), member_list(users)))
                .collect(),
        }],
        cache: CacheUpdate::Replace(read.users.clone()),
    };
    Ok(read)
}

fn header_text(header: &GraphHeader) -> String {
    serde_json::to_string(header).unwrap_or_default()
}

async fn read_incremental(
    client: &GraphClient,
    config: &EntraConfig,
    filter: &GroupFilter,
    state: &State,
    links: Links,
) -> Result<SourceRead, ReadError> {
    let mut deltas = BTreeMap::new();
    let new_users_link = client
        .get_pages(&links.users, |items| {
            collect_user_deltas(items, &mut deltas);
            Ok(true)
        })
        .await?
        .ok_or_else(|| missing_link("the users delta link"))?;
    let mut groups = BTreeMap::new();
    let new_groups_link = client
        .get_pages(&links.groups, |items| {
            collect_group_deltas(items, &mut groups);
            Ok(true)
        })
        .await?
        .ok_or_else(|| missing_link("the groups delta link"))?;

    let old_names: BTreeMap<String, String> = state
        .meta(GROUP_NAMES_KEY)?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let mut lists = MemberLists::new(state);
    let round = GroupRound::apply(&groups, &old_names, &links.header.children, &mut lists)?;
    let regrouped = regroup(
        filter,
        Nesting::of(config.nested_groups),
        &old_names,
        &links.header.children,
        &round,
        &mut lists,
    )?;

    let mut read = empty_read(false);
    let mut reasons: BTreeMap<IdpId, String> = BTreeMap::new();
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
                users.insert(id, user);
            }
            Err(rejected) => read.rejected.push(rejected),
        }
    }
    // Users whose groups the round changed: those that changed themselves too, those in the
    // cache, and (rarely) others read from Graph.
    let removed_ids: HashSet<&str> = removed.iter().map(|id| id.0.as_str()).collect();
    let mut missing = Vec::new();
    for (id, (groups, reason)) in regrouped {
        if removed_ids.contains(id.as_str()) {
            continue;
        }
        let mut user = match users.remove(&id) {
            Some(user) => user,
            None => match state.cached_source_user(&IdpId(id.clone()))? {
                Some(user) if user.groups == groups => continue,
                Some(user) => user,
                None => {
                    missing.push((id, groups, reason));
                    continue;
                }
            },
        };
        if user.groups != groups {
            reasons.insert(user.id.clone(), reason);
            user.groups = groups;
        }
        users.insert(id, user);
    }
    for (id, groups, reason) in missing {
        if let Some(mut user) = fetch_user(client, config, &id).await? {
            reasons.insert(user.id.clone(), reason);
            user.groups = groups;
            users.insert(id, user);
        }
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
    let mut cursors = vec![(
        GROUP_NAMES_KEY.to_owned(),
        Value::from(json_map(&round.names)).to_string(),
    )];
    if round.children != links.header.children {
        cursors.push((
            GROUP_GRAPH_KEY.to_owned(),
            header_text(&GraphHeader::new(config, round.children)),
        ));
    }
    // The links last: a cursor never runs ahead of what it read.
    cursors.push((USERS_LINK_KEY.to_owned(), new_users_link));
    cursors.push((GROUPS_LINK_KEY.to_owned(), new_groups_link));
    let (set, remove) = lists.changes();
    read.commit = SourceCommit {
        cursors,
        tables: vec![TableUpdate::Merge {
            prefix: GROUP_MEMBERS_PREFIX.to_owned(),
            set,
            remove,
        }],
        cache: CacheUpdate::Merge {
            upsert: read.users.iter().cloned().chain(soft_deleted).collect(),
            remove: gone,
        },
    };
    Ok(read)
}

/// The users a round's group changes reach, with their `groups` after the round and the change
/// that reached them first (the reason of their update). A change reaches every user below a
/// changed link, a renamed or a deleted group, in the graph before or after the round, when it
/// can touch a selected group: the group or one above it is selected by its old or new name (a
/// rename: the group itself). Their groups are recomputed from the groups whose members reach
/// a selected group; whether they changed is for the caller to see.
fn regroup(
    filter: &GroupFilter,
    nesting: Nesting,
    old_names: &BTreeMap<String, String>,
    old_children: &Children,
    round: &GroupRound,
    lists: &mut MemberLists<'_>,
) -> Result<BTreeMap<String, (Vec<String>, String)>, StateError> {
    if round.events.is_empty() {
        return Ok(BTreeMap::new());
    }
    let either_selected =
        |id: &str| selected(filter, old_names, id) || selected(filter, &round.names, id);
    let before = membership::closures(old_names.keys(), old_children, nesting, either_selected);
    let after = membership::closures(
        round.names.keys(),
        &round.children,
        nesting,
        either_selected,
    );
    let touches = |group: &str| before.reaches_any(group) || after.reaches_any(group);
    let mut reached_by: BTreeMap<String, String> = BTreeMap::new();
    for event in &round.events {
        let (below, versions): (&str, &[Version]) = match event {
            GroupEvent::UserJoined { group, user } | GroupEvent::UserLeft { group, user } => {
                if touches(group) {
                    reached_by
                        .entry(user.clone())
                        .or_insert_with(|| event.reason(old_names, &round.names));
                }
                continue;
            }
            GroupEvent::GroupJoined { parent, child } | GroupEvent::GroupLeft { parent, child }
                if nesting == Nesting::Flatten && touches(parent) =>
            {
                (child, &[Version::Before, Version::After])
            }
            GroupEvent::Renamed { id, old, new } if filter.matches(old) || filter.matches(new) => {
                (id, &[Version::Before, Version::After])
            }
            GroupEvent::Deleted { id, .. } if before.reaches_any(id) => (id, &[Version::Before]),
            _ => continue,
        };
        let reason = event.reason(old_names, &round.names);
        for version in versions {
            let children = match version {
                Version::Before => old_children,
                Version::After => &round.children,
            };
            for user in lists.users_below(children, below, nesting, *version)? {
                reached_by.entry(user).or_insert_with(|| reason.clone());
            }
        }
    }
    // Their groups after the round: the selected groups above each group they are in.
    let closures = membership::closures(round.names.keys(), &round.children, nesting, |id| {
        selected(filter, &round.names, id)
    });
    let mut found: BTreeMap<&str, BTreeSet<&str>> = reached_by
        .keys()
        .map(|user| (user.as_str(), BTreeSet::new()))
        .collect();
    for group in closures.groups() {
        for user in lists.after(group)? {
            if let Some(groups) = found.get_mut(user.as_str()) {
                groups.extend(closures.of(group));
            }
        }
    }
    Ok(found
        .into_iter()
        .map(|(user, groups)| {
            (
                user.to_owned(),
                (names_of(groups, &round.names), reached_by[user].clone()),
            )
        })
        .collect())
}

/// The stored delta links, and the membership cache's header they go with.
struct Links {
    users: String,
    groups: String,
    header: GraphHeader,
}

/// Which side of a delta round a member list is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// As the last commit left it.
    Before,
    /// With this round's changes.
    After,
}

/// The user members of groups, read from the state as they are needed: as the last commit left
/// them, and as this round's changes make them.
struct MemberLists<'a> {
    state: &'a State,
    before: HashMap<String, BTreeSet<String>>,
    /// The lists this round changed, in full.
    changed: BTreeMap<String, BTreeSet<String>>,
}

impl<'a> MemberLists<'a> {
    fn new(state: &'a State) -> MemberLists<'a> {
        MemberLists {
            state,
            before: HashMap::new(),
            changed: BTreeMap::new(),
        }
    }

    /// A group's user members as the last commit left them.
    fn before(&mut self, group: &str) -> Result<&BTreeSet<String>, StateError> {
        if !self.before.contains_key(group) {
            let list: BTreeSet<String> = self
                .state
                .meta(&format!("{GROUP_MEMBERS_PREFIX}{group}"))?
                .map(|text| {
                    serde_json::from_str(&text).map_err(|error| StateError::Storage {
                        path: self.state.path().to_owned(),
                        message: format!(
                            "the cached members of Entra ID group {group} cannot be read ({error}); `sync --full` reads them again"
                        ),
                    })
                })
                .transpose()?
                .unwrap_or_default();
            self.before.insert(group.to_owned(), list);
        }
        Ok(&self.before[group])
    }

    /// A group's user members with this round's changes.
    fn after(&mut self, group: &str) -> Result<&BTreeSet<String>, StateError> {
        if self.changed.contains_key(group) {
            return Ok(&self.changed[group]);
        }
        self.before(group)
    }

    /// A group's user members, to change in this round.
    fn change(&mut self, group: &str) -> Result<&mut BTreeSet<String>, StateError> {
        if !self.changed.contains_key(group) {
            let list = self.before(group)?.clone();
            self.changed.insert(group.to_owned(), list);
        }
        Ok(self.changed.get_mut(group).expect("inserted just above"))
    }

    /// The user members of `group` and of every group below it (see [`membership::below`]).
    fn users_below(
        &mut self,
        children: &Children,
        group: &str,
        nesting: Nesting,
        version: Version,
    ) -> Result<BTreeSet<String>, StateError> {
        let mut users = BTreeSet::new();
        for group in membership::below(children, group, nesting) {
            let list = match version {
                Version::Before => self.before(&group)?,
                Version::After => self.after(&group)?,
            };
            users.extend(list.iter().cloned());
        }
        Ok(users)
    }

    /// The changed lists that differ from before: set (non-empty) or removed (empty).
    fn changes(self) -> (Vec<(String, String)>, Vec<String>) {
        let mut set = Vec::new();
        let mut remove = Vec::new();
        for (group, list) in self.changed {
            if self.before.get(&group) == Some(&list) {
                continue;
            }
            if list.is_empty() {
                remove.push(group);
            } else {
                set.push((group, member_list(&list)));
            }
        }
        (set, remove)
    }
}

/// One change of a groups delta round, as it reaches users' `groups`.
#[derive(Debug, Clone, PartialEq)]
enum GroupEvent {
    /// The group `id` was called `old` and is called `new` now.
    Renamed {
        id: String,
        old: String,
        new: String,
    },
    /// The group `id`, called `name`, is gone.
    Deleted { id: String, name: String },
    /// `user` became a direct member of `group`.
    UserJoined { group: String, user: String },
    /// `user` is no longer a direct member of `group`.
    UserLeft { group: String, user: String },
    /// The group `child` became a member of the group `parent`.
    GroupJoined { parent: String, child: String },
    /// The group `child` is no longer a member of the group `parent`.
    GroupLeft { parent: String, child: String },
}

impl GroupEvent {
    /// Which kind of change explains a user's update first.
    fn rank(&self) -> u8 {
        match self {
            GroupEvent::Deleted { .. } => 0,
            GroupEvent::Renamed { .. } => 1,
            GroupEvent::GroupJoined { .. } | GroupEvent::GroupLeft { .. } => 2,
            GroupEvent::UserJoined { .. } | GroupEvent::UserLeft { .. } => 3,
        }
    }

    /// Why the users it reaches are updated (the action's `reason`).
    fn reason(
        &self,
        before: &BTreeMap<String, String>,
        after: &BTreeMap<String, String>,
    ) -> String {
        let name = |id: &str| -> String {
            after
                .get(id)
                .or_else(|| before.get(id))
                .cloned()
                .unwrap_or_else(|| id.to_owned())
        };
        match self {
            GroupEvent::Renamed { old, new, .. } => format!("group renamed: {old} → {new}"),
            GroupEvent::Deleted { name, .. } => format!("group deleted: {name}"),
            GroupEvent::UserJoined { group, .. } => {
                format!("group membership changed: added to {}", name(group))
            }
            GroupEvent::UserLeft { group, .. } => {
                format!("group membership changed: removed from {}", name(group))
            }
            GroupEvent::GroupJoined { parent, child } => format!(
                "group membership changed: {} added to {}",
                name(child),
                name(parent)
            ),
            GroupEvent::GroupLeft { parent, child } => format!(
                "group membership changed: {} removed from {}",
                name(child),
                name(parent)
            ),
        }
    }
}

/// A groups delta round applied to the cached graph: the names and child groups after it (the
/// member lists it changed are in [`MemberLists`]), and what changed, in the order a user's
/// reason is chosen by: deletions, renames, child groups, users (each by group id). A deleted
/// group's links go with it (whether or not Graph also reports them gone from their parents),
/// so its deletion is the reason. Only real changes count: an item Graph replays, or a change
/// a crash left half-committed, changes nothing twice.
struct GroupRound {
    names: BTreeMap<String, String>,
    children: Children,
    events: Vec<GroupEvent>,
}

impl GroupRound {
    fn apply(
        groups: &BTreeMap<String, GroupDelta>,
        old_names: &BTreeMap<String, String>,
        old_children: &Children,
        lists: &mut MemberLists<'_>,
    ) -> Result<GroupRound, StateError> {
        let mut names = old_names.clone();
        let mut children = old_children.clone();
        let mut events = Vec::new();
        for (id, _) in groups.iter().filter(|(_, group)| group.removed) {
            let known = names.remove(id);
            let had_children = children.remove(id).is_some();
            let had_users = !lists.before(id)?.is_empty();
            lists.change(id)?.clear();
            // It leaves every group it was in, whether or not Graph says so as well.
            for kids in children.values_mut() {
                kids.remove(id);
            }
            children.retain(|_, kids| !kids.is_empty());
            if known.is_some() || had_children || had_users {
                events.push(GroupEvent::Deleted {
                    id: id.clone(),
                    name: known.unwrap_or_else(|| id.clone()),
                });
            }
        }
        for (id, group) in groups.iter().filter(|(_, group)| !group.removed) {
            if let Some(new) = &group.name {
                match names.insert(id.clone(), new.clone()) {
                    Some(old) if &old != new => events.push(GroupEvent::Renamed {
                        id: id.clone(),
                        old,
                        new: new.clone(),
                    }),
                    _ => {}
                }
            }
            if !group.added_groups.is_empty() || !group.removed_groups.is_empty() {
                let kids = children.entry(id.clone()).or_default();
                for child in &group.removed_groups {
                    if kids.remove(child) {
                        events.push(GroupEvent::GroupLeft {
                            parent: id.clone(),
                            child: child.clone(),
                        });
                    }
                }
                for child in &group.added_groups {
                    if child != id && kids.insert(child.clone()) {
                        events.push(GroupEvent::GroupJoined {
                            parent: id.clone(),
                            child: child.clone(),
                        });
                    }
                }
                if kids.is_empty() {
                    children.remove(id);
                }
            }
            if !group.added.is_empty() || !group.removed_members.is_empty() {
                let list = lists.change(id)?;
                for user in &group.removed_members {
                    if list.remove(user) {
                        events.push(GroupEvent::UserLeft {
                            group: id.clone(),
                            user: user.clone(),
                        });
                    }
                }
                for user in &group.added {
                    if list.insert(user.clone()) {
                        events.push(GroupEvent::UserJoined {
                            group: id.clone(),
                            user: user.clone(),
                        });
                    }
                }
            }
        }
        events.sort_by_key(GroupEvent::rank);
        Ok(GroupRound {
            names,
            children,
            events,
        })
    }
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
