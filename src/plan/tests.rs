use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::mapping::MappingError;
use crate::model::{FailureRecord, RejectedRecord, SourceKind, SourceUser, UserRecord};

fn safety() -> SafetyConfig {
    SafetyConfig {
        max_deactivations: 2,
        max_deactivation_percent: 0.0,
        failure_quarantine_after: 3,
        protect: crate::config::Protect::default(),
    }
}

fn attrs(user_name: &str, team: &str) -> Attributes {
    serde_json::from_value(json!({
        "userName": user_name,
        "externalId": "x",
        "coreTeam": team,
        "role": "user",
        "learningPaths": ["A", "B"],
    }))
    .expect("attributes")
}

fn provisioned(id: &str, attributes: Attributes) -> MappedUser {
    MappedUser {
        idp_id: IdpId(id.into()),
        label: id.into(),
        manager: None,
        digest: attributes_digest(&attributes),
        decision: Decision::Provision(Arc::new(attributes)),
    }
}

fn decided(id: &str, decision: Decision) -> MappedUser {
    MappedUser {
        idp_id: IdpId(id.into()),
        label: id.into(),
        manager: None,
        digest: Digest(0),
        decision,
    }
}

fn record(attributes: &Attributes, status: AccountStatus) -> KnownUser {
    KnownUser::from(UserRecord {
        scim_id: format!(
            "scim-{}",
            attributes["userName"].as_str().expect("userName")
        ),
        user_name: attributes["userName"]
            .as_str()
            .expect("userName")
            .to_owned(),
        pushed: attributes.clone(),
        status,
        updated_at: "2026-01-01T00:00:00Z".into(),
        digest: None,
        pushed_digest: Some(attributes_digest(attributes)),
        not_kept: Vec::new(),
        unconfirmed: Vec::new(),
    })
}

fn source_user(id: &str) -> Arc<SourceUser> {
    Arc::new(SourceUser {
        id: IdpId(id.into()),
        login: None,
        email: None,
        given_name: None,
        family_name: None,
        display_name: None,
        active: true,
        status: None,
        department: None,
        title: None,
        employee_id: None,
        manager_id: None,
        manager: None,
        groups: Vec::new(),
        attrs: Default::default(),
    })
}

/// A full read holding exactly the mapped users (the planner only looks at ids and counts).
fn full_read(mapped: &[MappedUser]) -> SourceRead {
    SourceRead {
        kind: SourceKind::File,
        full: true,
        users: mapped.iter().map(|m| source_user(&m.idp_id.0)).collect(),
        removed: Vec::new(),
        rejected: Vec::new(),
        warnings: Vec::new(),
        reasons: Default::default(),
        commit: Default::default(),
    }
}

fn plan_of(read: &SourceRead, mapped: &[MappedUser], state: &Snapshot) -> Plan {
    build(&Inputs {
        read,
        mapped,
        state,
        safety: &safety(),
        allow_deactivations: false,
        target: None,
        managed: &managed(),
        reconcile: Reconcile::default(),
    })
}

/// What the executor records when every action succeeds.
fn apply(plan: &Plan, state: &mut Snapshot) {
    for action in &plan.actions {
        match action.op {
            Op::Create | Op::Adopt | Op::Update | Op::Reactivate => {
                let attributes = action.attributes.clone().expect("attributes");
                let mut new = record(&attributes, AccountStatus::Active);
                if let Some(scim_id) = &action.scim_id {
                    new.scim_id = scim_id.clone();
                }
                new.digest = action.digest;
                state.users.insert(action.idp_id.clone(), new);
            }
            Op::Deactivate => {
                if let Some(existing) = state.users.get_mut(&action.idp_id) {
                    existing.status = AccountStatus::Deactivated;
                }
            }
            Op::Held | Op::Skip | Op::Writeback | Op::Protected => {}
        }
    }
}

fn ops(plan: &Plan) -> Vec<(Op, &str)> {
    plan.actions
        .iter()
        .map(|action| (action.op, action.idp_id.0.as_str()))
        .collect()
}

#[test]
fn first_run_creates_and_skips_users_missing_mandatory_attributes() {
    let mut no_team = attrs("c@x.com", "T");
    no_team.remove("coreTeam");
    let mapped = vec![
        provisioned("a", attrs("a@x.com", "Sales")),
        provisioned("c", no_team),
        decided("d", Decision::Inactive),
        decided("e", Decision::OutOfScope),
        decided(
            "f",
            Decision::Failed(Box::new(MappingError {
                attribute: "role".into(),
                reason: "bad".into(),
            })),
        ),
    ];
    let plan = plan_of(&full_read(&mapped), &mapped, &Snapshot::default());
    assert_eq!(
        ops(&plan),
        vec![(Op::Create, "a"), (Op::Skip, "c"), (Op::Skip, "f")]
    );
    assert_eq!(
        plan.actions[1].error.as_deref(),
        Some("coreTeam is empty; it is mandatory on create")
    );
    assert_eq!(plan.actions[2].error.as_deref(), Some("role: bad"));
    assert_eq!(plan.in_scope, 3);
    assert_eq!(plan.summary().create, 1);
    assert_eq!(plan.summary().skipped, 2);
}

