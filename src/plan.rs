//! The planner: a pure function from (source read, mapped users, state snapshot, safety
//! settings) to a [`Plan`] of creates, updates, deactivations, reactivations, skips and held
//! deactivations. Same inputs, same plan; it never sends, logs or waits. The executor carries
//! the plan out; `--dry-run` only prints it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::config::{DriftPolicy, OrphanPolicy, SafetyConfig};
use crate::mapping::{Decision, MappedUser};
use crate::model::{
    AccountStatus, Attributes, Digest, IdpId, Keeping, KnownUser, Snapshot, SourceRead, TargetUser,
    attr, attributes_digest, fold_user_name, same_value,
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
    /// An account `[safety] protect` keeps as it is: never written to, adopted or deactivated.
    Protected,
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
    pub attributes: Option<Arc<Attributes>>,
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
    /// The fingerprint of the source user and mapping the attributes come from, recorded
    /// with them once SocialTalent confirms the write.
    #[serde(skip)]
    pub digest: Option<Digest>,
    /// What the state knows of the attributes SocialTalent keeps for this user, as this
    /// action leaves it when it sends nothing to judge by.
    #[serde(skip)]
    pub keeping: Keeping,
}

impl Action {
    /// An action of `op` with every other field empty.
    pub fn empty(op: Op) -> Action {
        Action {
            op,
            idp_id: IdpId(String::new()),
            user_name: String::new(),
            scim_id: None,
            attributes: None,
            changes: Vec::new(),
            reason: None,
            error: None,
            wave: 0,
            digest: None,
            keeping: Keeping::default(),
        }
    }
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
    /// Values changed in SocialTalent since our last push.
    pub drift: Vec<Drift>,
    /// Active SocialTalent accounts that no IdP user in scope has.
    pub orphans: Vec<Orphan>,
    /// Users found unchanged by comparing their attributes whose state record lacks their
    /// current digest (an older state, or a source change that maps to the same values): the
    /// state records the digest so that the next run recognises them without mapping.
    pub refresh: Vec<(IdpId, Digest)>,
    /// Users whose account lacks managed attributes SocialTalent did not keep, with those
    /// attributes (the report warns once per attribute).
    pub not_kept: BTreeMap<IdpId, Vec<String>>,
    /// What the plan noticed that is worth a warning (attributes no longer managed).
    pub warnings: Vec<String>,
    /// Users whose attributes last written without an answer the read-back judged: what the
    /// state records of them now (sent nothing; recorded like [`Plan::refresh`]).
    pub keeping: Vec<(IdpId, Keeping)>,
}

/// One attribute changed in SocialTalent since we pushed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drift {
    /// The IdP user.
    pub idp_id: IdpId,
    /// The account's userName.
    #[serde(rename = "userName")]
    pub user_name: String,
    /// The attribute (`active` when the account was deactivated in SocialTalent).
    pub attribute: String,
    /// What we pushed.
    pub ours: Value,
    /// What SocialTalent holds.
    pub theirs: Value,
    /// Whether this run repairs it.
    pub repaired: bool,
}

/// An active SocialTalent account that no IdP user in scope has.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Orphan {
    /// SocialTalent's id.
    pub scim_id: String,
    /// Its userName.
    #[serde(rename = "userName")]
    pub user_name: String,
    /// Its externalId, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
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
    /// Users (or accounts) kept as they are by `[safety] protect`.
    pub protected: usize,
    /// Users with at least one managed attribute SocialTalent did not keep.
    pub not_kept: usize,
}

impl Plan {
    /// Counts the plan's actions.
    pub fn summary(&self) -> Summary {
        let mut summary = Summary {
            unchanged: self.unchanged,
            orphans: self.orphans.len(),
            not_kept: self.not_kept.len(),
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
                Op::Protected => summary.protected += 1,
            }
        }
        summary
    }

    /// The warnings of the report: what the plan noticed, then one per attribute SocialTalent
    /// did not keep, with the number of users.
    pub fn all_warnings(&self) -> Vec<String> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for attributes in self.not_kept.values() {
            for attribute in attributes {
                *counts.entry(attribute.as_str()).or_default() += 1;
            }
        }
        let mut warnings = self.warnings.clone();
        for (attribute, users) in counts {
            warnings.push(format!(
                "{attribute}: not kept by the target for {users} user(s) (it does not declare it? `check-config --connect` lists the attributes the target does not declare); not sent again until its mapped value changes"
            ));
        }
        warnings
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
    /// SocialTalent's accounts, read back (full runs with `[reconcile] read_back`).
    pub target: Option<&'a [TargetUser]>,
    /// The attributes the mapping manages: the only ones compared, repaired or cleared.
    pub managed: &'a [String],
    /// What to do with drift and orphans.
    pub reconcile: Reconcile,
}

/// `[reconcile]`'s policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconcile {
    /// Drift: repair or report.
    pub drift: DriftPolicy,
    /// Orphans: report or deactivate.
    pub orphans: OrphanPolicy,
}

