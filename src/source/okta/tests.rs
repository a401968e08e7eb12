use serde_json::json;

use super::*;

fn okta_user(id: &str, status: &str, profile: Value) -> Value {
    json!({"id": id, "status": status, "created": "2026-01-01T00:00:00.000Z",
           "lastUpdated": "2026-01-02T00:00:00.000Z", "profile": profile,
           "_links": {"self": {"href": format!("https://example.okta.com/api/v1/users/{id}")}}})
}

#[test]
fn an_okta_user_becomes_the_common_user_shape() {
    let raw = okta_user(
        "00u1",
        "PASSWORD_EXPIRED",
        json!({"login": "zoe@example.com", "email": "zoe@example.com", "firstName": "Zoë",
               "lastName": "Ødegård", "department": "Sales", "title": "Recruiter",
               "employeeNumber": 1042, "managerId": "00u0", "customerId": "C-1", "mobilePhone": null}),
    );
    let user = convert(raw.clone(), false).expect("valid").user;
    assert_eq!(user.id.0, "00u1");
    assert_eq!(user.login.as_deref(), Some("zoe@example.com"));
    assert_eq!(user.given_name.as_deref(), Some("Zoë"));
    assert_eq!(user.employee_id.as_deref(), Some("1042"));
    assert_eq!(user.manager_id, Some(IdpId("00u0".into())));
    assert!(
        user.active,
        "PASSWORD_EXPIRED is a credential state, not a leaver"
    );
    assert_eq!(user.status.as_deref(), Some("PASSWORD_EXPIRED"));
    assert_eq!(user.attrs.to_map()["customerId"], "C-1");
}

#[test]
fn statuses_decide_active_and_suspended_follows_the_setting() {
    for (status, active) in [
        ("ACTIVE", true),
        ("LOCKED_OUT", true),
        ("RECOVERY", true),
        ("STAGED", false),
        ("PROVISIONED", false),
        ("DEPROVISIONED", false),
        ("SUSPENDED", false),
    ] {
        let raw = okta_user("00u1", status, json!({"login": "a@x.com"}));
        assert_eq!(
            convert(raw.clone(), false).expect("valid").user.active,
            active,
            "{status}"
        );
    }
    let suspended = okta_user("00u1", "SUSPENDED", json!({"login": "a@x.com"}));
    assert!(convert(suspended.clone(), true).expect("valid").user.active);
}

#[test]
fn bad_records_are_rejected_with_their_id() {
    let no_id = json!({"status": "ACTIVE", "profile": {}});
    assert_eq!(
        convert(no_id.clone(), false).expect_err("no id").idp_id,
        None
    );
    let bad_type = okta_user("00u9", "ACTIVE", json!({"login": ["a", "b"]}));
    let rejected = convert(bad_type.clone(), false).expect_err("login is a list");
    assert_eq!(rejected.idp_id, Some(IdpId("00u9".into())));
    assert!(
        rejected.error.starts_with("profile.login must be a string"),
        "{}",
        rejected.error
    );
}

#[test]
fn managers_resolve_by_id_else_by_login() {
    let users: Vec<OktaUser> = [
        okta_user(
            "00u0",
            "ACTIVE",
            json!({"login": "Boss@x.com", "email": "boss@x.com"}),
        ),
        okta_user(
            "00u1",
            "ACTIVE",
            json!({"login": "a@x.com", "managerId": "00u0"}),
        ),
        okta_user(
            "00u2",
            "ACTIVE",
            json!({"login": "b@x.com", "manager": "boss@x.com"}),
        ),
        okta_user(
            "00u3",
            "ACTIVE",
            json!({"login": "c@x.com", "managerId": "00uX"}),
        ),
    ]
    .iter()
    .map(|raw| convert(raw.clone(), false).expect("valid"))
    .collect();
    let directory = Directory::of(&users);
    let boss = |index: usize| {
        directory
            .manager_of(&users[index])
            .map(|m| users[m].user.id.0.clone())
    };
    assert_eq!(boss(1).as_deref(), Some("00u0"));
    assert_eq!(boss(2).as_deref(), Some("00u0"));
    assert_eq!(boss(3), None);
    assert!(manager_warning(&users[3]).contains("managerId 00uX, which matches nobody"));
}

