//! The planner: a pure function from (source read, mapped users, state snapshot, safety
//! settings) to a [`Plan`] of creates, updates, deactivations, reactivations, skips and held
//! deactivations. Same inputs, same plan; it never sends, logs or waits. The executor carries
//! the plan out; `--dry-run` only prints it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::config::SafetyConfig;
use crate::mapping::{Decision, MappedUser};
use crate::model::{
    AccountStatus, Attributes, IdpId, Snapshot, SourceRead, attr, fold_user_name, same_value,
};

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A new account (`POST /Users`).
    Create,
    /// An existing SocialTalent account taken over (state only, plus an update when it differs).
    Adopt,
    /// Changed values pushed to an existing account.
    Update,
    /// A rehire: the same account made active again.
    Reactivate,
    /// A leaver's account deactivated.
    Deactivate,
    /// A deactivation withheld by the safety limits.
    Held,
    /// The IdP attribute set to the SocialTalent id.
    Writeback,
    /// A user that cannot be handled this run (the reason is in `error`).
    Skip,
}

impl Op {
    /// Whether the executor sends something to SocialTalent for this action.
    pub fn writes_target(self) -> bool {
        matches!(
            self,
            Op::Create | Op::Adopt | Op::Update | Op::Reactivate | Op::Deactivate
        )
    }
}

/// One attribute's change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The attribute's mapping name.
    pub attribute: String,
    /// The value SocialTalent has (as far as we know); null when unset.
    pub from: Value,
    /// The value to send; null clears it.
    pub to: Value,
}

/// One planned action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    /// What to do.
    pub op: Op,
    /// The IdP user.
    pub idp_id: IdpId,
    /// The user's SocialTalent `userName` (desired, else last pushed, else a label).
    #[serde(rename = "userName")]
    pub user_name: String,
    /// SocialTalent's id, when the account exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scim_id: Option<String>,
    /// The full desired attributes (creates, updates, reactivations).
    #[serde(skip)]
    pub attributes: Option<Attributes>,
    /// Field-level changes (updates, reactivations).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// Why (deactivations, held, drift).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the user is skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Execution wave: managers (wave 0) are created before their reports (wave 1, …).
    #[serde(skip)]
    pub wave: u32,
}

/// The whole plan of one run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// The actions, in report order.
    pub actions: Vec<Action>,
    /// Users in scope whose account already matches.
    pub unchanged: usize,
    /// Users in scope (provisioned or failing to map).
    pub in_scope: usize,
    /// Why deactivations were held, when they were.
    pub held_reason: Option<String>,
}

/// Counts of a plan, as in the report's `summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Summary {
    /// Creates.
    pub create: usize,
    /// Adoptions.
    pub adopted: usize,
    /// Updates (drift repairs included).
    pub update: usize,
    /// Deactivations.
    pub deactivate: usize,
    /// Reactivations.
    pub reactivate: usize,
    /// In-scope users with nothing to do.
    pub unchanged: usize,
    /// Skipped users.
    pub skipped: usize,
    /// Held deactivations.
    pub held: usize,
    /// Failed actions (after a real run).
    pub failed: usize,
    /// Drift repairs.
    pub drift_repaired: usize,
    /// Orphaned SocialTalent accounts.
    pub orphans: usize,
    /// IdP write-backs.
    pub writebacks: usize,
}

impl Plan {
    /// Counts the plan's actions.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary {
            unchanged: self.unchanged,
            ..Summary::default()
        };
        for action in &self.actions {
            match action.op {
                Op::Create => summary.create += 1,
                Op::Adopt => summary.adopted += 1,
                Op::Update => {
                    summary.update += 1;
                    if action.reason.as_deref() == Some("drift") {
                        summary.drift_repaired += 1;
                    }
                }
                Op::Deactivate => summary.deactivate += 1,
                Op::Reactivate => summary.reactivate += 1,
                Op::Held => summary.held += 1,
                Op::Writeback => summary.writebacks += 1,
                Op::Skip => summary.skipped += 1,
            }
        }
        summary
    }

    /// Whether the plan has nothing to send.
    pub fn is_noop(&self) -> bool {
        !self.actions.iter().any(|action| action.op.writes_target())
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The source read (full or incremental, removed ids, rejected records).
    pub read: &'a SourceRead,
    /// The mapping's decision for each user read, in any order.
    pub mapped: &'a [MappedUser],
    /// The state.
    pub state: &'a Snapshot,
    /// The safety limits.
    pub safety: &'a SafetyConfig,
    /// `--allow-deactivations`: release deactivations the limits would hold.
    pub allow_deactivations: bool,
}