impl Default for Reconcile {
    fn default() -> Self {
        Reconcile {
            drift: DriftPolicy::Repair,
            orphans: OrphanPolicy::Report,
        }
    }
}

/// Builds the plan.
pub fn build(inputs: &Inputs<'_>) -> Plan {
    let Inputs {
        read,
        mapped,
        state,
        safety,
        allow_deactivations,
        ..
    } = *inputs;
    let mut plan = Plan::default();
    // Users read, in id order (the loop below goes through them sorted), for a merge-scan
    // against the state's sorted records instead of a set lookup per record.
    let mut seen: Vec<&IdpId> = Vec::with_capacity(mapped.len());
    let conflicts = user_name_conflicts(mapped, state);

    let mut mapped: Vec<&MappedUser> = mapped.iter().collect();
    mapped.sort_by(|a, b| a.idp_id.cmp(&b.idp_id));
    let target = inputs.target.map(TargetIndex::of);
    // Who owns which account and which ids exist matter only for adoption and orphans, that
    // is on read-back runs.
    let mut context = Context {
        managed: inputs.managed,
        drift_policy: inputs.reconcile.drift,
        owners: match target {
            Some(_) => state
                .users
                .iter()
                .map(|(idp_id, record)| (record.scim_id.as_str(), idp_id))
                .collect(),
            None => HashMap::new(),
        },
        known_ids: match target {
            Some(_) => mapped
                .iter()
                .map(|user| &user.idp_id)
                .chain(state.users.keys())
                .map(|id| id.0.as_str())
                .collect(),
            None => HashSet::new(),
        },
        claimed: HashSet::new(),
        protected: HashSet::new(),
        keeping: Vec::new(),
        protect: &safety.protect,
    };
    // Attributes a stored push holds that the mapping no longer manages, with how many users.
    let mut unmanaged: BTreeMap<String, usize> = BTreeMap::new();

    for user in mapped {
        seen.push(&user.idp_id);
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
            Decision::Provision(_) | Decision::Unchanged => {
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
                if let Some(record) = record
                    && safety.protect.covers(&record.user_name)
                {
                    plan.actions.push(protected(
                        &user.idp_id,
                        &record.user_name,
                        Some(&record.scim_id),
                        &mut context,
                    ));
                    continue;
                }
                if user.decision == Decision::Unchanged
                    && let Some(record) = record
                    && unchanged_at_target(user, record, target.as_ref(), inputs.managed)
                {
                    plan.unchanged += 1;
                    continue;
                }
                let attributes = match desired(user, record, inputs.managed) {
                    Ok(attributes) => attributes,
                    Err(error) => {
                        plan.actions.push(skip(user, record, error));
                        continue;
                    }
                };
                let attributes = &attributes;
                if let Some(name) = user_name_of(attributes)
                    && safety.protect.covers(name)
                {
                    plan.actions.push(protected(
                        &user.idp_id,
                        name,
                        record.map(|record| record.scim_id.as_str()),
                        &mut context,
                    ));
                    continue;
                }
                // `coreTeam` and `role` are never cleared: a user whose mandatory value renders
                // empty is skipped on every path, and the account stays as it is.
                if let Some(error) = missing_mandatory(attributes, inputs.managed) {
                    plan.actions.push(skip(user, record, error));
                    continue;
                }
                if let Some(record) = record
                    && let Some(pushed) = &record.pushed
                {
                    note_unmanaged(pushed, inputs.managed, &mut unmanaged);
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
                let planned = match (record, &target) {
                    (Some(record), None) => match &record.pushed {
                        Some(pushed) => against_state(
                            user,
                            &user_name,
                            record,
                            pushed,
                            attributes,
                            inputs.managed,
                        ),
                        None => Some(skip(user, Some(record), NOT_LOADED.into())),
                    },
                    (Some(record), Some(index)) => match index.by_id.get(record.scim_id.as_str()) {
                        Some(account) if account.compacted.is_some() => {
                            Some(skip(user, Some(record), NOT_LOADED.into()))
                        }
                        Some(account) => match &record.pushed {
                            Some(pushed) => against_account(
                                user,
                                &user_name,
                                record,
                                pushed,
                                account,
                                attributes,
                                &mut context,
                                &mut plan.drift,
                            ),
                            None => Some(skip(user, Some(record), NOT_LOADED.into())),
                        },
                        None => adopt_or_create(
                            user,
                            &user_name,
                            attributes,
                            Some(index),
                            &mut context,
                            Some("the account had disappeared from SocialTalent"),
                        ),
                    },
                    (None, index) => adopt_or_create(
                        user,
                        &user_name,
                        attributes,
                        index.as_ref(),
                        &mut context,
                        None,
                    ),
                };
                match planned {
                    Some(mut action) => {
                        if action.attributes.is_some() {
                            action.digest = Some(user.digest);
                        }
                        if let Some(record) = record
                            && action.keeping == Keeping::default()
                        {
                            action.keeping = Keeping {
                                not_kept: record.not_kept.clone(),
                                unconfirmed: record.unconfirmed.clone(),
                            };
                        }
                        plan.actions.push(action);
                    }
                    None => {
                        plan.unchanged += 1;
                        if let Some(record) = record
                            && record.digest != Some(user.digest)
                        {
                            plan.refresh.push((user.idp_id.clone(), user.digest));
                        }
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
                    plan.actions.push(deactivation_unless_protected(
                        &user.idp_id,
                        record,
                        reason,
                        safety,
                        &mut context,
                    ));
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
            digest: None,
            keeping: Keeping::default(),
        });
    }

    // Leavers that the read reports by absence (full reads) or by removal (incremental reads).
    let rejected_ids: BTreeSet<&IdpId> = read
        .rejected
        .iter()
        .filter_map(|rejected| rejected.idp_id.as_ref())
        .collect();
    let removed: BTreeSet<&IdpId> = read.removed.iter().collect();
    let mut cursor = 0;
    for (idp_id, record) in &state.users {
        while cursor < seen.len() && seen[cursor] < idp_id {
            cursor += 1;
        }
        let is_seen = cursor < seen.len() && seen[cursor] == idp_id;
        if record.status != AccountStatus::Active || is_seen || rejected_ids.contains(idp_id) {
            continue;
        }
        if removed.contains(idp_id) {
            plan.actions.push(deactivation_unless_protected(
                idp_id,
                record,
                "removed in source",
                safety,
                &mut context,
            ));
        } else if read.full {
            plan.actions.push(deactivation_unless_protected(
                idp_id,
                record,
                "no longer in source",
                safety,
                &mut context,
            ));
        }
    }

    if let Some(index) = &target {
        // Any IdP user the source returned (in scope or not, skipped, quarantined, one of an
        // ambiguous pair, a record it could not read) protects every account it matches by an
        // adoption key: only an account that matches nobody is an orphan.
        let matched = SourceKeys::of(read, inputs.mapped, state);
        for account in index.accounts {
            if !account.active
                || context.owners.contains_key(account.id.as_str())
                || context.claimed.contains(account.id.as_str())
                || matched.covers(account)
            {
                continue;
            }
            if safety.protect.covers(&account.user_name) {
                if !context.protected.contains(account.id.as_str()) {
                    plan.actions.push(protected(
                        &IdpId(String::new()),
                        &account.user_name,
                        Some(&account.id),
                        &mut context,
                    ));
                }
                continue;
            }
            plan.orphans.push(Orphan {
                scim_id: account.id.clone(),
                user_name: account.user_name.clone(),
                external_id: account.external_id.clone(),
            });
            if inputs.reconcile.orphans == OrphanPolicy::Deactivate {
                plan.actions.push(Action {
                    op: Op::Deactivate,
                    idp_id: IdpId(String::new()),
                    user_name: account.user_name.clone(),
                    scim_id: Some(account.id.clone()),
                    reason: Some("orphan: no IdP user in scope has this account".into()),
                    ..Action::empty(Op::Deactivate)
                });
            }
        }
    }

    for (attribute, users) in unmanaged {
        plan.warnings.push(format!(
            "{attribute}: no longer in [mapping], so no longer managed: never sent or cleared again, left as each account holds it ({users} user(s) had a value from an earlier mapping)"
        ));
    }
    plan.not_kept = state
        .users
        .iter()
        .filter(|(_, record)| record.status == AccountStatus::Active && !record.not_kept.is_empty())
        .map(|(idp_id, record)| (idp_id.clone(), record.not_kept.clone()))
        .collect();
    for (idp_id, keeping) in &context.keeping {
        if keeping.not_kept.is_empty() {
            plan.not_kept.remove(idp_id);
        } else {
            plan.not_kept
                .insert(idp_id.clone(), keeping.not_kept.clone());
        }
    }
    plan.keeping = std::mem::take(&mut context.keeping);

    // Why users that did not change themselves are written (a group renamed or deleted).
    if !read.reasons.is_empty() {
        for action in &mut plan.actions {
            let Some(why) = read.reasons.get(&action.idp_id) else {
                continue;
            };
            match action.op {
                Op::Create | Op::Update | Op::Reactivate if action.reason.is_none() => {
                    action.reason = Some(why.clone());
                }
                Op::Deactivate => {
                    action.reason = Some(format!(
                        "{} ({why})",
                        action.reason.as_deref().unwrap_or("deactivation")
                    ));
                }
                _ => {}
            }
        }
    }

    plan.held_reason = hold_reason(read, state, safety, &plan);
    if let Some(reason) = &plan.held_reason
        && !allow_deactivations
    {
        for action in plan.actions.iter_mut().filter(|a| a.op == Op::Deactivate) {
            action.op = Op::Held;
            action.reason = Some(format!(
                "{}; held: {reason} (review, then run `socialtalent-sync approve`)",
                action.reason.as_deref().unwrap_or("deactivation")
            ));
        }
    }
    if allow_deactivations {
        plan.held_reason = None;
    }

    if plan
        .actions
        .iter()
        .any(|action| matches!(action.op, Op::Create | Op::Reactivate))
    {
        assign_waves(mapped_managers(inputs.mapped), &mut plan.actions);
    }
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

/// What the per-user planning shares.
struct Context<'a> {
    managed: &'a [String],
    drift_policy: DriftPolicy,
    /// SocialTalent id → the IdP user the state gives it to.
    owners: HashMap<&'a str, &'a IdpId>,
    /// Every IdP id the run knows (read or in the state).
    known_ids: HashSet<&'a str>,
    /// Accounts adopted in this run.
    claimed: HashSet<String>,
    /// Accounts listed as protected in this run.
    protected: HashSet<String>,
    /// Users whose unconfirmed attributes the read-back judged, with what the state should
    /// record of them now.
    keeping: Vec<(IdpId, Keeping)>,
    /// `[safety] protect`.
    protect: &'a crate::config::Protect,
}

/// SocialTalent's accounts by the keys adoption matches on.
struct TargetIndex<'a> {
    accounts: &'a [TargetUser],
    by_id: HashMap<&'a str, &'a TargetUser>,
    by_external_id: HashMap<&'a str, Vec<&'a TargetUser>>,
    by_user_name: HashMap<String, Vec<&'a TargetUser>>,
    by_email: HashMap<String, Vec<&'a TargetUser>>,
}

impl<'a> TargetIndex<'a> {
    fn of(accounts: &'a [TargetUser]) -> TargetIndex<'a> {
        let mut index = TargetIndex {
            accounts,
            by_id: HashMap::new(),
            by_external_id: HashMap::new(),
            by_user_name: HashMap::new(),
            by_email: HashMap::new(),
        };
        for account in accounts {
            index.by_id.insert(account.id.as_str(), account);
            // A compacted account belongs to an unchanged user: never a candidate for anyone
            // else's adoption, so it needs no place in the adoption indexes.
            if account.compacted.is_some() {
                continue;
            }
            if let Some(external_id) = &account.external_id {
                index
                    .by_external_id
                    .entry(external_id.as_str())
                    .or_default()
                    .push(account);
            }
            index
                .by_user_name
                .entry(fold_user_name(&account.user_name))
                .or_default()
                .push(account);
            if let Some(email) = account.attributes.get("emails").and_then(Value::as_str) {
                index
                    .by_email
                    .entry(email.to_lowercase())
                    .or_default()
                    .push(account);
            }
        }
        index
    }
}

/// The plan for a user the state knows, without read-back: compare with what we pushed.
fn against_state(
    user: &MappedUser,
    user_name: &str,
    record: &KnownUser,
    pushed: &Attributes,
    attributes: &Arc<Attributes>,
    managed: &[String],
) -> Option<Action> {
    // Equal maps need no field-by-field diff (values are kept normalised, so equal means
    // unchanged).
    if record.status == AccountStatus::Active && pushed == &**attributes {
        return None;
    }
    // Only what the mapping manages now is compared: an attribute that left the mapping is
    // neither sent nor cleared.
    let changes = diff(&managed_part(pushed, managed), attributes);
    let op = match record.status {
        AccountStatus::Deactivated => Op::Reactivate,
        AccountStatus::Active if changes.is_empty() => return None,
        AccountStatus::Active => Op::Update,
    };
    Some(Action {
        op,
        idp_id: user.idp_id.clone(),
        user_name: user_name.to_owned(),
        scim_id: Some(record.scim_id.clone()),
        attributes: Some(attributes.clone()),
        changes,
        reason: (op == Op::Reactivate).then(|| "active again in source".into()),
        ..Action::empty(op)
    })
}

/// The managed part of an account's attributes.
fn managed_part(attributes: &Attributes, managed: &[String]) -> Attributes {
    attributes
        .iter()
        .filter(|(name, _)| managed.contains(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

fn same(attribute: &str, left: Option<&Value>, right: Option<&Value>) -> bool {
    match (left, right) {
        (Some(left), Some(right)) => same_value(attribute, left, right),
        (None, None) => true,
        _ => false,
    }
}

/// The plan for a user the state knows, against what SocialTalent holds: drift is what changed
/// there since our push; it is repaired or only reported; our own changes always go out.
#[allow(clippy::too_many_arguments)]
fn against_account(
    user: &MappedUser,
    user_name: &str,
    record: &KnownUser,
    pushed: &Attributes,
    account: &TargetUser,
    attributes: &Arc<Attributes>,
    context: &mut Context<'_>,
    drift: &mut Vec<Drift>,
) -> Option<Action> {
    if context.protect.covers(&account.user_name) {
        return Some(protected(
            &user.idp_id,
            &account.user_name,
            Some(&account.id),
            context,
        ));
    }
    let mut current = managed_part(&account.attributes, context.managed);
    // A value SocialTalent did not keep is not sent again (nor taken for drift) while its
    // mapped value stays what we sent. Values last written without an answer to judge by are
    // judged now: absent, they were not kept.
    let mut keeping = Keeping {
        not_kept: record.not_kept.clone(),
        unconfirmed: Vec::new(),
    };
    for name in &record.unconfirmed {
        if !current.contains_key(name)
            && pushed.get(name).is_some()
            && !keeping.not_kept.contains(name)
        {
            keeping.not_kept.push(name.clone());
        }
    }
    // One SocialTalent now holds (it was given the attribute since) is kept after all.
    keeping.not_kept.retain(|name| !current.contains_key(name));
    keeping.not_kept.sort();
    for name in &keeping.not_kept {
        if !current.contains_key(name)
            && let Some(ours) = pushed.get(name)
            && same(name, Some(ours), attributes.get(name))
        {
            current.insert(name.clone(), ours.clone());
        }
    }
    if !record.unconfirmed.is_empty() || keeping.not_kept != record.not_kept {
        context.keeping.push((user.idp_id.clone(), keeping.clone()));
    }
    let repair = context.drift_policy == DriftPolicy::Repair;
    let mut drifted = Vec::new();
    for name in context.managed {
        let ours = pushed.get(name);
        let theirs = current.get(name);
        // A value that already is what we want is not drift, even if the state remembers an
        // older push (a write confirmed but not recorded before a crash).
        if !same(name, ours, theirs) && !same(name, theirs, attributes.get(name)) {
            drifted.push(name.as_str());
            drift.push(Drift {
                idp_id: user.idp_id.clone(),
                user_name: user_name.to_owned(),
                attribute: name.clone(),
                ours: ours.cloned().unwrap_or(Value::Null),
                theirs: theirs.cloned().unwrap_or(Value::Null),
                repaired: repair,
            });
        }
    }
    let deactivated_there = record.status == AccountStatus::Active && !account.active;
    if deactivated_there {
        drift.push(Drift {
            idp_id: user.idp_id.clone(),
            user_name: user_name.to_owned(),
            attribute: "active".into(),
            ours: Value::Bool(true),
            theirs: Value::Bool(false),
            repaired: repair,
        });
    }
    let mut changes = diff(&current, attributes);
    if !repair {
        // Report only: leave drifted values alone unless our side changed them too.
        changes.retain(|change| {
            !drifted.contains(&change.attribute.as_str())
                || !same(
                    &change.attribute,
                    pushed.get(&change.attribute),
                    attributes.get(&change.attribute),
                )
        });
    }
    let only_drift = !changes.is_empty()
        && changes
            .iter()
            .all(|change| drifted.contains(&change.attribute.as_str()))
        && changes.iter().all(|change| {
            same(
                &change.attribute,
                pushed.get(&change.attribute),
                attributes.get(&change.attribute),
            )
        });
    let (op, reason) = match record.status {
        AccountStatus::Deactivated => (Op::Reactivate, Some("active again in source".to_owned())),
        AccountStatus::Active if deactivated_there && repair => {
            (Op::Reactivate, Some("drift".to_owned()))
        }
        AccountStatus::Active if changes.is_empty() => {
            // SocialTalent already holds what we want. If the state remembers an older push (a
            // write confirmed but not recorded before a crash), record the account as it is:
            // otherwise a later change back would look like drift.
            if diff(&managed_part(pushed, context.managed), attributes).is_empty() {
                return None;
            }
            return Some(Action {
                op: Op::Adopt,
                idp_id: user.idp_id.clone(),
                user_name: user_name.to_owned(),
                scim_id: Some(account.id.clone()),
                attributes: Some(attributes.clone()),
                reason: Some(
                    "SocialTalent already matches; the state is brought up to date".into(),
                ),
                keeping,
                ..Action::empty(Op::Adopt)
            });
        }
        AccountStatus::Active => (Op::Update, only_drift.then(|| "drift".to_owned())),
    };
    Some(Action {
        op,
        idp_id: user.idp_id.clone(),
        user_name: user_name.to_owned(),
        scim_id: Some(account.id.clone()),
        attributes: Some(attributes.clone()),
        changes,
        reason,
        keeping,
        ..Action::empty(op)
    })
}

/// Which account a new user should take over, if any.
enum Match<'a> {
    One(&'a TargetUser),
    Ambiguous(&'static str, Vec<&'a TargetUser>),
    None,
}

/// Matches a user the state does not know to an existing account: by `externalId`, then
/// `userName` (any case), then the primary email. Accounts the state gives to someone else, or
/// already adopted in this run, never match; two candidates on one key are ambiguous.
fn find_account<'a>(
    user: &MappedUser,
    attributes: &Attributes,
    index: &TargetIndex<'a>,
    context: &Context<'_>,
) -> Match<'a> {
    let usable = |account: &&'a TargetUser| {
        context
            .owners
            .get(account.id.as_str())
            .is_none_or(|owner| **owner == user.idp_id)
            && !context.claimed.contains(account.id.as_str())
    };
    // An account whose externalId is another known IdP user's belongs to that user.
    let not_someone_elses = |account: &&'a TargetUser| {
        account.external_id.as_deref().is_none_or(|external| {
            external == user.idp_id.0 || !context.known_ids.contains(external)
        })
    };
    let keys: [(&'static str, Option<&Vec<&'a TargetUser>>); 3] = [
        (
            "externalId",
            index.by_external_id.get(user.idp_id.0.as_str()),
        ),
        (
            "userName",
            user_name_of(attributes).and_then(|name| index.by_user_name.get(&fold_user_name(name))),
        ),
        (
            "email",
            attributes
                .get("emails")
                .and_then(Value::as_str)
                .and_then(|email| index.by_email.get(&email.to_lowercase())),
        ),
    ];
    for (key, candidates) in keys {
        let candidates: Vec<&TargetUser> = candidates
            .into_iter()
            .flatten()
            .copied()
            .filter(usable)
            .filter(not_someone_elses)
            .collect();
        match candidates.len() {
            0 => continue,
            1 => return Match::One(candidates[0]),
            _ => return Match::Ambiguous(key, candidates),
        }
    }
    Match::None
}

/// The plan for a user without an account we know: adopt a matching one, else create.
fn adopt_or_create(
    user: &MappedUser,
    user_name: &str,
    attributes: &Arc<Attributes>,
    index: Option<&TargetIndex<'_>>,
    context: &mut Context<'_>,
    reason: Option<&str>,
) -> Option<Action> {
    let found = match index {
        Some(index) => find_account(user, attributes, index, context),
        None => Match::None,
    };
    match found {
        Match::One(account) if context.protect.covers(&account.user_name) => Some(protected(
            &user.idp_id,
            &account.user_name,
            Some(&account.id),
            context,
        )),
        Match::One(account) => {
            context.claimed.insert(account.id.clone());
            let current = managed_part(&account.attributes, context.managed);
            let mut changes = diff(&current, attributes);
            if !account.active {
                changes.push(Change {
                    attribute: "active".into(),
                    from: Value::Bool(false),
                    to: Value::Bool(true),
                });
            }
            Some(Action {
                op: Op::Adopt,
                idp_id: user.idp_id.clone(),
                user_name: user_name.to_owned(),
                scim_id: Some(account.id.clone()),
                attributes: Some(attributes.clone()),
                changes,
                reason: reason.map(str::to_owned),
                ..Action::empty(Op::Adopt)
            })
        }
        Match::Ambiguous(key, candidates) => {
            let ids: Vec<String> = candidates
                .iter()
                .map(|account| format!("{} ({})", account.id, account.user_name))
                .collect();
            Some(Action {
                op: Op::Skip,
                idp_id: user.idp_id.clone(),
                user_name: user_name.to_owned(),
                error: Some(format!(
                    "ambiguous: SocialTalent accounts {} all match by {key}; resolve by hand (not guessed)",
                    ids.join(", ")
                )),
                ..Action::empty(Op::Skip)
            })
        }
        Match::None => Some(match missing_for_create(attributes) {
            Some(error) => Action {
                op: Op::Skip,
                idp_id: user.idp_id.clone(),
                user_name: user_name.to_owned(),
                error: Some(error),
                ..Action::empty(Op::Skip)
            },
            None => Action {
                op: Op::Create,
                idp_id: user.idp_id.clone(),
                user_name: user_name.to_owned(),
                attributes: Some(attributes.clone()),
                reason: reason.map(str::to_owned),
                ..Action::empty(Op::Create)
            },
        }),
    }
}

/// The create-only rules: `coreTeam` and `role` are mandatory (SPEC §2).
fn missing_for_create(attributes: &Attributes) -> Option<String> {
    [attr::CORE_TEAM, attr::ROLE]
        .into_iter()
        .find(|name| !attributes.contains_key(*name))
        .map(|name| format!("{name} is empty; it is mandatory on create"))
}

/// The message of a user the planner cannot plan because its run did not load what it needs.
const NOT_LOADED: &str =
    "internal: the state's attributes for this user were not loaded; retried next run";

/// The attributes a provisioned user should have: the mapped ones, or (when unchanged) the
/// ones SocialTalent last confirmed.
fn desired(
    user: &MappedUser,
    record: Option<&KnownUser>,
    managed: &[String],
) -> Result<Arc<Attributes>, String> {
    match (&user.decision, record) {
        (Decision::Provision(attributes), _) => Ok(attributes.clone()),
        (Decision::Unchanged, Some(record)) => {
            let pushed = record
                .pushed
                .as_ref()
                .ok_or_else(|| NOT_LOADED.to_owned())?;
            // An attribute that left the mapping is not ours any more.
            if pushed.keys().all(|name| managed.contains(name)) {
                Ok(pushed.clone())
            } else {
                Ok(Arc::new(managed_part(pushed, managed)))
            }
        }
        _ => Err("internal: an unchanged user without a state record; retried next run".into()),
    }
}

/// `coreTeam` and `role` are never cleared (SPEC §2: mandatory): when the mapping manages
/// one and it renders empty, the user is skipped with this message on every path.
fn missing_mandatory(attributes: &Attributes, managed: &[String]) -> Option<String> {
    [attr::CORE_TEAM, attr::ROLE]
        .into_iter()
        .find(|name| managed.iter().any(|m| m == name) && !attributes.contains_key(*name))
        .map(|name| format!("{name} is empty; it is mandatory on create"))
}

/// Counts the attributes of a stored push that the mapping no longer manages.
fn note_unmanaged(
    pushed: &Attributes,
    managed: &[String],
    unmanaged: &mut BTreeMap<String, usize>,
) {
    for name in pushed.keys() {
        if !managed.contains(name) {
            *unmanaged.entry(name.clone()).or_default() += 1;
        }
    }
}

/// The action of an account `[safety] protect` keeps as it is (listed once per run).
fn protected(
    idp_id: &IdpId,
    user_name: &str,
    scim_id: Option<&str>,
    context: &mut Context<'_>,
) -> Action {
    if let Some(scim_id) = scim_id {
        context.protected.insert(scim_id.to_owned());
    }
    Action {
        op: Op::Protected,
        idp_id: idp_id.clone(),
        user_name: user_name.to_owned(),
        scim_id: scim_id.map(str::to_owned),
        reason: Some("protected by [safety] protect: never changed, adopted or deactivated".into()),
        ..Action::empty(Op::Protected)
    }
}

/// A leaver's deactivation, unless `[safety] protect` keeps the account.
fn deactivation_unless_protected(
    idp_id: &IdpId,
    record: &KnownUser,
    reason: &str,
    safety: &SafetyConfig,
    context: &mut Context<'_>,
) -> Action {
    if safety.protect.covers(&record.user_name) {
        protected(idp_id, &record.user_name, Some(&record.scim_id), context)
    } else {
        deactivation(idp_id, record, reason)
    }
}

/// The adoption keys of every IdP user the source returned, whatever the plan does with them:
/// their ids (`externalId`), names and emails (case-insensitive).
struct SourceKeys<'a> {
    ids: HashSet<&'a str>,
    names: HashSet<String>,
}