fn event(
    uuid: &str,
    published: &str,
    kind: &str,
    user: Option<&str>,
    group: (&str, &str),
) -> Value {
    let mut target = Vec::new();
    if let Some(user) = user {
        target.push(
            json!({"id": user, "type": "User", "alternateId": "a@x.com", "displayName": "A"}),
        );
    }
    target.push(json!({"id": group.0, "type": "UserGroup", "alternateId": "unknown", "displayName": group.1}));
    json!({
        "uuid": uuid, "published": published, "eventType": kind,
        "outcome": {"result": "SUCCESS"}, "target": target
    })
}

#[test]
fn membership_events_are_read_from_the_system_log_shape() {
    let add = event(
        "e1",
        "2026-11-26T10:00:00.000Z",
        "group.user_membership.add",
        Some("00u1"),
        ("00g1", "LP Onboarding"),
    );
    let changes = GroupChanges::of(
        std::slice::from_ref(&add),
        &BTreeMap::new(),
        &BTreeMap::new(),
    );
    assert_eq!(
        changes.memberships,
        vec![MembershipChange {
            user_id: "00u1".into(),
            group_id: "00g1".into(),
            group: "LP Onboarding".into(),
            added: true,
            already_applied: false,
        }]
    );
    let mut failed = add.clone();
    failed["outcome"]["result"] = json!("FAILURE");
    let mut other = add;
    other["eventType"] = json!("user.session.start");
    let none = GroupChanges::of(&[failed, other], &BTreeMap::new(), &BTreeMap::new());
    assert!(none.memberships.is_empty() && none.groups.is_empty());
}

#[test]
fn the_latest_published_event_wins_and_applied_events_count_only_for_ordering() {
    let group = ("00g1", "LP Onboarding");
    let add = event(
        "e1",
        "2026-11-26T10:00:00.000Z",
        "group.user_membership.add",
        Some("00u1"),
        group,
    );
    let remove = event(
        "e2",
        "2026-11-26T10:00:05.000Z",
        "group.user_membership.remove",
        Some("00u1"),
        group,
    );
    // Returned out of order: the removal first.
    let changes = GroupChanges::of(
        &[remove.clone(), add.clone()],
        &BTreeMap::new(),
        &BTreeMap::new(),
    );
    assert_eq!(changes.memberships.len(), 1);
    assert!(!changes.memberships[0].added, "the later removal wins");
    // Read again after the removal was applied: it still wins, and is not applied twice.
    let applied: BTreeMap<String, String> =
        [("e2".to_owned(), "2026-11-26T10:00:05.000Z".to_owned())].into();
    let again = GroupChanges::of(&[add, remove], &applied, &BTreeMap::new());
    assert!(again.memberships[0].already_applied);
    assert!(!again.memberships[0].added);
    assert_eq!(
        again
            .applied_after("2026-11-26T10:00:01.000Z")
            .keys()
            .collect::<Vec<_>>(),
        ["e2"],
        "only events inside the next overlap window are remembered"
    );
}

#[test]
fn renamed_and_deleted_groups_are_listed_by_their_old_names() {
    let known: BTreeMap<String, String> = [
        ("00g1".to_owned(), "LP Onboarding".to_owned()),
        ("00g2".to_owned(), "LP Old".to_owned()),
    ]
    .into();
    let events = [
        event(
            "e1",
            "2026-11-26T10:00:00.000Z",
            "group.profile.update",
            None,
            ("00g1", "LP Welcome"),
        ),
        event(
            "e2",
            "2026-11-26T10:00:01.000Z",
            "group.lifecycle.delete",
            None,
            ("00g2", "LP Old"),
        ),
    ];
    let mut changes = GroupChanges::of(&events, &BTreeMap::new(), &known);
    assert_eq!(changes.renamed_ids(), ["00g1"]);
    changes.set_new_name("00g1", Some("LP Welcome".into()));
    assert_eq!(
        changes
            .groups
            .iter()
            .map(GroupEvent::reason)
            .collect::<Vec<_>>(),
        [
            "group renamed: LP Onboarding → LP Welcome",
            "group deleted: LP Old"
        ]
    );
    let names = changes.names_after(&known);
    assert_eq!(names.get("00g1").map(String::as_str), Some("LP Welcome"));
    assert!(!names.contains_key("00g2"));
    // A profile update that kept the name changes nobody.
    let mut same = GroupChanges::of(&events[..1], &BTreeMap::new(), &known);
    same.set_new_name("00g1", Some("LP Onboarding".into()));
    assert!(same.groups.is_empty());
}