/// Builds the plan.
pub fn build(inputs: &Inputs<'_>) -> Plan {
    let Inputs {
        read,
        mapped,
        state,
        safety,
        allow_deactivations,
    } = *inputs;
    let mut plan = Plan::default();
    let mut seen: BTreeSet<&IdpId> = BTreeSet::new();
    let conflicts = user_name_conflicts(mapped, state);

    let mut mapped: Vec<&MappedUser> = mapped.iter().collect();
    mapped.sort_by(|a, b| a.idp_id.cmp(&b.idp_id));

    for user in mapped {
        seen.insert(&user.idp_id);
        let record = state.users.get(&user.idp_id);
        let failure = state.failures.get(&user.idp_id);
        let quarantined = failure
            .filter(|failure| failure.consecutive >= safety.failure_quarantine_after)
            .filter(|_| !read.full);
        match &user.decision {
            Decision::Failed(error) => {
                plan.in_scope += 1;
                plan.actions.push(skip(user, record, error.to_string()));
            }
            Decision::Provision(attributes) => {
                plan.in_scope += 1;
                if let Some(failure) = quarantined {
                    plan.actions.push(skip(
                        user,
                        record,
                        format!(
                            "quarantined after {} consecutive failures (last: {}); retried on the next full run",
                            failure.consecutive, failure.last_error
                        ),
                    ));
                    continue;
                }
                if let Some(other) = conflicts.get(&user.idp_id) {
                    plan.actions.push(skip(
                        user,
                        record,
                        format!(
                            "userName {} is also claimed by IdP user {other}; fix the source or the mapping",
                            user_name_of(attributes).unwrap_or_default()
                        ),
                    ));
                    continue;
                }
                let user_name = user_name_of(attributes).unwrap_or(&user.label).to_owned();
                match record {
                    None => match missing_for_create(attributes) {
                        Some(error) => plan.actions.push(skip(user, record, error)),
                        None => plan.actions.push(Action {
                            op: Op::Create,
                            idp_id: user.idp_id.clone(),
                            user_name,
                            scim_id: None,
                            attributes: Some(attributes.clone()),
                            changes: Vec::new(),
                            reason: None,
                            error: None,
                            wave: 0,
                        }),
                    },
                    Some(record) => {
                        let changes = diff(&record.pushed, attributes);
                        let op = match record.status {
                            AccountStatus::Deactivated => Op::Reactivate,
                            AccountStatus::Active if changes.is_empty() => {
                                plan.unchanged += 1;
                                continue;
                            }
                            AccountStatus::Active => Op::Update,
                        };
                        plan.actions.push(Action {
                            op,
                            idp_id: user.idp_id.clone(),
                            user_name,
                            scim_id: Some(record.scim_id.clone()),
                            attributes: Some(attributes.clone()),
                            changes,
                            reason: (op == Op::Reactivate).then(|| "active again in source".into()),
                            error: None,
                            wave: 0,
                        });
                    }
                }
            }
            Decision::Inactive | Decision::OutOfScope => {
                if let Some(record) = record.filter(|r| r.status == AccountStatus::Active) {
                    let reason = if user.decision == Decision::Inactive {
                        "deactivated in source"
                    } else {
                        "left scope"
                    };
                    plan.actions
                        .push(deactivation(&user.idp_id, record, reason));
                }
            }
        }
    }

    // Records the source could not read are skipped and reported; they protect their users from
    // being taken for leavers below.
    for rejected in &read.rejected {
        let record = rejected.idp_id.as_ref().and_then(|id| state.users.get(id));
        plan.actions.push(Action {
            op: Op::Skip,
            idp_id: rejected
                .idp_id
                .clone()
                .unwrap_or_else(|| IdpId(String::new())),
            user_name: record.map_or_else(|| rejected.location.clone(), |r| r.user_name.clone()),
            scim_id: record.map(|r| r.scim_id.clone()),
            attributes: None,
            changes: Vec::new(),
            reason: None,
            error: Some(format!("{}: {}", rejected.location, rejected.error)),
            wave: 0,
        });
    }

    // Leavers that the read reports by absence (full reads) or by removal (incremental reads).
    let rejected_ids: BTreeSet<&IdpId> = read
        .rejected
        .iter()
        .filter_map(|rejected| rejected.idp_id.as_ref())
        .collect();
    let removed: BTreeSet<&IdpId> = read.removed.iter().collect();
    for (idp_id, record) in &state.users {
        if record.status != AccountStatus::Active
            || seen.contains(idp_id)
            || rejected_ids.contains(idp_id)
        {
            continue;
        }
        if removed.contains(idp_id) {
            plan.actions
                .push(deactivation(idp_id, record, "removed in source"));
        } else if read.full {
            plan.actions
                .push(deactivation(idp_id, record, "no longer in source"));
        }
    }

    plan.held_reason = hold_reason(read, state, safety, &plan);
    if let Some(reason) = &plan.held_reason
        && !allow_deactivations
    {
        for action in plan.actions.iter_mut().filter(|a| a.op == Op::Deactivate) {
            action.op = Op::Held;
            action.reason = Some(format!(
                "{}; held: {reason} (review, then run `sync --allow-deactivations`)",
                action.reason.as_deref().unwrap_or("deactivation")
            ));
        }
    }
    if allow_deactivations {
        plan.held_reason = None;
    }

    assign_waves(mapped_managers(inputs.mapped), &mut plan.actions);
    plan.actions.sort_by(|a, b| {
        (report_rank(a.op), a.wave, &a.idp_id).cmp(&(report_rank(b.op), b.wave, &b.idp_id))
    });
    plan
}