impl<'a> SourceKeys<'a> {
    fn of(read: &'a SourceRead, mapped: &'a [MappedUser], state: &'a Snapshot) -> SourceKeys<'a> {
        let mut ids: HashSet<&str> = HashSet::new();
        let mut names: HashSet<String> = HashSet::new();
        let note_record = |idp_id: &IdpId, names: &mut HashSet<String>| {
            if let Some(record) = state.users.get(idp_id) {
                names.insert(fold_user_name(&record.user_name));
            }
        };
        for user in &read.users {
            ids.insert(user.id.0.as_str());
            for key in [&user.login, &user.email].into_iter().flatten() {
                names.insert(fold_user_name(key));
            }
            note_record(&user.id, &mut names);
        }
        for rejected in &read.rejected {
            if let Some(idp_id) = &rejected.idp_id {
                ids.insert(idp_id.0.as_str());
                note_record(idp_id, &mut names);
            }
        }
        for user in mapped {
            ids.insert(user.idp_id.0.as_str());
            if let Decision::Provision(attributes) = &user.decision {
                for name in [attr::USER_NAME, "emails"] {
                    if let Some(value) = attributes.get(name).and_then(Value::as_str) {
                        names.insert(fold_user_name(value));
                    }
                }
            }
        }
        SourceKeys { ids, names }
    }

    /// Whether `account` matches one of these users by an adoption key.
    fn covers(&self, account: &TargetUser) -> bool {
        account
            .external_id
            .as_deref()
            .is_some_and(|external_id| self.ids.contains(external_id))
            || self.names.contains(&fold_user_name(&account.user_name))
            || account
                .attributes
                .get("emails")
                .and_then(Value::as_str)
                .is_some_and(|email| self.names.contains(&fold_user_name(email)))
    }
}

/// Whether an [`Decision::Unchanged`] user needs nothing: its record is active and carries
/// its digest, and (on read-back runs) its account is active and holds what we pushed.
fn unchanged_at_target(
    user: &MappedUser,
    record: &KnownUser,
    target: Option<&TargetIndex<'_>>,
    managed: &[String],
) -> bool {
    if record.status != AccountStatus::Active || record.digest != Some(user.digest) {
        return false;
    }
    let Some(index) = target else {
        return true;
    };
    index
        .by_id
        .get(record.scim_id.as_str())
        .is_some_and(|account| {
            account.active
                && record.pushed_digest.is_some()
                && record.pushed_digest == Some(account_digest(account, managed))
        })
}

/// The fingerprint of the managed part of an account, comparable with a record's
/// `pushed_digest`.
fn account_digest(account: &TargetUser, managed: &[String]) -> Digest {
    if let Some(digest) = account.compacted {
        return digest;
    }
    attributes_digest(
        account
            .attributes
            .iter()
            .filter(|(name, _)| managed.contains(name)),
    )
}

/// Drops, as the read-back reads them, the attributes of accounts the plan will find
/// unchanged: accounts active in SocialTalent that hold exactly what the state says we pushed
/// for an [`Decision::Unchanged`] user ([`TargetUser::compacted`]). Every other account is
/// kept whole (adoption, drift and `PUT` need it).
#[derive(Debug, Clone, Default)]
pub struct Compactor<'a> {
    /// SocialTalent id → the pushed digest of its unchanged owner.
    owners: HashMap<&'a str, Digest>,
    managed: &'a [String],
}