#[test]
fn search_values_are_escaped_and_encoded() {
    assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
    assert_eq!(
        search_path("lastUpdated gt \"2026-11-26T10:00:00.000Z\""),
        "/api/v1/users?limit=200&search=lastUpdated%20gt%20%222026-11-26T10%3A00%3A00.000Z%22"
    );
    let time = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
        .expect("time")
        .with_timezone(&Utc);
    assert_eq!(format_time(time), "2026-11-26T10:00:00.000Z");
}

#[test]
fn a_typed_page_reads_users_as_the_value_conversion_does() {
    let page = json!([
        okta_user(
            "00u1",
            "ACTIVE",
            json!({"login": "Zoe@x.com", "email": "zoe@x.com", "firstName": "Zoë",
                   "employeeNumber": 7, "managerId": "00u0", "nested": {"a": [1, null]},
                   "mobilePhone": null, "manager": ["ignored", "with a managerId"]}),
        ),
        okta_user("00u2", "SUSPENDED", json!({"login": "b@x.com", "manager": "zoe@x.com"})),
        okta_user("00u3", "ACTIVE", json!({"login": ["a", "b"]})),
        {"id": 42, "status": "ACTIVE", "profile": {}},
        {"id": "00u4", "status": ["ACTIVE"], "profile": {}},
        {"id": "00u5", "status": "ACTIVE", "profile": "none"},
        {"id": "00u6", "status": "ACTIVE"},
        {"id": "00u7", "status": "ACTIVE", "profile": null},
        {"id": "00u8", "status": "ACTIVE", "profile": [{"login": "a@x.com"}]},
        okta_user("00u9", "ACTIVE", json!({"login": "c@x.com", "employeeNumber": 1.5e3,
                                           "title": "  ", "department": -0.25, "email": null})),
        okta_user("00u10", "ACTIVE", json!({"login": "d@x.com", "title": true})),
        okta_user("00u11", "ACTIVE", json!({"login": "e@x.com", "managerId": {"id": [1, {"b": null}]}})),
        okta_user("00u12", "ACTIVE", json!({"login": "f@x.com", "employeeNumber": 18446744073709551615_u64,
                                            "department": i64::MIN})),
        null,
        "a string",
        [1, 2],
        7
    ]);
    let text = serde_json::to_string(&page).expect("serializes");
    let typed: Vec<RawUser> = serde_json::from_str(&text).expect("any items are accepted");
    let Value::Array(items) = serde_json::from_str::<Value>(&text).expect("parses") else {
        unreachable!("an array")
    };
    assert_eq!(typed.len(), items.len());
    for (raw, value) in typed.into_iter().zip(items) {
        let expected = convert(value.clone(), true);
        let got = convert_raw(raw, true);
        match (got, expected) {
            (Ok(got), Ok(expected)) => {
                assert_eq!(got.user, expected.user, "{value}");
                assert_eq!(got.manager_login, expected.manager_login, "{value}");
            }
            (Err(got), Err(expected)) => assert_eq!(got, expected, "{value}"),
            (got, expected) => panic!("{value}: {got:?} vs {expected:?}"),
        }
    }
}

