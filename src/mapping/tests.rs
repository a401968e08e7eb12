use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::model::{IdpId, ManagerRef, SourceUser};

fn user(id: &str) -> SourceUser {
    SourceUser {
        id: IdpId(id.into()),
        login: Some(format!("{id}@example.com")),
        email: Some(format!("{}@Example.com", id.to_uppercase())),
        given_name: Some("Zoë".into()),
        family_name: Some("Ødegård".into()),
        display_name: None,
        active: true,
        status: Some("ACTIVE".into()),
        department: Some("Sales".into()),
        title: None,
        employee_id: None,
        manager_id: None,
        manager: None,
        groups: vec![
            "SocialTalent".into(),
            "LP Onboarding".into(),
            "LP Sourcing".into(),
        ],
        attrs: serde_json::from_value(
            json!({"customerId": "C-1", "isManager": false, "nothing": null}),
        )
        .expect("object"),
    }
}

fn rule(text: &str) -> RuleSpec {
    let value: toml::Value = toml::from_str(&format!("x = {text}"))
        .map(|table: toml::Table| table["x"].clone())
        .expect("valid TOML");
    RuleSpec::from_toml(&value).expect("valid rule")
}

fn mapper(scope: Option<&str>, rules: &[(&str, &str)]) -> Mapper {
    let spec = MappingSpec {
        scope: scope.map(str::to_owned),
        rules: rules
            .iter()
            .map(|(name, text)| ((*name).to_owned(), format!("mapping.{name}"), rule(text)))
            .collect(),
        writeback: None,
    };
    Mapper::compile(&spec).expect("compiles")
}

fn provision(mapper: &Mapper, user: SourceUser) -> Attributes {
    match mapper.map(&Arc::new(user)).decision {
        Decision::Provision(attributes) => (*attributes).clone(),
        other => panic!("expected Provision, got {other:?}"),
    }
}