impl<'a> Compactor<'a> {
    /// The compactor for a run's mapping decisions and state.
    pub fn new(mapped: &[MappedUser], state: &'a Snapshot, managed: &'a [String]) -> Compactor<'a> {
        let owners = mapped
            .iter()
            .filter(|user| user.decision == Decision::Unchanged)
            .filter_map(|user| {
                let record = state.users.get(&user.idp_id)?;
                let unchanged =
                    record.status == AccountStatus::Active && record.digest == Some(user.digest);
                unchanged
                    .then_some(record.pushed_digest)
                    .flatten()
                    .map(|digest| (record.scim_id.as_str(), digest))
            })
            .collect();
        Compactor { owners, managed }
    }

    /// The account, with its attributes dropped when the plan will not read them.
    pub fn compact(&self, mut account: TargetUser) -> TargetUser {
        if !account.active || account.compacted.is_some() {
            return account;
        }
        let Some(pushed) = self.owners.get(account.id.as_str()) else {
            return account;
        };
        let digest = account_digest(&account, self.managed);
        if digest == *pushed {
            account.attributes = Attributes::new();
            account.compacted = Some(digest);
        }
        account
    }
}

/// The users whose stored attributes this run's plan compares, so that the state loads them
/// (and only them) before [`build`]: provisioned users that were mapped, and unchanged users
/// whose account differs from what we pushed.
pub fn needs_pushed(
    mapped: &[MappedUser],
    state: &Snapshot,
    target: Option<&[TargetUser]>,
    managed: &[String],
) -> Vec<IdpId> {
    let index = target.map(TargetIndex::of);
    mapped
        .iter()
        .filter(
            |user| match (&user.decision, state.users.get(&user.idp_id)) {
                (Decision::Provision(_), Some(_)) => true,
                (Decision::Unchanged, Some(record)) => {
                    !unchanged_at_target(user, record, index.as_ref(), managed)
                }
                _ => false,
            },
        )
        .map(|user| user.idp_id.clone())
        .collect()
}

