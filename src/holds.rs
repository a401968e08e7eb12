//! Pending holds: deactivations the safety limits held, kept in the state until they are
//! released (`approve`, `sync --allow-deactivations`) or moot, whatever runs come in between.
//! A run's plan shows only what that run planned (an incremental run does not plan the
//! absence-based deactivations of a nightly full run), so the pending list is carried from run
//! to run by [`carry`], a pure function of the previous list and what the run saw and did.
//! [`release`] turns exactly the approved holds of a plan back into deactivations.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::executor::ActionResult;
use crate::model::IdpId;
use crate::plan::{Action, Op, Plan};
use crate::state::HeldEntry;

/// A hold's identity: the IdP user's id, or `scim:<id>` for an orphan account (which has no IdP
/// user).
pub type HoldKey = String;

/// The key of a held or planned deactivation.
pub fn key_of(idp_id: &IdpId, scim_id: Option<&str>) -> HoldKey {
    if idp_id.0.is_empty() {
        format!("scim:{}", scim_id.unwrap_or_default())
    } else {
        idp_id.0.clone()
    }
}

/// The key of a pending hold.
pub fn entry_key(entry: &HeldEntry) -> HoldKey {
    key_of(&entry.idp_id, entry.scim_id.as_deref())
}

/// The keys of a pending list (what `approve` releases).
pub fn keys(pending: &[HeldEntry]) -> BTreeSet<HoldKey> {
    pending.iter().map(entry_key).collect()
}

/// What one run saw and did, as [`carry`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct RunView<'a> {
    /// The plan (held and planned deactivations).
    pub plan: &'a Plan,
    /// The results of an applied run, in plan order; `None` for a dry run, whose planned
    /// deactivations are taken as done (what pending would be after applying it).
    pub results: Option<&'a [ActionResult]>,
    /// Whether the source read was full: a full run plans every deactivation that still
    /// applies, so a hold it does not plan again is moot.
    pub full: bool,
    /// Whether the run read SocialTalent back (orphans are planned only then).
    pub read_back: bool,
    /// IdP users whose account the state still holds as active (after the run): a hold of
    /// anyone else is moot (the account is gone or already deactivated).
    pub still_active: &'a HashSet<IdpId>,
    /// When the run finished (RFC 3339), the `since` of new holds.
    pub now: &'a str,
}

/// The pending holds after a run: the run's own holds (keeping when each was first held),
/// plus every earlier hold that the run neither carried out nor made moot.
///
/// A hold is done when the run deactivated that account; it is moot when the state no longer
/// holds an active account for that user (the account is gone), or when a full run (with
/// read-back, for orphans) no longer plans it: a full run reads everyone, so a user who is back
/// in the source is seen there. An incremental run never makes a hold moot by what it read: it
/// may fill users in from the source cache (Okta's membership events), which can be older than
/// the hold, and absence-based holds cannot be judged from a partial read. A released
/// deactivation that failed stays pending.
pub fn carry(previous: &[HeldEntry], run: &RunView<'_>) -> Vec<HeldEntry> {
    let before: BTreeMap<HoldKey, &HeldEntry> = previous
        .iter()
        .map(|entry| (entry_key(entry), entry))
        .collect();
    let mut pending: BTreeMap<HoldKey, HeldEntry> = BTreeMap::new();
    let mut planned: HashSet<HoldKey> = HashSet::new();
    for (index, action) in run.plan.actions.iter().enumerate() {
        let key = key_of(&action.idp_id, action.scim_id.as_deref());
        match action.op {
            Op::Held => {
                planned.insert(key.clone());
                let since = before
                    .get(&key)
                    .map_or_else(|| run.now.to_owned(), |entry| entry.since.clone());
                pending.insert(key, entry_of(action, since));
            }
            Op::Deactivate => {
                planned.insert(key.clone());
                let done = match run.results {
                    None => true,
                    Some(results) => matches!(results.get(index), Some(ActionResult::Ok { .. })),
                };
                // A released deactivation that did not go through is still to be done.
                if let (false, Some(entry)) = (done, before.get(&key)) {
                    pending.insert(key, (*entry).clone());
                }
            }
            _ => {}
        }
    }
    for (key, entry) in before {
        if planned.contains(&key) {
            continue;
        }
        let moot = if entry.idp_id.0.is_empty() {
            run.full && run.read_back
        } else {
            run.full || !run.still_active.contains(&entry.idp_id)
        };
        if !moot {
            pending.insert(key, entry.clone());
        }
    }
    pending.into_values().collect()
}

/// Releases exactly the held deactivations of `plan` whose key is in `approved`: they become
/// deactivations again (with the reason they had before the hold). Anything else the limits
/// held stays held. Returns how many were released.
pub fn release(plan: &mut Plan, approved: &BTreeSet<HoldKey>) -> usize {
    let mut released = 0;
    for action in plan
        .actions
        .iter_mut()
        .filter(|action| action.op == Op::Held)
    {
        if !approved.contains(&key_of(&action.idp_id, action.scim_id.as_deref())) {
            continue;
        }
        action.op = Op::Deactivate;
        // The planner writes a held reason as "<why>; held: <limit> (review, …)".
        let why = action
            .reason
            .as_deref()
            .map(|reason| reason.split_once("; held: ").map_or(reason, |(why, _)| why))
            .unwrap_or("deactivation");
        action.reason = Some(format!("{why} (released by approval)"));
        released += 1;
    }
    if !plan.actions.iter().any(|action| action.op == Op::Held) {
        plan.held_reason = None;
    }
    released
}