#[test]
fn a_sync_right_after_a_sync_plans_nothing() {
    let mapped = vec![
        provisioned("a", attrs("a@x.com", "Sales")),
        provisioned("b", attrs("b@x.com", "Marketing")),
    ];
    let read = full_read(&mapped);
    let mut state = Snapshot::default();
    let first = plan_of(&read, &mapped, &state);
    apply(&first, &mut state);
    let second = plan_of(&read, &mapped, &state);
    assert!(second.actions.is_empty(), "{:?}", second.actions);
    assert_eq!(second.unchanged, 2);
}

#[test]
fn updates_list_field_level_changes_and_ignore_order_and_user_name_case() {
    let before = attrs("a@x.com", "Sales");
    let mut state = Snapshot::default();
    state
        .users
        .insert(IdpId("a".into()), record(&before, AccountStatus::Active));

    let mut same = attrs("A@X.com", "Sales");
    same.insert("learningPaths".into(), json!(["B", "A"]));
    let mapped = vec![provisioned("a", same)];
    assert!(
        plan_of(&full_read(&mapped), &mapped, &state)
            .actions
            .is_empty()
    );

    let mut changed = attrs("a@x.com", "Marketing");
    changed.remove("learningPaths");
    let mapped = vec![provisioned("a", changed)];
    let plan = plan_of(&full_read(&mapped), &mapped, &state);
    assert_eq!(ops(&plan), vec![(Op::Update, "a")]);
    assert_eq!(
        plan.actions[0].changes,
        vec![
            Change {
                attribute: "coreTeam".into(),
                from: json!("Sales"),
                to: json!("Marketing"),
            },
            Change {
                attribute: "learningPaths".into(),
                from: json!(["A", "B"]),
                to: Value::Null,
            },
        ]
    );
    assert_eq!(plan.actions[0].scim_id.as_deref(), Some("scim-a@x.com"));
}

#[test]
fn leavers_are_deactivated_with_a_reason() {
    let mut state = Snapshot::default();
    for id in ["a", "b", "c"] {
        state.users.insert(
            IdpId(id.into()),
            record(&attrs(&format!("{id}@x.com"), "T"), AccountStatus::Active),
        );
    }
    let mapped = vec![
        decided("a", Decision::Inactive),
        decided("b", Decision::OutOfScope),
    ];
    let plan = build(&Inputs {
        read: &full_read(&mapped),
        mapped: &mapped,
        state: &state,
        safety: &SafetyConfig {
            max_deactivations: 3,
            ..safety()
        },
        allow_deactivations: false,
        target: None,
        managed: &managed(),
        reconcile: Reconcile::default(),
    });
    let reasons: Vec<_> = plan
        .actions
        .iter()
        .map(|a| (a.op, a.idp_id.0.as_str(), a.reason.as_deref()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (Op::Deactivate, "a", Some("deactivated in source")),
            (Op::Deactivate, "b", Some("left scope")),
            (Op::Deactivate, "c", Some("no longer in source")),
        ]
    );
}

#[test]
fn an_incremental_read_only_deactivates_what_it_reports() {
    let mut state = Snapshot::default();
    for id in ["a", "b"] {
        state.users.insert(
            IdpId(id.into()),
            record(&attrs(&format!("{id}@x.com"), "T"), AccountStatus::Active),
        );
    }
    let mut read = full_read(&[]);
    read.full = false;
    read.removed.push(IdpId("b".into()));
    let plan = plan_of(&read, &[], &state);
    assert_eq!(ops(&plan), vec![(Op::Deactivate, "b")]);
    assert_eq!(plan.actions[0].reason.as_deref(), Some("removed in source"));
}

#[test]
fn a_rehire_is_reactivated_on_the_same_account() {
    let attributes = attrs("a@x.com", "Sales");
    let mut state = Snapshot::default();
    state.users.insert(
        IdpId("a".into()),
        record(&attributes, AccountStatus::Deactivated),
    );
    let mapped = vec![provisioned("a", attributes)];
    let plan = plan_of(&full_read(&mapped), &mapped, &state);
    assert_eq!(ops(&plan), vec![(Op::Reactivate, "a")]);
    assert_eq!(plan.actions[0].scim_id.as_deref(), Some("scim-a@x.com"));
}

fn state_with_active(n: usize) -> Snapshot {
    let mut state = Snapshot::default();
    for i in 0..n {
        state.users.insert(
            IdpId(format!("u{i:03}")),
            record(&attrs(&format!("u{i}@x.com"), "T"), AccountStatus::Active),
        );
    }
    state
}