fn user_name_of(attributes: &Attributes) -> Option<&str> {
    attributes.get(attr::USER_NAME).and_then(Value::as_str)
}

fn skip(user: &MappedUser, record: Option<&KnownUser>, error: String) -> Action {
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
        digest: None,
        keeping: Keeping::default(),
    }
}

fn deactivation(idp_id: &IdpId, record: &KnownUser, reason: &str) -> Action {
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
        digest: None,
        keeping: Keeping::default(),
    }
}

/// Users whose mapped `userName` collides with another IdP user's: the one whose account
/// already holds the name (active or deactivated: SocialTalent keeps deactivated accounts) keeps
/// it, and the others are skipped; when nobody holds it, all are skipped (never guessed: a 409
/// would otherwise merge two people into one account). Returns each loser and who it clashes with.
fn user_name_conflicts(mapped: &[MappedUser], state: &Snapshot) -> HashMap<IdpId, IdpId> {
    // Only provisioned users can lose a clash; with none (a no-change run), there is none.
    if !mapped
        .iter()
        .any(|user| matches!(user.decision, Decision::Provision(_)))
    {
        return HashMap::new();
    }
    // Every claim on a name: the provisioned users' desired names, and the names of the
    // accounts the state holds for everyone else. Sorted by name, a clash is a run of equal
    // names; names are folded without allocating when they are lower-case ASCII already.
    let mut provisioned: Vec<&IdpId> = Vec::with_capacity(mapped.len());
    let mut claims: Vec<(Cow<'_, str>, &IdpId)> =
        Vec::with_capacity(mapped.len() + state.users.len());
    for user in mapped {
        if let Decision::Provision(attributes) = &user.decision
            && let Some(name) = user_name_of(attributes)
        {
            provisioned.push(&user.idp_id);
            claims.push((fold_cheaply(name), &user.idp_id));
        }
    }
    provisioned.sort_unstable();
    for (idp_id, record) in &state.users {
        if provisioned.binary_search(&idp_id).is_err() {
            claims.push((fold_cheaply(&record.user_name), idp_id));
        }
    }
    claims.sort_unstable();
    claims.dedup();
    let mut conflicts = HashMap::new();
    for group in claims.chunk_by(|a, b| a.0 == b.0) {
        if group.len() < 2 {
            continue;
        }
        let name = &group[0].0;
        let ids: Vec<&IdpId> = group.iter().map(|(_, id)| *id).collect();
        // The one whose account already holds the name keeps it (the first by id, as before).
        let holder = ids.iter().copied().find(|id| {
            state
                .users
                .get(*id)
                .is_some_and(|record| fold_cheaply(&record.user_name) == *name)
        });
        for id in &ids {
            if Some(*id) == holder || provisioned.binary_search(id).is_err() {
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

/// [`fold_user_name`] without an allocation for names that are lower-case ASCII already.
fn fold_cheaply(name: &str) -> Cow<'_, str> {
    if name
        .bytes()
        .all(|byte| byte.is_ascii() && !byte.is_ascii_uppercase())
    {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(fold_user_name(name))
    }
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
        Op::Protected => 8,
    }
}

#[cfg(test)]
mod tests;
