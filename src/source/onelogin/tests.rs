use super::*;

fn raw(json: Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(&json).expect("serialisable")
}

fn rules() -> Rules {
    Rules::default()
}

#[test]
fn active_needs_approval_and_a_working_status() {
    let strict = rules();
    for status in [1, 3, 4, 5, 7, 8] {
        assert!(is_active(1, status, &strict), "status {status}");
        for state in [0, 2, 3] {
            assert!(
                !is_active(state, status, &strict),
                "state {state} status {status}"
            );
        }
    }
    assert!(!is_active(1, 2, &strict));
    assert!(!is_active(1, 0, &strict));
    assert!(!is_active(1, 6, &strict));
    let lenient = Rules {
        suspended_is_active: true,
        unactivated_is_active: true,
        employee_id_attribute: None,
    };
    assert!(is_active(1, 2, &lenient));
    assert!(is_active(1, 0, &lenient));
    assert!(!is_active(0, 2, &lenient), "unapproved stays inactive");
}

#[test]
fn status_codes_have_lowercase_names() {
    assert_eq!(status_name(0), "unactivated");
    assert_eq!(status_name(1), "active");
    assert_eq!(status_name(2), "suspended");
    assert_eq!(status_name(3), "locked");
    assert_eq!(status_name(4), "password_expired");
    assert_eq!(status_name(5), "awaiting_password_reset");
    assert_eq!(status_name(7), "password_pending");
    assert_eq!(status_name(8), "security_questions_required");
    assert_eq!(status_name(6), "status_6");
}

#[test]
fn a_user_object_becomes_the_model() {
    let rules = Rules {
        employee_id_attribute: Some("employeenumber".into()),
        ..Rules::default()
    };
    let user = convert(
        raw(serde_json::json!({
            "id": 40123, "username": "zoe", "email": "zoe@example.com",
            "firstname": "Zoë", "lastname": "Ødegård", "department": "Sales", "title": null,
            "status": 1, "state": 1, "role_ids": [7, 9], "group_id": 3,
            "manager_user_id": 40001,
            "custom_attributes": {"employeenumber": "E-17", "costcenter": null}
        })),
        &rules,
    )
    .expect("valid");
    assert_eq!(user.user.id.0, "40123");
    assert_eq!(user.user.login.as_deref(), Some("zoe"));
    assert_eq!(user.user.display_name.as_deref(), Some("Zoë Ødegård"));
    assert_eq!(user.user.status.as_deref(), Some("active"));
    assert!(user.user.active);
    assert_eq!(user.user.title, None);
    assert_eq!(user.user.employee_id.as_deref(), Some("E-17"));
    assert_eq!(user.user.manager_id, Some(IdpId("40001".into())));
    assert_eq!(user.role_ids, BTreeSet::from([7, 9]));
    assert_eq!(user.group_id, Some(3));
    let attrs = user.user.attrs.to_map();
    assert_eq!(attrs["custom_attributes"]["costcenter"], Value::Null);
    assert_eq!(attrs["id"], 40123);
}

#[test]
fn bad_records_are_rejected_with_their_reason() {
    let missing_email = convert(
        raw(serde_json::json!({"id": 5, "username": "x", "status": 1, "state": 1})),
        &rules(),
    )
    .expect_err("no email");
    assert_eq!(missing_email.idp_id, Some(IdpId("5".into())));
    assert!(
        missing_email.error.contains("email"),
        "{}",
        missing_email.error
    );

    let text_id = convert(
        raw(serde_json::json!({"id": "abc", "email": "a@example.com", "status": 1, "state": 1})),
        &rules(),
    )
    .expect_err("non-integer id");
    assert_eq!(text_id.idp_id, None);
    assert!(text_id.error.contains("integer"), "{}", text_id.error);

    let fraction = convert(
        raw(serde_json::json!({"id": 1.5, "email": "a@example.com", "status": 1, "state": 1})),
        &rules(),
    )
    .expect_err("fractional id");
    assert!(fraction.error.contains("integer"));

    let no_status = convert(
        raw(serde_json::json!({"id": 6, "email": "a@example.com", "state": 1})),
        &rules(),
    )
    .expect_err("no status");
    assert!(no_status.error.contains("status"));

    let not_object = convert(raw(serde_json::json!([1, 2])), &rules()).expect_err("array");
    assert_eq!(not_object.idp_id, None);
}

#[test]
fn suspended_and_unactivated_follow_the_settings() {
    let suspended = serde_json::json!({"id": 1, "email": "a@example.com", "status": 2, "state": 1});
    let user = convert(raw(suspended.clone()), &rules()).expect("valid");
    assert!(!user.user.active);
    assert_eq!(user.user.status.as_deref(), Some("suspended"));
    let lenient = Rules {
        suspended_is_active: true,
        ..Rules::default()
    };
    assert!(
        convert(raw(suspended), &lenient)
            .expect("valid")
            .user
            .active
    );
}

#[test]
fn groups_are_role_and_group_names_through_the_filter() {
    let directory = Directory {
        roles: BTreeMap::from([(1, "LP Onboarding".into()), (2, "Everyone".into())]),
        groups: BTreeMap::from([(9, "SocialTalent".into())]),
    };
    let filter = GroupFilter::new(&["SocialTalent*".into(), "LP *".into()]).expect("valid");
    assert_eq!(
        group_names(&BTreeSet::from([1, 2, 77]), Some(9), &directory, &filter),
        vec!["LP Onboarding".to_owned(), "SocialTalent".to_owned()]
    );
    let all = GroupFilter::new(&[]).expect("valid");
    assert_eq!(
        group_names(&BTreeSet::from([2]), None, &directory, &all),
        vec!["Everyone".to_owned()]
    );
}

#[test]
fn managers_resolve_within_the_batch_but_not_to_oneself() {
    let make = |id: u64, manager: Option<u64>| {
        convert(
            raw(
                serde_json::json!({"id": id, "email": format!("u{id}@example.com"), "status": 1,
                "state": 1, "manager_user_id": manager}),
            ),
            &rules(),
        )
        .expect("valid")
    };
    let mut users = vec![
        make(1, None),
        make(2, Some(1)),
        make(3, Some(3)),
        make(4, Some(99)),
    ];
    resolve_managers_in_batch(&mut users);
    assert_eq!(
        users[1].user.manager.as_ref().map(|m| m.id.0.as_str()),
        Some("1")
    );
    assert!(users[2].user.manager.is_none());
    assert!(users[3].user.manager.is_none());
}

#[test]
fn memberships_survive_the_state_as_text() {
    let memberships = Memberships {
        roles: BTreeMap::from([(
            7,
            Members {
                name: "LP Sales".into(),
                members: BTreeSet::from(["1".to_owned(), "2".to_owned()]),
            },
        )]),
        groups: BTreeMap::new(),
    };
    let text = encode_memberships(&memberships);
    assert_eq!(
        serde_json::from_str::<Memberships>(&text).expect("parses"),
        memberships
    );
}
