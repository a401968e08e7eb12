//! The Okta source end to end: the real binary reads the fake Okta (built from Okta's documented
//! behaviour) and writes to the real SCIM peer. Full run, then incremental runs that see a
//! profile change, a deactivation, a group change and a rehire; faults abort before any write.

use serde_json::{Value, json};

use crate::support::fake_okta::{FakeOkta, TestKey};
use crate::support::peer::EXT_URN;
use crate::support::{Workspace, ops};

/// A small org: a manager and three reports; groups for scope, admins and learning paths.
async fn org() -> FakeOkta {
    let okta = FakeOkta::start().await;
    let person = |id: &str, first: &str, last: &str, department: &str, manager: Option<&str>| {
        let mut profile = json!({
            "login": format!("{}.{}@northwind.example", first.to_lowercase(), last.to_lowercase()),
            "email": format!("{}.{}@northwind.example", first.to_lowercase(), last.to_lowercase()),
            "firstName": first, "lastName": last, "department": department, "title": "Recruiter",
            "customerId": format!("C-{id}"),
        });
        if let Some(manager) = manager {
            profile["managerId"] = json!(manager);
        }
        profile
    };
    let mut lead = person("00u1", "Ana", "Li", "Sales", None);
    lead["isManager"] = json!(true);
    okta.add_user("00u1", "ACTIVE", lead);
    okta.add_user(
        "00u2",
        "ACTIVE",
        person("00u2", "Zoe", "Odegard", "Sales", Some("00u1")),
    );
    okta.add_user(
        "00u3",
        "PASSWORD_EXPIRED",
        person("00u3", "Bo", "Berg", "Sales", Some("00u1")),
    );
    okta.add_user(
        "00u4",
        "ACTIVE",
        person("00u4", "Cy", "Dahl", "Marketing", Some("00u1")),
    );
    okta.add_user("00u5", "STAGED", person("00u5", "Di", "Eng", "Sales", None));
    okta.add_user("00u6", "ACTIVE", person("00u6", "Ed", "Fox", "Sales", None));
    okta.add_group("00g1", "SocialTalent");
    okta.add_group("00g2", "LP Onboarding");
    okta.add_group("00g3", "Everyone Else");
    for user in ["00u1", "00u2", "00u3", "00u4", "00u5"] {
        okta.add_member("00g1", user);
    }
    okta.add_member("00g2", "00u2");
    okta.add_member("00g3", "00u6");
    okta
}

fn workspace(okta: &FakeOkta) -> Workspace {
    let mut ws = Workspace::new();
    ws.source = format!(
        "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\ntoken = \"{}\"\ngroups = [\"SocialTalent\", \"LP *\"]\n",
        okta.url,
        okta.api_token()
    );
    ws
}

fn by_idp(report: &Value, idp_id: &str) -> Value {
    report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["idp_id"] == idp_id)
        .cloned()
        .unwrap_or(Value::Null)
}