fn entry_of(action: &Action, since: String) -> HeldEntry {
    HeldEntry {
        idp_id: action.idp_id.clone(),
        user_name: action.user_name.clone(),
        reason: action.reason.clone().unwrap_or_default(),
        scim_id: action.scim_id.clone(),
        since,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(idp_id: &str) -> Action {
        Action {
            idp_id: IdpId(idp_id.into()),
            user_name: format!("{idp_id}@example.com"),
            scim_id: Some(format!("s-{idp_id}")),
            reason: Some(
                "no longer in source; held: 3 deactivations exceed the limit of 0 (review, then run `socialtalent-sync approve`)"
                    .into(),
            ),
            ..Action::empty(Op::Held)
        }
    }

    fn entry(idp_id: &str, since: &str) -> HeldEntry {
        HeldEntry {
            since: since.into(),
            ..entry_of(&held(idp_id), String::new())
        }
    }

    fn orphan(scim_id: &str, op: Op) -> Action {
        Action {
            scim_id: Some(scim_id.into()),
            user_name: "old@example.com".into(),
            ..Action::empty(op)
        }
    }

    fn ids(list: &[&str]) -> HashSet<IdpId> {
        list.iter().map(|id| IdpId((*id).into())).collect()
    }

    fn view<'a>(
        plan: &'a Plan,
        results: Option<&'a [ActionResult]>,
        full: bool,
        still_active: &'a HashSet<IdpId>,
    ) -> RunView<'a> {
        RunView {
            plan,
            results,
            full,
            read_back: full,
            still_active,
            now: "2026-12-03T12:00:00Z",
        }
    }

    fn keys_of(pending: &[HeldEntry]) -> Vec<String> {
        pending.iter().map(entry_key).collect()
    }

    #[test]
    fn an_incremental_run_keeps_what_a_full_run_held() {
        let previous = vec![entry("a", "night"), entry("b", "night")];
        let plan = Plan::default();
        let active = ids(&["a", "b"]);
        let pending = carry(&previous, &view(&plan, Some(&[]), false, &active));
        assert_eq!(pending, previous);
    }

    #[test]
    fn a_run_holding_again_keeps_the_first_time_and_adds_new_holds() {
        let previous = vec![entry("a", "night")];
        let plan = Plan {
            actions: vec![held("a"), held("c")],
            ..Plan::default()
        };
        let active = ids(&["a", "c"]);
        let results = [ActionResult::NotSent, ActionResult::NotSent];
        let pending = carry(&previous, &view(&plan, Some(&results), true, &active));
        assert_eq!(keys_of(&pending), ["a", "c"]);
        assert_eq!(pending[0].since, "night");
        assert_eq!(pending[1].since, "2026-12-03T12:00:00Z");
    }

    #[test]
    fn holds_become_moot_when_the_account_is_gone_or_a_full_run_no_longer_plans_them() {
        let previous = vec![entry("a", "n"), entry("b", "n")];
        let plan = Plan::default();
        let active = ids(&["a"]);
        let pending = carry(&previous, &view(&plan, Some(&[]), false, &active));
        assert_eq!(keys_of(&pending), ["a"], "b's account is gone");
        // A full run that plans none of them again (the users are back): all moot.
        let pending = carry(&previous, &view(&plan, Some(&[]), true, &active));
        assert!(pending.is_empty());
    }

    #[test]
    fn deactivations_done_leave_and_failed_releases_stay() {
        let previous = vec![entry("a", "n"), entry("b", "n")];
        let mut plan = Plan {
            actions: vec![held("a"), held("b")],
            ..Plan::default()
        };
        assert_eq!(release(&mut plan, &keys(&previous)), 2);
        assert!(plan.actions.iter().all(|a| a.op == Op::Deactivate));
        assert_eq!(
            plan.actions[0].reason.as_deref(),
            Some("no longer in source (released by approval)")
        );
        let results = [
            ActionResult::Ok {
                note: None,
                scim_id: None,
                not_kept: Vec::new(),
            },
            ActionResult::Failed {
                error: "503".into(),
            },
        ];
        let active = ids(&["b"]);
        let pending = carry(&previous, &view(&plan, Some(&results), true, &active));
        assert_eq!(keys_of(&pending), ["b"]);
        // A dry run takes its deactivations as done.
        let pending = carry(&previous, &view(&plan, None, true, &active));
        assert!(pending.is_empty());
    }

    #[test]
    fn release_frees_exactly_the_approved_holds() {
        let mut plan = Plan {
            actions: vec![held("a"), held("new"), orphan("o1", Op::Held)],
            held_reason: Some("limits".into()),
            ..Plan::default()
        };
        let approved: BTreeSet<HoldKey> = ["a".to_owned(), "scim:o1".to_owned()].into();
        assert_eq!(release(&mut plan, &approved), 2);
        let ops: Vec<Op> = plan.actions.iter().map(|a| a.op).collect();
        assert_eq!(ops, [Op::Deactivate, Op::Held, Op::Deactivate]);
        assert_eq!(plan.held_reason.as_deref(), Some("limits"));
        let mut rest = Plan {
            actions: vec![held("a")],
            held_reason: Some("limits".into()),
            ..Plan::default()
        };
        release(&mut rest, &approved);
        assert_eq!(rest.held_reason, None, "nothing is held any more");
    }

    #[test]
    fn orphan_holds_become_moot_only_on_read_back_runs() {
        let previous = vec![HeldEntry {
            since: "n".into(),
            ..entry_of(&orphan("o1", Op::Held), String::new())
        }];
        let plan = Plan::default();
        let none = ids(&[]);
        let mut run = view(&plan, Some(&[]), true, &none);
        run.read_back = false;
        assert_eq!(carry(&previous, &run).len(), 1);
        run.read_back = true;
        assert!(carry(&previous, &run).is_empty());
        assert_eq!(keys_of(&previous), ["scim:o1"]);
    }
}