/// The attribute-level difference between what SocialTalent has and what we want.
pub fn diff(current: &Attributes, desired: &Attributes) -> Vec<Change> {
    let mut changes = Vec::new();
    for (attribute, to) in desired {
        match current.get(attribute) {
            Some(from) if same_value(attribute, from, to) => {}
            from => changes.push(Change {
                attribute: attribute.clone(),
                from: from.cloned().unwrap_or(Value::Null),
                to: to.clone(),
            }),
        }
    }
    for (attribute, from) in current {
        if !desired.contains_key(attribute) {
            changes.push(Change {
                attribute: attribute.clone(),
                from: from.clone(),
                to: Value::Null,
            });
        }
    }
    changes
}

/// The create-only rules: `coreTeam` and `role` are mandatory (SPEC §2).
fn missing_for_create(attributes: &Attributes) -> Option<String> {
    [attr::CORE_TEAM, attr::ROLE]
        .into_iter()
        .find(|name| !attributes.contains_key(*name))
        .map(|name| format!("{name} is empty; it is mandatory on create"))
}

fn user_name_of(attributes: &Attributes) -> Option<&str> {
    attributes.get(attr::USER_NAME).and_then(Value::as_str)
}

fn skip(user: &MappedUser, record: Option<&crate::model::UserRecord>, error: String) -> Action {
    Action {
        op: Op::Skip,
        idp_id: user.idp_id.clone(),
        user_name: match &user.decision {
            Decision::Provision(attributes) => user_name_of(attributes).map(str::to_owned),
            _ => None,
        }
        .or_else(|| record.map(|r| r.user_name.clone()))
        .unwrap_or_else(|| user.label.clone()),
        scim_id: record.map(|r| r.scim_id.clone()),
        attributes: None,
        changes: Vec::new(),
        reason: None,
        error: Some(error),
        wave: 0,
    }
}

fn deactivation(idp_id: &IdpId, record: &crate::model::UserRecord, reason: &str) -> Action {
    Action {
        op: Op::Deactivate,
        idp_id: idp_id.clone(),
        user_name: record.user_name.clone(),
        scim_id: Some(record.scim_id.clone()),
        attributes: None,
        changes: Vec::new(),
        reason: Some(reason.to_owned()),
        error: None,
        wave: 0,
    }
}

/// Users whose mapped `userName` collides with another IdP user's: the one whose account
/// already holds the name (active or deactivated: SocialTalent keeps deactivated accounts) keeps
/// it, and the others are skipped; when nobody holds it, all are skipped (never guessed: a 409
/// would otherwise merge two people into one account). Returns each loser and who it clashes with.
fn user_name_conflicts(mapped: &[MappedUser], state: &Snapshot) -> HashMap<IdpId, IdpId> {
    let mut claims: HashMap<String, BTreeSet<&IdpId>> = HashMap::new();
    let mut provisioned: BTreeSet<&IdpId> = BTreeSet::new();
    for user in mapped {
        if let Decision::Provision(attributes) = &user.decision
            && let Some(name) = user_name_of(attributes)
        {
            provisioned.insert(&user.idp_id);
            claims
                .entry(fold_user_name(name))
                .or_default()
                .insert(&user.idp_id);
        }
    }
    let mut holders: HashMap<String, &IdpId> = HashMap::new();
    for (idp_id, record) in &state.users {
        let name = fold_user_name(&record.user_name);
        if !provisioned.contains(idp_id) {
            claims.entry(name.clone()).or_default().insert(idp_id);
        }
        holders.entry(name).or_insert(idp_id);
    }
    let mut conflicts = HashMap::new();
    for (name, ids) in claims {
        if ids.len() < 2 {
            continue;
        }
        let holder = holders.get(&name).copied().filter(|h| ids.contains(h));
        for id in &ids {
            if Some(*id) == holder || !provisioned.contains(id) {
                continue;
            }
            let other = holder.or_else(|| ids.iter().copied().find(|other| other != id));
            if let Some(other) = other {
                conflicts.insert((*id).clone(), other.clone());
            }
        }
    }
    conflicts
}