#[test]
fn too_many_deactivations_are_all_held() {
    let state = state_with_active(10);
    let mapped: Vec<MappedUser> = (3..10)
        .map(|i| provisioned(&format!("u{i:03}"), attrs(&format!("u{i}@x.com"), "T")))
        .collect();
    let plan = plan_of(&full_read(&mapped), &mapped, &state);
    assert_eq!(plan.summary().held, 3);
    assert_eq!(plan.summary().deactivate, 0);
    assert!(
        plan.held_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("3 deactivations exceed the limit of 2")),
        "{:?}",
        plan.held_reason
    );
    let released = build(&Inputs {
        read: &full_read(&mapped),
        mapped: &mapped,
        state: &state,
        safety: &safety(),
        allow_deactivations: true,
        target: None,
        managed: &managed(),
        reconcile: Reconcile::default(),
    });
    assert_eq!(released.summary().deactivate, 3);
    assert_eq!(released.summary().held, 0);
}

#[test]
fn the_percentage_allows_more_when_it_is_larger() {
    let state = state_with_active(100);
    let mapped: Vec<MappedUser> = (5..100)
        .map(|i| provisioned(&format!("u{i:03}"), attrs(&format!("u{i}@x.com"), "T")))
        .collect();
    let plan = build(&Inputs {
        read: &full_read(&mapped),
        mapped: &mapped,
        state: &state,
        safety: &SafetyConfig {
            max_deactivation_percent: 5.0,
            ..safety()
        },
        allow_deactivations: false,
        target: None,
        managed: &managed(),
        reconcile: Reconcile::default(),
    });
    assert_eq!(plan.summary().deactivate, 5);
    assert_eq!(plan.summary().held, 0);
}

#[test]
fn an_empty_source_holds_every_deactivation() {
    let state = state_with_active(1);
    let plan = plan_of(&full_read(&[]), &[], &state);
    assert_eq!(ops(&plan), vec![(Op::Held, "u000")]);
    assert_eq!(
        plan.held_reason.as_deref(),
        Some("the source returned no users")
    );
}

#[test]
fn rejected_records_are_skipped_and_protect_their_users() {
    let state = state_with_active(2);
    let mapped = vec![provisioned("u001", attrs("u1@x.com", "T"))];
    let mut read = full_read(&mapped);
    read.rejected.push(RejectedRecord {
        idp_id: Some(IdpId("u000".into())),
        location: "dir.json record 1".into(),
        error: "field `groups` must be a list of strings, found a number".into(),
    });
    let plan = plan_of(&read, &mapped, &state);
    assert_eq!(ops(&plan), vec![(Op::Skip, "u000")]);
    assert_eq!(
        plan.actions[0].error.as_deref(),
        Some("dir.json record 1: field `groups` must be a list of strings, found a number")
    );

    // A record without an id could be anyone: absence proves nothing, so deactivations hold.
    read.rejected[0].idp_id = None;
    let plan = plan_of(&read, &mapped, &state);
    assert_eq!(plan.summary().held, 1);
    assert_eq!(plan.summary().skipped, 1);
}

#[test]
fn managers_are_created_before_their_reports() {
    let mut mapped = vec![
        provisioned("a", attrs("a@x.com", "T")),
        provisioned("b", attrs("b@x.com", "T")),
        provisioned("c", attrs("c@x.com", "T")),
        provisioned("d", attrs("d@x.com", "T")),
    ];
    // c reports to b, b reports to d, a reports to someone already provisioned (z).
    mapped[2].manager = Some(IdpId("b".into()));
    mapped[1].manager = Some(IdpId("d".into()));
    mapped[0].manager = Some(IdpId("z".into()));
    let plan = plan_of(&full_read(&mapped), &mapped, &Snapshot::default());
    let waves: Vec<_> = plan
        .actions
        .iter()
        .map(|a| (a.idp_id.0.as_str(), a.wave))
        .collect();
    assert_eq!(waves, vec![("a", 0), ("d", 0), ("b", 1), ("c", 2)]);
}

#[test]
fn a_manager_cycle_does_not_hang_and_still_plans_everyone() {
    let mut mapped = vec![
        provisioned("a", attrs("a@x.com", "T")),
        provisioned("b", attrs("b@x.com", "T")),
    ];
    mapped[0].manager = Some(IdpId("b".into()));
    mapped[1].manager = Some(IdpId("a".into()));
    let plan = plan_of(&full_read(&mapped), &mapped, &Snapshot::default());
    assert_eq!(plan.summary().create, 2);
}

#[test]
fn two_people_mapped_to_one_user_name_are_never_merged() {
    let mapped = vec![
        provisioned("a", attrs("same@x.com", "T")),
        provisioned("b", attrs("SAME@x.com", "T")),
    ];
    let plan = plan_of(&full_read(&mapped), &mapped, &Snapshot::default());
    assert_eq!(ops(&plan), vec![(Op::Skip, "a"), (Op::Skip, "b")]);

    // The one who already holds the name keeps it.
    let mut state = Snapshot::default();
    state.users.insert(
        IdpId("a".into()),
        record(&attrs("same@x.com", "T"), AccountStatus::Active),
    );
    let plan = plan_of(&full_read(&mapped), &mapped, &state);
    assert_eq!(ops(&plan), vec![(Op::Skip, "b")]);
    assert!(
        plan.actions[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("also claimed by IdP user a"))
    );
}

