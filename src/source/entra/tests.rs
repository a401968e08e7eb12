use serde_json::json;

use super::*;

fn items(value: Value) -> Vec<Value> {
    value.as_array().expect("array").clone()
}

#[test]
fn user_deltas_merge_replays_and_read_manager_and_removals() {
    let mut deltas = BTreeMap::new();
    collect_user_deltas(
        items(json!([
            {"id": "u1", "displayName": "Ana", "accountEnabled": true,
             "manager@delta": [{"@odata.type": "#microsoft.graph.user", "id": "m1"}]},
            {"id": "u2", "@removed": {"reason": "changed"}},
            {"id": "u1", "jobTitle": "Lead"},
            {"id": "u3", "manager@delta": [{"id": "m1", "@removed": {"reason": "deleted"}}]},
        ])),
        &mut deltas,
    );
    let u1 = &deltas["u1"];
    assert_eq!(u1.props["displayName"], "Ana");
    assert_eq!(
        u1.props["jobTitle"], "Lead",
        "a replay adds to what came before"
    );
    assert_eq!(u1.manager, Some(Some("m1".into())));
    assert!(deltas["u2"].removed);
    assert_eq!(
        deltas["u3"].manager,
        Some(None),
        "a removed manager link clears the manager"
    );
    // A user removed and then seen again in the same round was restored.
    collect_user_deltas(
        items(json!([{"id": "u2", "accountEnabled": true}])),
        &mut deltas,
    );
    assert!(!deltas["u2"].removed);
}

#[test]
fn group_deltas_merge_split_pages_and_member_removals() {
    let mut deltas = BTreeMap::new();
    collect_group_deltas(
        items(json!([
            {"id": "g1", "displayName": "LP Onboarding",
             "members@delta": [{"@odata.type": "#microsoft.graph.user", "id": "u1"}]},
            {"id": "g1", "members@delta": [
                {"@odata.type": "#microsoft.graph.user", "id": "u2"},
                {"@odata.type": "#microsoft.graph.group", "id": "g9"},
                {"@odata.type": "#microsoft.graph.user", "id": "u3", "@removed": {"reason": "deleted"}}
            ]},
            {"id": "g2", "@removed": {"reason": "changed"}},
        ])),
        &mut deltas,
    );
    let g1 = &deltas["g1"];
    assert_eq!(g1.name.as_deref(), Some("LP Onboarding"));
    assert_eq!(
        g1.added.iter().map(String::as_str).collect::<Vec<_>>(),
        vec!["u1", "u2"]
    );
    assert_eq!(
        g1.removed_members
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        vec!["u3"]
    );
    assert_eq!(
        g1.added_groups
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        vec!["g9"],
        "a group member is a child group, not a user"
    );
    assert!(deltas["g2"].removed);
}

#[test]
fn child_groups_are_added_and_removed_and_other_members_ignored() {
    let mut deltas = BTreeMap::new();
    collect_group_deltas(
        items(json!([
            {"id": "g1", "members@delta": [
                {"@odata.type": "#microsoft.graph.group", "id": "g2"},
                {"@odata.type": "#microsoft.graph.group", "id": "g3"},
                {"@odata.type": "#microsoft.graph.device", "id": "d1"},
                {"@odata.type": "#microsoft.graph.servicePrincipal", "id": "s1"},
            ]},
            {"id": "g1", "members@delta": [
                {"@odata.type": "#microsoft.graph.group", "id": "g3", "@removed": {"reason": "deleted"}},
            ]},
        ])),
        &mut deltas,
    );
    let g1 = &deltas["g1"];
    assert_eq!(g1.added_groups, BTreeSet::from(["g2".to_owned()]));
    assert_eq!(g1.removed_groups, BTreeSet::from(["g3".to_owned()]));
    assert!(
        g1.added.is_empty(),
        "devices and service principals are not users"
    );
}

#[test]
fn a_graph_user_becomes_the_common_user_shape() {
    let props = properties(&json!({
        "@odata.type": "#microsoft.graph.user",
        "id": "8ffff70c", "userPrincipalName": "zoe@contoso.example", "mail": null,
        "givenName": "Zoë", "surname": "Ødegård", "displayName": "Zoë Ødegård",
        "accountEnabled": false, "department": "Sales", "jobTitle": "Recruiter", "employeeId": "1042",
        "extension_abc123_costCenter": "CC-1"
    }));
    let user = convert(props.clone()).expect("valid");
    assert_eq!(user.login.as_deref(), Some("zoe@contoso.example"));
    assert_eq!(
        user.email.as_deref(),
        Some("zoe@contoso.example"),
        "mail, else the UPN"
    );
    assert!(!user.active);
    assert_eq!(user.status.as_deref(), Some("disabled"));
    assert_eq!(user.title.as_deref(), Some("Recruiter"));
    assert_eq!(user.attrs.to_map()["extension_abc123_costCenter"], "CC-1");
    assert!(!user.attrs.to_map().contains_key("@odata.type"));
}

#[test]
fn a_user_without_account_enabled_is_rejected_not_guessed() {
    let props = properties(&json!({"id": "u1", "userPrincipalName": "a@x"}));
    let rejected = convert(props.clone()).expect_err("unknown state");
    assert_eq!(rejected.idp_id, Some(IdpId("u1".into())));
    assert!(
        rejected.error.contains("accountEnabled"),
        "{}",
        rejected.error
    );
}