const BASE: [(&str, &str); 3] = [
    ("userName", r#""{{ user.email | lower }}""#),
    ("coreTeam", r#""{{ user.department }}""#),
    ("role", r#""user""#),
];

fn with_base(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    BASE.iter().copied().chain(extra.iter().copied()).collect()
}

#[test]
fn templates_render_and_external_id_defaults_to_the_idp_id() {
    let mapper = mapper(
        None,
        &with_base(&[("name.givenName", r#""{{ user.given_name }}""#)]),
    );
    let attributes = provision(&mapper, user("u1"));
    assert_eq!(attributes["userName"], json!("u1@example.com"));
    assert_eq!(attributes["name.givenName"], json!("Zoë"));
    assert_eq!(attributes["externalId"], json!("u1"));
}

#[test]
fn missing_and_null_values_render_empty_never_none() {
    let mapper = mapper(
        None,
        &with_base(&[
            ("title", r#""{{ user.title }}""#),
            ("displayName", r#""{{ user.display_name | lower }}""#),
            ("reportsTo", r#""{{ user.manager.email if user.manager }}""#),
            ("udf_nothing", r#""{{ user.attrs.nothing }}""#),
            ("udf_absent", r#""{{ user.attrs.notAKey }}""#),
            ("udf_chain", r#""{{ user.manager.email }}""#),
        ]),
    );
    let attributes = provision(&mapper, user("u1"));
    for absent in [
        "title",
        "displayName",
        "reportsTo",
        "udf_nothing",
        "udf_absent",
        "udf_chain",
    ] {
        assert!(
            !attributes.contains_key(absent),
            "{absent} should be omitted, got {:?}",
            attributes.get(absent)
        );
    }
}

#[test]
fn manager_fields_are_visible() {
    let mapper = mapper(
        None,
        &with_base(&[(
            "reportsTo",
            r#""{{ user.manager.email | lower if user.manager }}""#,
        )]),
    );
    let mut report = user("u2");
    report.manager = Some(Arc::new(ManagerRef {
        id: IdpId("u1".into()),
        login: None,
        email: Some("Ana.Li@example.com".into()),
        display_name: None,
    }));
    assert_eq!(
        provision(&mapper, report)["reportsTo"],
        json!("ana.li@example.com")
    );
}

#[test]
fn expressions_give_json_values_and_lists_become_sorted_sets() {
    let mapper = mapper(
        None,
        &with_base(&[(
            "learningPaths",
            r#"{ expr = "user.groups | select('startingwith', 'LP ') | map('replace', 'LP ', '') | list" }"#,
        )]),
    );
    let mut u = user("u1");
    u.groups.push("LP Onboarding".into());
    assert_eq!(
        provision(&mapper, u)["learningPaths"],
        json!(["Onboarding", "Sourcing"])
    );
}

#[test]
fn empty_lists_are_absent_and_single_strings_become_lists_for_multi_valued() {
    let mapper = mapper(
        None,
        &with_base(&[
            (
                "teamsToManage",
                r#"{ expr = "user.attrs.managedTeams or []" }"#,
            ),
            ("learningPaths", r#""{{ user.department }}""#),
        ]),
    );
    let attributes = provision(&mapper, user("u1"));
    assert!(!attributes.contains_key("teamsToManage"));
    assert_eq!(attributes["learningPaths"], json!(["Sales"]));
}

#[test]
fn rules_take_the_first_match_else_the_default() {
    let role = r#"{ rules = [
        { when = "'Admins' in user.groups", value = "company_admin" },
        { when = "user.attrs.isManager", value = "advisor" },
    ], default = "user" }"#;
    let mapper = mapper(
        None,
        &[
            ("userName", r#""{{ user.login }}""#),
            ("coreTeam", r#""{{ user.department }}""#),
            ("role", role),
        ],
    );
    assert_eq!(provision(&mapper, user("u1"))["role"], json!("user"));
    let mut manager = user("u2");
    let mut attrs = manager.attrs.to_map();
    attrs.insert("isManager".into(), json!(true));
    manager.attrs = attrs.into();
    assert_eq!(provision(&mapper, manager)["role"], json!("advisor"));
    let mut admin = user("u3");
    admin.groups.push("Admins".into());
    let mut attrs = admin.attrs.to_map();
    attrs.insert("isManager".into(), json!(true));
    admin.attrs = attrs.into();
    assert_eq!(provision(&mapper, admin)["role"], json!("company_admin"));
}

#[test]
fn lookup_tables_map_values_with_a_default() {
    let mapper = mapper(
        None,
        &with_base(&[(
            "udf_region",
            r#"{ from = "user.department", map = { "Sales" = "EMEA Sales", "HR" = "People" }, default = "Other" }"#,
        )]),
    );
    assert_eq!(
        provision(&mapper, user("u1"))["udf_region"],
        json!("EMEA Sales")
    );
    let mut other = user("u2");
    other.department = Some("Legal".into());
    // coreTeam follows the department too; only the lookup is checked here.
    assert_eq!(provision(&mapper, other)["udf_region"], json!("Other"));
}

#[test]
fn scope_decides_who_is_provisioned() {
    let mapper = mapper(Some("'SocialTalent' in user.groups"), &with_base(&[]));
    let mut outside = user("u1");
    outside.groups.clear();
    assert_eq!(
        mapper.map(&Arc::new(outside)).decision,
        Decision::OutOfScope
    );
    let mut inactive = user("u2");
    inactive.active = false;
    assert_eq!(mapper.map(&Arc::new(inactive)).decision, Decision::Inactive);
}

#[test]
fn an_invalid_role_fails_with_the_attribute_and_reason() {
    let mapper = mapper(
        None,
        &[
            ("userName", r#""{{ user.login }}""#),
            ("role", r#""admin""#),
        ],
    );
    let mapped = mapper.map(&Arc::new(user("u1")));
    let Decision::Failed(error) = mapped.decision else {
        panic!("expected a failure");
    };
    assert_eq!(error.attribute, "role");
    assert_eq!(
        error.to_string(),
        "role: \"admin\" is not a SocialTalent role; expected one of user, advisor, company_admin"
    );
}

#[test]
fn an_empty_user_name_fails() {
    let mapper = mapper(None, &[("userName", r#""{{ user.attrs.nope }}""#)]);
    let Decision::Failed(error) = mapper.map(&Arc::new(user("u1"))).decision else {
        panic!("expected a failure");
    };
    assert_eq!(
        error.to_string(),
        "userName: is empty; every SocialTalent user needs one"
    );
}

#[test]
fn a_runtime_template_error_names_the_attribute() {
    let mapper = mapper(
        None,
        &with_base(&[("title", r#""{{ user.department | nosuchfilter }}""#)]),
    );
    match mapper.map(&Arc::new(user("u1"))).decision {
        Decision::Failed(error) => assert_eq!(error.attribute, "title"),
        // minijinja may reject an unknown filter at compile time instead; both name the key.
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn compile_errors_name_the_configuration_key() {
    let spec = MappingSpec {
        writeback: None,
        scope: None,
        rules: vec![(
            "role".into(),
            "mapping.role".into(),
            rule(r#"{ rules = [{ when = "user.active and", value = "x" }] }"#),
        )],
    };
    let error = Mapper::compile(&spec).expect_err("bad expression");
    assert_eq!(error.key, "mapping.role.rules[0].when");
    assert!(
        error.message.starts_with("expression does not compile"),
        "{}",
        error.message
    );

    let spec = MappingSpec {
        writeback: None,
        scope: None,
        rules: vec![(
            "title".into(),
            "mapping.title".into(),
            rule(r#""{{ user.title ""#),
        )],
    };
    let error = Mapper::compile(&spec).expect_err("bad template");
    assert_eq!(error.key, "mapping.title");
}

#[test]
fn rule_tables_with_unknown_keys_are_refused() {
    let value: toml::Table =
        toml::from_str(r#"x = { rules = [], defualt = "user" }"#).expect("toml");
    let error = RuleSpec::from_toml(&value["x"]).expect_err("typo");
    assert_eq!(
        error,
        "unknown key `defualt` in this rule; expected rules, default"
    );
}

#[test]
fn map_all_keeps_order_on_large_inputs() {
    let mapper = mapper(None, &with_base(&[]));
    let users: Vec<Arc<SourceUser>> = (0..5_000)
        .map(|i| Arc::new(user(&format!("u{i:05}"))))
        .collect();
    let mapped = mapper.map_all(&users);
    assert_eq!(mapped.len(), users.len());
    assert!(mapped.iter().zip(&users).all(|(m, u)| m.idp_id == u.id));
}