#[test]
fn quarantined_users_are_skipped_on_incremental_runs_and_retried_on_full_runs() {
    let mapped = vec![provisioned("a", attrs("a@x.com", "T"))];
    let mut state = Snapshot::default();
    state.failures.insert(
        IdpId("a".into()),
        FailureRecord {
            consecutive: 3,
            last_error: "SocialTalent refused the request (400): bad".into(),
            label: "a@x.com".into(),
            last_failed_at: "2026-01-01T00:00:00Z".into(),
        },
    );
    let mut read = full_read(&mapped);
    read.full = false;
    let plan = plan_of(&read, &mapped, &state);
    assert_eq!(ops(&plan), vec![(Op::Skip, "a")]);
    assert!(
        plan.actions[0]
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("quarantined after 3"))
    );
    read.full = true;
    assert_eq!(
        ops(&plan_of(&read, &mapped, &state)),
        vec![(Op::Create, "a")]
    );
}

fn arb_attributes() -> impl Strategy<Value = Attributes> {
    (
        "[a-c]{1,2}",
        prop::sample::select(vec!["Sales", "Marketing", ""]),
        prop::collection::vec(prop::sample::select(vec!["A", "B", "C"]), 0..3),
        prop::option::of(prop::sample::select(vec!["Recruiter", "Manager"])),
    )
        .prop_map(|(name, team, paths, title)| {
            let mut attributes = Attributes::new();
            attributes.insert("userName".into(), json!(format!("{name}@x.com")));
            attributes.insert("role".into(), json!("user"));
            if !team.is_empty() {
                attributes.insert("coreTeam".into(), json!(team));
            }
            let mut paths: Vec<&str> = paths;
            paths.sort_unstable();
            paths.dedup();
            if !paths.is_empty() {
                attributes.insert("learningPaths".into(), json!(paths));
            }
            if let Some(title) = title {
                attributes.insert("title".into(), json!(title));
            }
            attributes
        })
}

fn arb_decision() -> impl Strategy<Value = Decision> {
    prop_oneof![
        6 => arb_attributes().prop_map(|attributes| Decision::Provision(Arc::new(attributes))),
        1 => Just(Decision::Inactive),
        1 => Just(Decision::OutOfScope),
    ]
}

fn arb_mapped() -> impl Strategy<Value = Vec<MappedUser>> {
    prop::collection::btree_map("u[0-9]{1,2}", arb_decision(), 0..25).prop_map(|users| {
        users
            .into_iter()
            .map(|(id, decision)| decided(&id, decision))
            .collect()
    })
}

proptest! {
    #[test]
    fn replanning_after_applying_a_plan_plans_nothing(first in arb_mapped(), second in arb_mapped()) {
        let relaxed = SafetyConfig { max_deactivations: 1000, ..safety() };
        let mut state = Snapshot::default();
        for mapped in [&first, &second] {
            let read = full_read(mapped);
            let plan = build(&Inputs { read: &read, mapped, state: &state, safety: &relaxed, allow_deactivations: false, target: None, managed: &managed(), reconcile: Reconcile::default() });
            apply(&plan, &mut state);
            let again = build(&Inputs { read: &read, mapped, state: &state, safety: &relaxed, allow_deactivations: false, target: None, managed: &managed(), reconcile: Reconcile::default() });
            prop_assert!(again.is_noop(), "second plan: {:?}", again.actions);
        }
    }

    #[test]
    fn an_empty_or_incremental_read_never_deactivates_by_absence(mapped in arb_mapped()) {
        let relaxed = SafetyConfig { max_deactivations: 1000, ..safety() };
        let mut state = Snapshot::default();
        let read = full_read(&mapped);
        let plan = build(&Inputs { read: &read, mapped: &mapped, state: &state, safety: &relaxed, allow_deactivations: false, target: None, managed: &managed(), reconcile: Reconcile::default() });
        apply(&plan, &mut state);
        let empty = full_read(&[]);
        let plan = build(&Inputs { read: &empty, mapped: &[], state: &state, safety: &relaxed, allow_deactivations: false, target: None, managed: &managed(), reconcile: Reconcile::default() });
        prop_assert_eq!(plan.summary().deactivate, 0);
        let mut incremental = full_read(&[]);
        incremental.full = false;
        let plan = build(&Inputs { read: &incremental, mapped: &[], state: &state, safety: &relaxed, allow_deactivations: false, target: None, managed: &managed(), reconcile: Reconcile::default() });
        prop_assert!(plan.actions.is_empty());
    }

    #[test]
    fn the_plan_does_not_depend_on_input_order(mapped in arb_mapped(), seed in any::<u64>()) {
        let read = full_read(&mapped);
        let state = Snapshot::default();
        let plan = plan_of(&read, &mapped, &state);
        let mut shuffled = mapped.clone();
        let len = shuffled.len();
        if len > 1 {
            for i in 0..len {
                let j = (seed.wrapping_mul(i as u64 + 1) % len as u64) as usize;
                shuffled.swap(i, j);
            }
        }
        prop_assert_eq!(plan, plan_of(&read, &shuffled, &state));
    }
}