fn hold_reason(
    read: &SourceRead,
    state: &Snapshot,
    safety: &SafetyConfig,
    plan: &Plan,
) -> Option<String> {
    let deactivations = plan
        .actions
        .iter()
        .filter(|action| action.op == Op::Deactivate)
        .count();
    if deactivations == 0 {
        return None;
    }
    if read.full && read.users.is_empty() {
        return Some("the source returned no users".into());
    }
    let unidentified = read
        .rejected
        .iter()
        .filter(|rejected| rejected.idp_id.is_none())
        .count();
    if read.full && unidentified > 0 {
        return Some(format!(
            "{unidentified} source record(s) could not be identified, so absence proves nothing"
        ));
    }
    let active = state.active_count();
    // Truncation is deliberate: a share never allows a fraction of a user more.
    let by_percent = (active as f64 * safety.max_deactivation_percent / 100.0).floor() as usize;
    let allowed = safety.max_deactivations.max(by_percent);
    (deactivations > allowed).then(|| {
        format!(
            "{deactivations} deactivations exceed the limit of {allowed} (max_deactivations = {}, max_deactivation_percent = {}% of {active} active users)",
            safety.max_deactivations, safety.max_deactivation_percent
        )
    })
}

fn mapped_managers(mapped: &[MappedUser]) -> HashMap<&IdpId, &IdpId> {
    mapped
        .iter()
        .filter_map(|user| user.manager.as_ref().map(|manager| (&user.idp_id, manager)))
        .collect()
}

/// Puts each write after the creation of its manager chain within this run: a user whose
/// manager is created (or reactivated) in the same run goes one wave later than the manager.
fn assign_waves(managers: HashMap<&IdpId, &IdpId>, actions: &mut [Action]) {
    let created: BTreeMap<IdpId, usize> = actions
        .iter()
        .enumerate()
        .filter(|(_, action)| matches!(action.op, Op::Create | Op::Reactivate))
        .map(|(index, action)| (action.idp_id.clone(), index))
        .collect();
    let mut memo: HashMap<IdpId, u32> = HashMap::new();
    for action in actions.iter_mut() {
        if !action.op.writes_target() || action.op == Op::Deactivate {
            continue;
        }
        action.wave = wave_of(&action.idp_id, &managers, &created, &mut memo);
    }
}

fn wave_of(
    idp_id: &IdpId,
    managers: &HashMap<&IdpId, &IdpId>,
    created: &BTreeMap<IdpId, usize>,
    memo: &mut HashMap<IdpId, u32>,
) -> u32 {
    if let Some(wave) = memo.get(idp_id) {
        return *wave;
    }
    // Walk up the chain of managers created in this run; a cycle stops the walk.
    let mut chain = Vec::new();
    let mut current = idp_id;
    let mut visited = BTreeSet::new();
    while let Some(manager) = managers.get(current) {
        if !created.contains_key(*manager) || !visited.insert(*manager) || *manager == idp_id {
            break;
        }
        if let Some(known) = memo.get(*manager) {
            let base = known + 1;
            memo.insert(idp_id.clone(), base + chain.len() as u32);
            return base + chain.len() as u32;
        }
        chain.push(*manager);
        current = manager;
    }
    let wave = chain.len() as u32;
    memo.insert(idp_id.clone(), wave);
    wave
}

fn report_rank(op: Op) -> u8 {
    match op {
        Op::Create => 0,
        Op::Adopt => 1,
        Op::Reactivate => 2,
        Op::Update => 3,
        Op::Deactivate => 4,
        Op::Held => 5,
        Op::Writeback => 6,
        Op::Skip => 7,
    }
}

#[cfg(test)]
mod tests;