fn writes(report: &Value) -> Vec<(String, String)> {
    ops(report)
        .into_iter()
        .filter(|(op, _)| op != "skip")
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_run_then_incremental_runs_follow_okta() {
    let okta = org().await;
    let ws = workspace(&okta);
    let first = ws.sync(&[], 0);
    assert_eq!(first["source"]["kind"], "okta");
    assert_eq!(first["source"]["full"], true);
    // In scope: the SocialTalent group, active (PASSWORD_EXPIRED counts; STAGED does not).
    assert_eq!(
        writes(&first),
        pairs(&[
            ("create", "00u1"),
            ("create", "00u2"),
            ("create", "00u3"),
            ("create", "00u4")
        ])
    );
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@northwind.example")
        .await
        .expect("created");
    assert_eq!(zoe["externalId"], "00u2");
    assert_eq!(zoe[EXT_URN]["reportsTo"], "ana.li@northwind.example");
    assert_eq!(zoe[EXT_URN]["learningPaths"], json!(["Onboarding"]));
    assert_eq!(zoe[EXT_URN]["udf_Customer_ID"], "C-00u2");
    let ana = ws
        .peer
        .user_by_name("ana.li@northwind.example")
        .await
        .expect("created");
    assert_eq!(ana[EXT_URN]["role"], "advisor");

    // Nothing changed: an incremental run plans nothing and asks little of Okta.
    okta.advance_clock(600);
    okta.clear_requests();
    let quiet = ws.sync(&[], 0);
    assert_eq!(quiet["source"]["full"], false);
    assert_eq!(writes(&quiet), vec![]);
    assert!(
        okta.count("/api/v1/users") <= 3,
        "requests: {:?}",
        okta.requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );

    // A profile change, a deactivation, a group change, all seen incrementally.
    okta.advance_clock(600);
    okta.update_profile("00u3", json!({"department": "Marketing"}));
    okta.set_status("00u4", "DEPROVISIONED");
    okta.add_member("00g2", "00u1");
    okta.advance_clock(60);
    okta.clear_requests();
    let changed = ws.sync(&[], 0);
    assert_eq!(changed["source"]["full"], false);
    assert_eq!(
        writes(&changed),
        pairs(&[
            ("deactivate", "00u4"),
            ("update", "00u1"),
            ("update", "00u3")
        ])
    );
    assert_eq!(
        by_idp(&changed, "00u1")["changes"][0]["attribute"],
        "learningPaths"
    );
    assert!(
        okta.count("/api/v1/users") <= 3,
        "at most 3 requests to the users endpoint"
    );
    let bo = ws
        .peer
        .user_by_name("bo.berg@northwind.example")
        .await
        .expect("exists");
    assert_eq!(bo[EXT_URN]["coreTeam"], "Marketing");
    assert!(
        ws.peer
            .user_by_name("cy.dahl@northwind.example")
            .await
            .is_none(),
        "deactivated"
    );
    let ana = ws
        .peer
        .user_by_name("ana.li@northwind.example")
        .await
        .expect("exists");
    assert_eq!(ana[EXT_URN]["learningPaths"], json!(["Onboarding"]));

    // Leaving a group is a change too, and a rehire is reactivated.
    okta.advance_clock(600);
    okta.remove_member("00g2", "00u2");
    okta.set_status("00u4", "ACTIVE");
    okta.advance_clock(60);
    let rehire = ws.sync(&[], 0);
    assert_eq!(
        writes(&rehire),
        pairs(&[("reactivate", "00u4"), ("update", "00u2")])
    );
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@northwind.example")
        .await
        .expect("exists");
    assert!(zoe[EXT_URN].get("learningPaths").is_none(), "{zoe}");
    assert!(
        ws.peer
            .user_by_name("cy.dahl@northwind.example")
            .await
            .is_some(),
        "rehired"
    );

    // Settled.
    okta.advance_clock(600);
    assert_eq!(writes(&ws.sync(&[], 0)), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_deleted_user_is_caught_by_the_next_full_run() {
    let okta = org().await;
    let ws = workspace(&okta);
    ws.sync(&[], 0);
    okta.advance_clock(600);
    okta.set_status("00u3", "DEPROVISIONED");
    okta.delete_user("00u3");
    okta.advance_clock(60);
    // Deleted users vanish from search too: the incremental run cannot see it.
    assert_eq!(writes(&ws.sync(&[], 0)), vec![]);
    let full = ws.sync(&["--full"], 0);
    assert_eq!(full["source"]["full"], true);
    assert_eq!(writes(&full), pairs(&[("deactivate", "00u3")]));
    assert_eq!(by_idp(&full, "00u3")["reason"], "no longer in source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_truncated_page_aborts_before_any_write() {
    let okta = org().await;
    let ws = workspace(&okta);
    okta.fail_next("/api/v1/users", 500, 20);
    let run = ws.run(&["sync", "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("/api/v1/users"),
        "the message names the URL: {}",
        run.stderr
    );
    assert!(ws.peer.users().await.is_empty(), "nothing written");

    let okta = org().await;
    let ws = workspace(&okta);
    okta.truncate_next_page("/api/v1/users");
    let run = ws.run(&["sync", "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(ws.peer.users().await.is_empty(), "nothing written");
    // The next run, with Okta healthy again, converges.
    assert_eq!(ws.sync(&[], 0)["summary"]["create"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_waited_out() {
    let okta = org().await;
    let ws = workspace(&okta);
    okta.rate_limit_next("/api/v1/users", 1, 1);
    okta.fail_next("/api/v1/groups", 503, 2);
    let started = std::time::Instant::now();
    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["create"], 4);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "waited for the reset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_reset_further_than_fifteen_minutes_fails_the_run_naming_it() {
    let okta = org().await;
    let ws = workspace(&okta);
    okta.rate_limit_next("/api/v1/users", 1, 3600);
    let started = std::time::Instant::now();
    let run = ws.run(&["sync", "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("3600 s, until") && run.stderr.contains("15 minutes"),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the run did not wait"
    );
    assert!(ws.peer.users().await.is_empty(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_app_with_dpop_reads_the_org() {
    let okta = org().await;
    let key = TestKey::ec_p256();
    okta.register_service_app("0oa-sync", &key.public_pem, true);
    let mut ws = workspace(&okta);
    std::fs::write(ws.dir.path().join("okta-key.pem"), &key.private_pem).expect("write key");
    ws.source = format!(
        "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\nclient_id = \"0oa-sync\"\nprivate_key_file = \"okta-key.pem\"\nscopes = [\"okta.users.read\", \"okta.groups.read\", \"okta.logs.read\"]\ngroups = [\"SocialTalent\", \"LP *\"]\n",
        okta.url
    );
    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["create"], 4);
    let dpop_calls = okta
        .requests()
        .iter()
        .filter(|request| request.path.starts_with("/api/v1/"))
        .filter(|request| {
            request
                .header("authorization")
                .is_some_and(|h| h.starts_with("DPoP "))
                && request.header("dpop").is_some()
        })
        .count();
    assert!(
        dpop_calls > 0,
        "API calls carry DPoP-bound tokens and proofs"
    );
    assert_eq!(okta.tokens_issued(), 1, "one token serves the whole run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_and_check_config_work_against_okta() {
    let okta = org().await;
    let ws = workspace(&okta);
    for wanted in [
        "00u2",
        "zoe.odegard@northwind.example",
        "ZOE.ODEGARD@northwind.example",
    ] {
        let preview = ws.run(&["preview", wanted, "--output", "json"]);
        assert_eq!(preview.code, 0, "{wanted}: {}", preview.stderr);
        assert_eq!(preview.json["user"]["id"], "00u2", "{wanted}");
        assert_eq!(
            preview.json["user"]["groups"],
            json!(["LP Onboarding", "SocialTalent"])
        );
        assert_eq!(
            preview.json["payload"][EXT_URN]["reportsTo"],
            "ana.li@northwind.example"
        );
        assert_eq!(preview.json["action"]["op"], "create");
    }
    let check = ws.run(&["check-config", "--connect"]);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    assert!(
        check.stdout.contains("authenticated to"),
        "{}",
        check.stdout
    );

    let mut bad = workspace(&okta);
    bad.source = bad.source.replace(okta.api_token(), "not-the-token");
    let check = bad.run(&["check-config", "--connect"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(
        check.stderr.contains("source.okta.token"),
        "names the credential: {}",
        check.stderr
    );
    assert!(
        !check.stderr.contains("not-the-token"),
        "never prints the token"
    );
}

/// Group changes of every kind reach their members in the same incremental run: a rename (no
/// request per user), a group renamed into the filter, a deletion, and membership events that
/// Okta returns out of order by `published` (the latest wins, each event applies once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_deleted_and_out_of_order_group_events_reach_their_members() {
    let okta = org().await;
    okta.add_group("00g4", "Security Awareness");
    okta.add_member("00g4", "00u3");
    okta.add_member("00g2", "00u4");
    let ws = workspace(&okta);
    ws.sync(&[], 0);
    let learning_paths = |user: Value| user[EXT_URN]["learningPaths"].clone();
    let account = |name: &'static str| {
        let peer = ws.peer.clone();
        async move { peer.user_by_name(name).await.expect("exists") }
    };

    okta.advance_clock(60);
    okta.rename_group("00g2", "LP Welcome");
    okta.advance_clock(60);
    let renamed = ws.sync(&[], 0);
    assert_eq!(
        writes(&renamed),
        vec![
            ("update".to_owned(), "00u2".to_owned()),
            ("update".to_owned(), "00u4".to_owned())
        ],
        "{renamed:#}"
    );
    assert_eq!(
        by_idp(&renamed, "00u2")["reason"],
        "group renamed: LP Onboarding → LP Welcome"
    );
    assert_eq!(
        learning_paths(account("zoe.odegard@northwind.example").await),
        json!(["Welcome"])
    );

    okta.advance_clock(60);
    okta.rename_group("00g4", "LP Security");
    okta.advance_clock(60);
    let into_filter = ws.sync(&[], 0);
    assert_eq!(
        writes(&into_filter),
        vec![("update".to_owned(), "00u3".to_owned())],
        "{into_filter:#}"
    );
    assert_eq!(
        learning_paths(account("bo.berg@northwind.example").await),
        json!(["Security"])
    );

    okta.advance_clock(60);
    okta.delete_group("00g2");
    okta.advance_clock(60);
    let deleted = ws.sync(&[], 0);
    assert_eq!(
        writes(&deleted),
        vec![
            ("update".to_owned(), "00u2".to_owned()),
            ("update".to_owned(), "00u4".to_owned())
        ],
        "{deleted:#}"
    );
    assert!(
        account("zoe.odegard@northwind.example").await[EXT_URN]
            .get("learningPaths")
            .is_none()
    );

    // Cy joins and then leaves "LP Security"; Okta returns the removal before the addition.
    okta.advance_clock(60);
    okta.add_member("00g4", "00u4");
    okta.advance_clock(5);
    okta.remove_member("00g4", "00u4");
    okta.persist_last_two_events_swapped();
    okta.advance_clock(60);
    let out_of_order = ws.sync(&[], 0);
    assert!(
        writes(&out_of_order).is_empty(),
        "the latest event (the removal) wins: {out_of_order:#}"
    );
    assert!(
        account("cy.dahl@northwind.example").await[EXT_URN]
            .get("learningPaths")
            .is_none()
    );
    // The same events read again inside the overlap window change nothing.
    okta.advance_clock(30);
    assert!(writes(&ws.sync(&[], 0)).is_empty());
}