const MANAGED: [&str; 5] = [
    "userName",
    "externalId",
    "coreTeam",
    "role",
    "learningPaths",
];

fn managed() -> Vec<String> {
    MANAGED.iter().map(|name| (*name).to_owned()).collect()
}

fn account(id: &str, user_name: &str, external_id: Option<&str>, attributes: Value) -> TargetUser {
    let mut attributes: Attributes = serde_json::from_value(attributes).expect("attributes");
    attributes.insert("userName".into(), json!(user_name));
    if let Some(external_id) = external_id {
        attributes.insert("externalId".into(), json!(external_id));
    }
    TargetUser {
        id: id.into(),
        user_name: user_name.into(),
        external_id: external_id.map(str::to_owned),
        active: true,
        attributes,
        compacted: None,
    }
}

fn with_target(
    mapped: &[MappedUser],
    state: &Snapshot,
    accounts: &[TargetUser],
    reconcile: Reconcile,
) -> Plan {
    let managed = managed();
    build(&Inputs {
        read: &full_read(mapped),
        mapped,
        state,
        safety: &SafetyConfig {
            max_deactivations: 100,
            ..safety()
        },
        allow_deactivations: false,
        target: Some(accounts),
        managed: &managed,
        reconcile,
    })
}

fn desired(user_name: &str, id: &str) -> Attributes {
    let mut attributes = attrs(user_name, "Sales");
    attributes.insert("externalId".into(), json!(id));
    attributes
}

#[test]
fn existing_accounts_are_adopted_by_external_id_then_user_name_then_email() {
    let mut by_email = desired("c@x.com", "c");
    by_email.insert("emails".into(), json!("C.Mail@x.com"));
    let mapped = vec![
        provisioned("a", desired("a@x.com", "a")),
        provisioned("b", desired("b@x.com", "b")),
        provisioned("c", by_email),
        provisioned("d", desired("d@x.com", "d")),
    ];
    let accounts = vec![
        account(
            "s-a",
            "old-login-a@x.com",
            Some("a"),
            json!({"coreTeam": "Sales", "role": "user", "learningPaths": ["A", "B"]}),
        ),
        account(
            "s-b",
            "B@X.com",
            None,
            json!({"coreTeam": "Sales", "role": "user", "learningPaths": ["A", "B"]}),
        ),
        account(
            "s-c",
            "someone@x.com",
            Some("legacy-42"),
            json!({"emails": "c.mail@x.com", "coreTeam": "Sales"}),
        ),
    ];
    let plan = with_target(
        &mapped,
        &Snapshot::default(),
        &accounts,
        Reconcile::default(),
    );
    assert_eq!(
        ops(&plan),
        vec![
            (Op::Create, "d"),
            (Op::Adopt, "a"),
            (Op::Adopt, "b"),
            (Op::Adopt, "c")
        ]
    );
    let adopted: Vec<_> = plan.actions.iter().filter(|a| a.op == Op::Adopt).collect();
    assert_eq!(adopted[0].scim_id.as_deref(), Some("s-a"));
    assert_eq!(
        adopted[0]
            .changes
            .iter()
            .map(|c| c.attribute.as_str())
            .collect::<Vec<_>>(),
        vec!["userName"]
    );
    assert!(
        adopted[1]
            .changes
            .iter()
            .all(|c| c.attribute == "externalId"),
        "{:?}",
        adopted[1].changes
    );
    assert_eq!(adopted[2].scim_id.as_deref(), Some("s-c"));
    assert_eq!(plan.summary().adopted, 3);
    assert!(plan.orphans.is_empty());
}

#[test]
fn two_candidates_on_one_key_are_reported_and_skipped() {
    let mapped = vec![provisioned("a", desired("a@x.com", "a"))];
    let accounts = vec![
        account("s-1", "A@x.com", None, json!({})),
        account("s-2", "a@X.COM", None, json!({})),
    ];
    let plan = with_target(
        &mapped,
        &Snapshot::default(),
        &accounts,
        Reconcile::default(),
    );
    assert_eq!(ops(&plan), vec![(Op::Skip, "a")]);
    let error = plan.actions[0].error.as_deref().expect("error");
    assert!(
        error.starts_with("ambiguous: SocialTalent accounts s-1"),
        "{error}"
    );
    assert!(error.contains("by userName"), "{error}");
}