#[test]
fn the_typed_conversion_keeps_the_whole_profile_and_names_the_first_bad_field() {
    let page = r#"[{"id":"00u1","status":"ACTIVE","_links":{"self":{"href":"x"}},
        "profile":{"zeta":"z","login":"a@x.com","employeeNumber":12,"costCenter":null,
                   "title":{"bad":1},"email":["bad"]}},
        {"id":"00u2","status":"ACTIVE","profile":{"zeta":"z","login":"a@x.com","costCenter":null}}]"#;
    let mut typed: Vec<RawUser> = serde_json::from_str(page).expect("parses");
    let good = convert_raw(typed.pop().expect("two"), false).expect("valid");
    let attrs = good.user.attrs.to_map();
    let keys: Vec<&str> = attrs.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["zeta", "login", "costCenter"],
        "all attributes, in order"
    );
    let bad = convert_raw(typed.pop().expect("two"), false).expect_err("bad fields");
    assert!(
        bad.error.starts_with("profile.email must be a string"),
        "{}",
        bad.error
    );

    // A repeated key: the last value wins, as when parsing into `Value`.
    let repeated = r#"{"id":"00u7","status":"STAGED","id":"00u8","status":"ACTIVE",
        "profile":{"title":"first"},"profile":{"title":"last"}}"#;
    let typed: RawUser = serde_json::from_str(repeated).expect("parses");
    let value: Value = serde_json::from_str(repeated).expect("parses");
    let expected = convert(value, false).expect("valid").user;
    assert_eq!(expected.id.0, "00u8");
    assert_eq!(convert_raw(typed, false).expect("valid").user, expected);
}

#[test]
fn the_profile_text_becomes_the_attributes_as_it_came() {
    // Whitespace, escapes, a null and a repeated key, as a proxy or another server might send.
    let page = r#"[{"id":"00u1","status":"ACTIVE","profile": {
        "login" : "old@x.com", "first\u004eame": "Zo\u00eb", "mobilePhone": null,
        "nested": {"a": [1, null]}, "login": "a@x.com", "title": "Recruiter" } }]"#;
    let mut typed: Vec<RawUser> = serde_json::from_str(page).expect("parses");
    let user = convert_raw(typed.pop().expect("one"), false)
        .expect("valid")
        .user;
    assert_eq!(
        user.login.as_deref(),
        Some("a@x.com"),
        "the last value wins"
    );
    assert_eq!(
        user.given_name.as_deref(),
        Some("Zoë"),
        "keys are unescaped"
    );
    assert_eq!(user.title.as_deref(), Some("Recruiter"));
    assert!(
        user.attrs.as_json().starts_with(
            r#"{
        "login" : "old@x.com""#
        ),
        "kept as sent: {:?}",
        user.attrs
    );
    let attrs = user.attrs.to_map();
    assert_eq!(
        Value::Object(attrs),
        json!({"login": "a@x.com", "firstName": "Zoë", "mobilePhone": null,
               "nested": {"a": [1, null]}, "title": "Recruiter"}),
        "read back as the parsed profile would be"
    );
    assert_eq!(
        user.attrs.get("mobilePhone"),
        Some(Value::Null),
        "nulls are kept"
    );
}

#[test]
fn a_profile_field_of_the_wrong_type_is_named_with_its_value() {
    for (profile, error) in [
        (
            json!({"title": true}),
            "profile.title must be a string, found true",
        ),
        (
            json!({"email": {"a": [1, "b"]}}),
            r#"profile.email must be a string, found {"a":[1,"b"]}"#,
        ),
        (
            json!({"login": "a@x.com", "managerId": [], "manager": false}),
            "profile.managerId must be a string, found []",
        ),
        (
            json!({"managerId": "00u0", "manager": false, "department": [null]}),
            "profile.department must be a string, found [null]",
        ),
    ] {
        let rejected =
            convert(okta_user("00u1", "ACTIVE", profile.clone()), false).expect_err("a bad field");
        assert_eq!(rejected.error, error, "{profile}");
    }
}

#[test]
fn a_profile_no_map_can_hold_is_rejected_not_emptied() {
    // Syntax allows a lone surrogate and a number beyond f64; a map cannot hold them. The user
    // must be rejected (and so protected), not provisioned with no attributes.
    for profile in [
        r#"{"login":"a@x.com","note":"\ud800"}"#,
        r#"{"login":"a@x.com","n":1e400}"#,
    ] {
        let page = format!(r#"[{{"id":"00u1","status":"ACTIVE","profile":{profile}}}]"#);
        let mut typed: Vec<RawUser> = serde_json::from_str(&page).expect("the page parses");
        let rejected = convert_raw(typed.pop().expect("one"), false).expect_err("rejected");
        assert_eq!(rejected.idp_id, Some(IdpId("00u1".into())));
        assert!(
            rejected
                .error
                .starts_with("the `profile` object cannot be read"),
            "{}",
            rejected.error
        );
    }
}