#[test]
fn an_account_another_idp_user_owns_is_never_adopted() {
    let mut state = Snapshot::default();
    state.users.insert(
        IdpId("b".into()),
        record(&desired("b@x.com", "b"), AccountStatus::Active),
    );
    let mapped = vec![
        provisioned("a", desired("b@x.com", "a")),
        provisioned("b", desired("b@x.com", "b")),
    ];
    let accounts = vec![account(
        "scim-b@x.com",
        "b@x.com",
        Some("b"),
        json!({"coreTeam": "Sales", "role": "user", "learningPaths": ["A", "B"]}),
    )];
    let plan = with_target(&mapped, &state, &accounts, Reconcile::default());
    // The userName conflict is caught first; no adoption of b's account either way.
    assert!(
        plan.actions.iter().all(|a| a.op != Op::Adopt),
        "{:?}",
        ops(&plan)
    );
}

#[test]
fn drift_is_repaired_or_reported_and_unmanaged_values_are_kept() {
    let ours = desired("a@x.com", "a");
    let mut state = Snapshot::default();
    state
        .users
        .insert(IdpId("a".into()), record(&ours, AccountStatus::Active));
    let theirs = account(
        "scim-a@x.com",
        "a@x.com",
        Some("a"),
        json!({"coreTeam": "Marketing", "role": "user", "learningPaths": ["A", "B"], "udf_location": "Paris"}),
    );
    let mapped = vec![provisioned("a", ours.clone())];

    let repaired = with_target(
        &mapped,
        &state,
        std::slice::from_ref(&theirs),
        Reconcile::default(),
    );
    assert_eq!(ops(&repaired), vec![(Op::Update, "a")]);
    let update = &repaired.actions[0];
    assert_eq!(update.reason.as_deref(), Some("drift"));
    assert_eq!(
        update.changes,
        vec![Change {
            attribute: "coreTeam".into(),
            from: json!("Marketing"),
            to: json!("Sales")
        }]
    );
    assert!(
        update
            .changes
            .iter()
            .all(|change| change.attribute != "udf_location"),
        "an unmanaged value is never part of a change"
    );
    assert_eq!(repaired.summary().drift_repaired, 1);
    assert_eq!(repaired.drift.len(), 1);
    assert_eq!(
        (
            repaired.drift[0].ours.clone(),
            repaired.drift[0].theirs.clone()
        ),
        (json!("Sales"), json!("Marketing"))
    );

    let reported = with_target(
        &mapped,
        &state,
        std::slice::from_ref(&theirs),
        Reconcile {
            drift: DriftPolicy::Report,
            ..Reconcile::default()
        },
    );
    assert!(reported.actions.is_empty(), "{:?}", reported.actions);
    assert!(!reported.drift[0].repaired);

    // In report mode our own change still goes out, and the drifted value is left alone.
    let mut changed = ours;
    changed.insert("role".into(), json!("advisor"));
    let mapped = vec![provisioned("a", changed)];
    let reported = with_target(
        &mapped,
        &state,
        std::slice::from_ref(&theirs),
        Reconcile {
            drift: DriftPolicy::Report,
            ..Reconcile::default()
        },
    );
    assert_eq!(
        reported.actions[0]
            .changes
            .iter()
            .map(|c| c.attribute.as_str())
            .collect::<Vec<_>>(),
        vec!["role"]
    );
}

#[test]
fn an_account_deactivated_in_socialtalent_is_drift() {
    let ours = desired("a@x.com", "a");
    let mut state = Snapshot::default();
    state
        .users
        .insert(IdpId("a".into()), record(&ours, AccountStatus::Active));
    let mut theirs = account(
        "scim-a@x.com",
        "a@x.com",
        Some("a"),
        json!({"coreTeam": "Sales", "role": "user", "learningPaths": ["A", "B"]}),
    );
    theirs.active = false;
    let plan = with_target(
        &[provisioned("a", ours)],
        &state,
        &[theirs],
        Reconcile::default(),
    );
    assert_eq!(ops(&plan), vec![(Op::Reactivate, "a")]);
    assert_eq!(plan.drift[0].attribute, "active");
}

#[test]
fn orphans_are_reported_or_deactivated_within_the_limits() {
    let mapped = vec![provisioned("a", desired("a@x.com", "a"))];
    let mut accounts: Vec<TargetUser> = (0..3)
        .map(|i| {
            account(
                &format!("s-{i}"),
                &format!("gone{i}@x.com"),
                None,
                json!({}),
            )
        })
        .collect();
    accounts[2].active = false;
    let plan = with_target(
        &mapped,
        &Snapshot::default(),
        &accounts,
        Reconcile::default(),
    );
    assert_eq!(
        plan.orphans
            .iter()
            .map(|o| o.scim_id.as_str())
            .collect::<Vec<_>>(),
        vec!["s-0", "s-1"]
    );
    assert_eq!(plan.summary().orphans, 2);
    assert_eq!(plan.summary().deactivate, 0);

    let deactivate = Reconcile {
        orphans: OrphanPolicy::Deactivate,
        ..Reconcile::default()
    };
    let plan = with_target(&mapped, &Snapshot::default(), &accounts, deactivate);
    assert_eq!(plan.summary().deactivate, 2);
    let managed = managed();
    let strict = build(&Inputs {
        read: &full_read(&mapped),
        mapped: &mapped,
        state: &Snapshot::default(),
        safety: &SafetyConfig {
            max_deactivations: 1,
            ..safety()
        },
        allow_deactivations: false,
        target: Some(&accounts),
        managed: &managed,
        reconcile: deactivate,
    });
    assert_eq!(
        strict.summary().held,
        2,
        "orphan deactivations count toward the limits"
    );
}

#[test]
fn an_account_deleted_in_socialtalent_is_created_again() {
    let ours = desired("a@x.com", "a");
    let mut state = Snapshot::default();
    state
        .users
        .insert(IdpId("a".into()), record(&ours, AccountStatus::Active));
    let plan = with_target(&[provisioned("a", ours)], &state, &[], Reconcile::default());
    assert_eq!(ops(&plan), vec![(Op::Create, "a")]);
    assert_eq!(
        plan.actions[0].reason.as_deref(),
        Some("the account had disappeared from SocialTalent")
    );
}

#[test]
fn a_confirmed_but_unrecorded_write_is_not_drift() {
    // The state remembers Sales; a crash came after SocialTalent took Marketing, which is what
    // the source wants now: nothing to repair, nothing to report.
    let pushed = desired("a@x.com", "a");
    let mut state = Snapshot::default();
    state
        .users
        .insert(IdpId("a".into()), record(&pushed, AccountStatus::Active));
    let mut wanted = pushed;
    wanted.insert("coreTeam".into(), json!("Marketing"));
    let theirs = account(
        "scim-a@x.com",
        "a@x.com",
        Some("a"),
        json!({"coreTeam": "Marketing", "role": "user", "learningPaths": ["A", "B"]}),
    );
    let plan = with_target(
        &[provisioned("a", wanted)],
        &state,
        &[theirs],
        Reconcile::default(),
    );
    assert!(plan.drift.is_empty(), "{:?}", plan.drift);
    // Nothing is sent, but the state learns what SocialTalent holds.
    assert_eq!(ops(&plan), vec![(Op::Adopt, "a")]);
    assert!(plan.actions[0].changes.is_empty());
}

/// A user the mapping recognised by its digest (not mapped again).
fn unchanged(id: &str, digest: Digest) -> MappedUser {
    MappedUser {
        digest,
        ..decided(id, Decision::Unchanged)
    }
}

/// A state record as the snapshot loads it: carrying `digest`, attributes left on disk.
fn unloaded(attributes: &Attributes, digest: Digest) -> KnownUser {
    KnownUser {
        digest: Some(digest),
        pushed: None,
        ..record(attributes, AccountStatus::Active)
    }
}

#[test]
fn an_unchanged_user_needs_neither_its_attributes_nor_an_action() {
    let ours = desired("a@x.com", "a");
    let mut state = Snapshot::default();
    state
        .users
        .insert(IdpId("a".into()), unloaded(&ours, Digest(1)));
    let mapped = vec![unchanged("a", Digest(1))];
    assert!(needs_pushed(&mapped, &state, None, &managed()).is_empty());
    let plan = plan_of(&full_read(&mapped), &mapped, &state);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!((plan.unchanged, plan.in_scope), (1, 1));
    assert!(plan.refresh.is_empty());

    // Read back, an account that still holds what we pushed is unchanged too.
    let same = account(
        "scim-a@x.com",
        "A@X.com",
        Some("a"),
        json!({"coreTeam": "Sales", "role": "user", "learningPaths": ["B", "A"]}),
    );
    let accounts = std::slice::from_ref(&same);
    assert!(needs_pushed(&mapped, &state, Some(accounts), &managed()).is_empty());
    let plan = with_target(&mapped, &state, accounts, Reconcile::default());
    assert!(plan.actions.is_empty() && plan.drift.is_empty(), "{plan:?}");
    assert!(plan.orphans.is_empty(), "the account is the user's");
}

#[test]
fn drift_on_an_unchanged_user_is_repaired_from_the_stored_attributes() {
    let ours = desired("a@x.com", "a");
    let mut state = Snapshot::default();
    state
        .users
        .insert(IdpId("a".into()), unloaded(&ours, Digest(1)));
    let mapped = vec![unchanged("a", Digest(1))];
    let drifted = account(
        "scim-a@x.com",
        "a@x.com",
        Some("a"),
        json!({"coreTeam": "Marketing", "role": "user", "learningPaths": ["A", "B"]}),
    );
    let accounts = std::slice::from_ref(&drifted);
    assert_eq!(
        needs_pushed(&mapped, &state, Some(accounts), &managed()),
        vec![IdpId("a".into())],
        "the run loads what the plan compares"
    );
    // Without them the user is skipped, never planned from nothing.
    let plan = with_target(&mapped, &state, accounts, Reconcile::default());
    assert_eq!(ops(&plan), vec![(Op::Skip, "a")]);
    assert!(
        plan.actions[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("not loaded")
    );

    state
        .users
        .get_mut(&IdpId("a".into()))
        .expect("known")
        .pushed = Some(Arc::new(ours.clone()));
    let plan = with_target(&mapped, &state, accounts, Reconcile::default());
    assert_eq!(ops(&plan), vec![(Op::Update, "a")]);
    let update = &plan.actions[0];
    assert_eq!(update.reason.as_deref(), Some("drift"));
    assert_eq!(update.attributes.as_deref(), Some(&ours));
    assert_eq!(
        update.digest,
        Some(Digest(1)),
        "recorded with the same digest"
    );
}

#[test]
fn a_stale_digest_is_not_taken_for_unchanged() {
    // The mapping only says Unchanged when the record carries the digest; should it ever
    // disagree (a deactivated record), the user is compared, not skipped over.
    let ours = desired("a@x.com", "a");
    let mut state = Snapshot::default();
    let mut known = unloaded(&ours, Digest(1));
    known.status = AccountStatus::Deactivated;
    state.users.insert(IdpId("a".into()), known);
    let mapped = vec![unchanged("a", Digest(1))];
    assert_eq!(
        needs_pushed(&mapped, &state, None, &managed()),
        vec![IdpId("a".into())]
    );
    state
        .users
        .get_mut(&IdpId("a".into()))
        .expect("known")
        .pushed = Some(Arc::new(ours));
    let plan = plan_of(&full_read(&mapped), &mapped, &state);
    assert_eq!(ops(&plan), vec![(Op::Reactivate, "a")]);
}

#[test]
fn users_found_equal_by_comparison_get_their_digest_recorded() {
    let ours = desired("a@x.com", "a");
    let mut state = Snapshot::default();
    state
        .users
        .insert(IdpId("a".into()), record(&ours, AccountStatus::Active));
    let mapped = vec![MappedUser {
        digest: Digest(5),
        ..provisioned("a", ours)
    }];
    let plan = plan_of(&full_read(&mapped), &mapped, &state);
    assert!(plan.actions.is_empty());
    assert_eq!(plan.refresh, vec![(IdpId("a".into()), Digest(5))]);
    // Once recorded, nothing more to refresh.
    state
        .users
        .get_mut(&IdpId("a".into()))
        .expect("known")
        .digest = Some(Digest(5));
    let plan = plan_of(&full_read(&mapped), &mapped, &state);
    assert!(plan.refresh.is_empty());
}

#[test]
fn the_read_back_keeps_whole_only_the_accounts_the_plan_reads() {
    let (a, b) = (desired("a@x.com", "a"), desired("b@x.com", "b"));
    let mut state = Snapshot::default();
    state
        .users
        .insert(IdpId("a".into()), unloaded(&a, Digest(1)));
    state
        .users
        .insert(IdpId("b".into()), unloaded(&b, Digest(2)));
    // a is unchanged; b was mapped again (its source changed).
    let mapped = vec![unchanged("a", Digest(1)), provisioned("b", b.clone())];
    let names = managed();
    let compactor = Compactor::new(&mapped, &state, &names);
    let holds = |user_name: &str, id: &str, team: &str| {
        account(
            &format!("scim-{user_name}"),
            user_name,
            Some(id),
            json!({"coreTeam": team, "role": "user", "learningPaths": ["A", "B"], "udf_x": "kept"}),
        )
    };
    let same_a = compactor.compact(holds("a@x.com", "a", "Sales"));
    assert!(same_a.compacted.is_some() && same_a.attributes.is_empty());
    let drifted_a = compactor.compact(holds("a@x.com", "a", "Marketing"));
    assert!(drifted_a.compacted.is_none(), "drift needs the values");
    let b_account = compactor.compact(holds("b@x.com", "b", "Sales"));
    assert!(
        b_account.compacted.is_none(),
        "a mapped user's account may be updated"
    );
    let orphan = compactor.compact(holds("c@x.com", "c", "Sales"));
    assert!(orphan.compacted.is_none());

    // The run loads what the plan compares (b's stored attributes), as `sync` does.
    for idp_id in needs_pushed(&mapped, &state, None, &managed()) {
        let known = state.users.get_mut(&idp_id).expect("known");
        known.pushed = Some(if idp_id.0 == "a" {
            Arc::new(a.clone())
        } else {
            Arc::new(b.clone())
        });
    }

    let plan = with_target(
        &mapped,
        &state,
        &[same_a, b_account, orphan],
        Reconcile::default(),
    );
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!(plan.unchanged, 2);
    assert_eq!(plan.orphans.len(), 1);
}
