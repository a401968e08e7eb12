//! The Entra ID source end to end: the real binary reads the fake Microsoft Graph (built from
//! the documented behaviour) and writes to the real SCIM peer. First run, then incremental runs
//! for a hire, a change, a disable, a delete, a manager change, a group change, and expired
//! delta tokens of both kinds; certificate credentials; throttling; write-back.

use serde_json::{Value, json};

use crate::support::fake_graph::{ExpiryMode, FakeGraph};
use crate::support::peer::EXT_URN;
use crate::support::{Workspace, ops};

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "graph-client-secret-value";

fn person(first: &str, last: &str, department: &str) -> Value {
    let upn = format!(
        "{}.{}@contoso.example",
        first.to_lowercase(),
        last.to_lowercase()
    );
    json!({
        "userPrincipalName": upn, "mail": upn, "givenName": first, "surname": last,
        "displayName": format!("{first} {last}"), "accountEnabled": true,
        "department": department, "jobTitle": "Recruiter", "employeeId": "1"
    })
}

async fn tenant() -> FakeGraph {
    let graph = FakeGraph::start().await;
    graph.register_app_secret(CLIENT_ID, SECRET);
    graph.add_user("u1", person("Ana", "Li", "Sales"));
    graph.add_user("u2", person("Zoe", "Odegard", "Sales"));
    graph.add_user("u3", person("Bo", "Berg", "Sales"));
    graph.add_user("u4", person("Cy", "Dahl", "Marketing"));
    graph.add_user("u5", person("Ed", "Fox", "Sales"));
    graph.set_manager("u2", Some("u1"));
    graph.set_manager("u3", Some("u1"));
    graph.add_group("g1", "SocialTalent");
    graph.add_group("g2", "LP Onboarding");
    graph.add_group("g3", "All Staff");
    for user in ["u1", "u2", "u3", "u4"] {
        graph.add_member("g1", user);
    }
    graph.add_member("g2", "u2");
    graph.add_member("g3", "u5");
    graph
}

fn entra_source(graph: &FakeGraph, credential: &str) -> String {
    format!(
        "[source]\nkind = \"entra\"\n[source.entra]\ntenant_id = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n{credential}\ngraph_url = \"{url}\"\nlogin_url = \"{url}\"\ngroups = [\"SocialTalent\", \"LP *\"]\n",
        graph.tenant(),
        url = graph.url
    )
}

fn workspace(graph: &FakeGraph) -> Workspace {
    let mut ws = Workspace::new();
    ws.source = entra_source(graph, &format!("client_secret = \"{SECRET}\""));
    ws
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
async fn first_run_then_incremental_runs_follow_entra_id() {
    let graph = tenant().await;
    let ws = workspace(&graph);
    let first = ws.sync(&[], 0);
    assert_eq!(first["source"]["kind"], "entra");
    assert_eq!(first["source"]["full"], true);
    assert_eq!(
        writes(&first),
        pairs(&[
            ("create", "u1"),
            ("create", "u2"),
            ("create", "u3"),
            ("create", "u4")
        ])
    );
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@contoso.example")
        .await
        .expect("created");
    assert_eq!(zoe["externalId"], "u2");
    assert_eq!(zoe[EXT_URN]["reportsTo"], "ana.li@contoso.example");
    assert_eq!(zoe[EXT_URN]["learningPaths"], json!(["Onboarding"]));

    // Nothing changed: one round trip per delta link.
    graph.clear_requests();
    let quiet = ws.sync(&[], 0);
    assert_eq!(quiet["source"]["full"], false);
    assert_eq!(writes(&quiet), vec![]);
    assert!(
        graph.count("/v1.0/users") <= 2,
        "{:?}",
        graph
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );

    // A hire, a change, a disable, a delete, a manager change and a group change.
    graph.add_user("u6", person("Di", "Eng", "Sales"));
    graph.add_member("g1", "u6");
    graph.update_user("u3", json!({"department": "Marketing"}));
    graph.update_user("u4", json!({"accountEnabled": false}));
    graph.hard_delete("u1");
    graph.set_manager("u2", Some("u3"));
    graph.add_member("g2", "u3");
    graph.clear_requests();
    let changed = ws.sync(&[], 0);
    assert_eq!(changed["source"]["full"], false);
    assert_eq!(
        writes(&changed),
        pairs(&[
            ("create", "u6"),
            ("deactivate", "u1"),
            ("deactivate", "u4"),
            ("update", "u2"),
            ("update", "u3"),
        ])
    );
    assert!(
        graph.count("/v1.0/users") <= 2,
        "at most 2 requests to Graph for users"
    );
    let bo = ws
        .peer
        .user_by_name("bo.berg@contoso.example")
        .await
        .expect("exists");
    assert_eq!(bo[EXT_URN]["coreTeam"], "Marketing");
    assert_eq!(bo[EXT_URN]["learningPaths"], json!(["Onboarding"]));
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@contoso.example")
        .await
        .expect("exists");
    assert_eq!(zoe[EXT_URN]["reportsTo"], "bo.berg@contoso.example");
    assert!(
        ws.peer
            .user_by_name("cy.dahl@contoso.example")
            .await
            .is_none(),
        "disabled"
    );
    assert!(
        ws.peer
            .user_by_name("ana.li@contoso.example")
            .await
            .is_none(),
        "deleted"
    );

    // Soft delete, then restore: deactivated, then reactivated.
    graph.soft_delete("u6");
    assert_eq!(writes(&ws.sync(&[], 0)), pairs(&[("deactivate", "u6")]));
    graph.restore("u6");
    assert_eq!(writes(&ws.sync(&[], 0)), pairs(&[("reactivate", "u6")]));
    assert_eq!(writes(&ws.sync(&[], 0)), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_delta_token_starts_a_full_read_without_duplicates() {
    for mode in [ExpiryMode::BadRequest400, ExpiryMode::Gone410] {
        let graph = tenant().await;
        let ws = workspace(&graph);
        ws.sync(&[], 0);
        graph.update_user("u2", json!({"jobTitle": "Lead Recruiter"}));
        graph.expire_delta_tokens(mode);
        let report = ws.sync(&[], 0);
        assert_eq!(
            report["source"]["full"], true,
            "{mode:?}: fell back to a full read"
        );
        assert_eq!(writes(&report), pairs(&[("update", "u2")]), "{mode:?}");
        assert!(
            report["warnings"]
                .to_string()
                .contains("delta link had expired"),
            "{mode:?}: {}",
            report["warnings"]
        );
        assert_eq!(ws.peer.users().await.len(), 4, "{mode:?}: no duplicates");
        // The new links work again.
        let next = ws.sync(&[], 0);
        assert_eq!(next["source"]["full"], false);
        assert_eq!(writes(&next), vec![]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_credentials_and_throttling() {
    let graph = tenant().await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/entra");
    let certificate = std::fs::read_to_string(fixtures.join("cert.pem")).expect("fixture");
    graph.register_app_certificate(CLIENT_ID, &certificate);
    let mut ws = Workspace::new();
    ws.source = entra_source(
        &graph,
        &format!(
            "certificate_file = \"{}\"\nprivate_key_file = \"{}\"",
            fixtures.join("cert.pem").display(),
            fixtures.join("key.pem").display()
        ),
    );
    graph.throttle_next("/v1.0/users/delta", 2, "0.4");
    let started = std::time::Instant::now();
    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["create"], 4);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(800),
        "honoured Retry-After"
    );
    assert_eq!(graph.tokens_issued(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_page_aborts_before_any_write_and_errors_name_the_tenant() {
    let graph = tenant().await;
    graph.set_page_size(2);
    let ws = workspace(&graph);
    graph.fail_next("/v1.0/users/delta", 500, 20);
    let run = ws.run(&["sync", "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("tenant-1"), "{}", run.stderr);
    assert!(ws.peer.users().await.is_empty(), "nothing written");

    let mut bad = workspace(&graph);
    bad.source = entra_source(&graph, "client_secret = \"wrong-secret-value\"");
    let run = bad.run(&["check-config", "--connect"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("AADSTS7000215"), "{}", run.stderr);
    assert!(run.stderr.contains(CLIENT_ID), "{}", run.stderr);
    assert!(
        !run.stderr.contains("wrong-secret-value"),
        "never prints the secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_check_config_and_write_back_work_against_graph() {
    let graph = tenant().await;
    let mut ws = workspace(&graph);
    for wanted in [
        "u2",
        "zoe.odegard@contoso.example",
        "ZOE.ODEGARD@contoso.example",
    ] {
        let preview = ws.run(&["preview", wanted, "--output", "json"]);
        assert_eq!(preview.code, 0, "{wanted}: {}", preview.stderr);
        assert_eq!(preview.json["user"]["id"], "u2");
        assert_eq!(
            preview.json["user"]["groups"],
            json!(["LP Onboarding", "SocialTalent"])
        );
        assert_eq!(
            preview.json["payload"][EXT_URN]["reportsTo"],
            "ana.li@contoso.example"
        );
    }
    let check = ws.run(&["check-config", "--connect"]);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);

    ws.source.push_str("\n[writeback]\nattribute = \"extension_0123456789abcdef0123456789abcdef_socialTalentId\"\n");
    graph.set_on_premises_sync("u3", true);
    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["writebacks"], 4, "{report:#}");
    let zoe_id = ws
        .peer
        .user_by_name("zoe.odegard@contoso.example")
        .await
        .expect("created")["id"]
        .clone();
    assert_eq!(
        graph.user("u2").expect("user")["extension_0123456789abcdef0123456789abcdef_socialTalentId"],
        zoe_id
    );
    assert_eq!(
        ws.sync(&[], 0)["summary"]["writebacks"],
        0,
        "only when it differs"
    );

    // onPremisesExtensionAttributes cannot be written for a user synced from AD: say what to do.
    let mut on_prem = workspace(&graph);
    on_prem.source.push_str(
        "\n[writeback]\nattribute = \"onPremisesExtensionAttributes.extensionAttribute1\"\n",
    );
    let report = on_prem.sync(&[], 1);
    let failed: Vec<&Value> = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|action| action["op"] == "writeback" && action["result"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{report:#}");
    assert_eq!(failed[0]["idp_id"], "u3");
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("directory extension")),
        "{}",
        failed[0]
    );
}

/// Group changes of every kind reach the users they affect in the same incremental run: a
/// rename (of a learning-path group, and of a group into the filter), a deletion, and a manager
/// change whose `manager@delta` lists the old manager's removal after the new manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_and_deleted_groups_and_manager_changes_reach_their_users() {
    let graph = tenant().await;
    graph.add_group("g4", "Security Awareness");
    graph.add_member("g4", "u3");
    graph.add_member("g2", "u4");
    let ws = workspace(&graph);
    ws.sync(&[], 0);
    let learning_paths = |user: Value| user[EXT_URN]["learningPaths"].clone();

    // "LP Onboarding" → "LP Welcome": its members' learning path follows, without a request
    // per user and without any member changing.
    graph.rename_group("g2", "LP Welcome");
    graph.clear_requests();
    let renamed = ws.sync(&[], 0);
    assert_eq!(
        writes(&renamed),
        pairs(&[("update", "u2"), ("update", "u4")]),
        "{renamed:#}"
    );
    let zoe = renamed["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["idp_id"] == "u2")
        .expect("Zoë's update")
        .clone();
    assert_eq!(zoe["reason"], "group renamed: LP Onboarding → LP Welcome");
    let per_user: Vec<String> = graph
        .requests()
        .iter()
        .map(|request| request.path.clone())
        .filter(|path| path.starts_with("/v1.0/users/") && !path.starts_with("/v1.0/users/delta"))
        .collect();
    assert_eq!(per_user, Vec::<String>::new(), "no request per user");
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@contoso.example")
        .await
        .expect("exists");
    assert_eq!(learning_paths(zoe), json!(["Welcome"]));

    // A group renamed into the filter ("Security Awareness" → "LP Security"): its members are
    // read once and get the learning path.
    graph.rename_group("g4", "LP Security");
    let into_filter = ws.sync(&[], 0);
    assert_eq!(
        writes(&into_filter),
        pairs(&[("update", "u3")]),
        "{into_filter:#}"
    );
    let bo = ws
        .peer
        .user_by_name("bo.berg@contoso.example")
        .await
        .expect("exists");
    assert_eq!(learning_paths(bo), json!(["Security"]));

    // The group is deleted (`@removed`, no member list): its members lose the learning path.
    graph.delete_group("g2");
    let deleted = ws.sync(&[], 0);
    assert_eq!(
        writes(&deleted),
        pairs(&[("update", "u2"), ("update", "u4")]),
        "{deleted:#}"
    );
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@contoso.example")
        .await
        .expect("exists");
    assert!(zoe[EXT_URN].get("learningPaths").is_none(), "{zoe:#}");

    // A new manager listed before the old one's `@removed` entry: the new manager stands.
    graph.list_old_manager_last();
    graph.set_manager("u2", Some("u3"));
    let moved = ws.sync(&[], 0);
    assert_eq!(writes(&moved), pairs(&[("update", "u2")]), "{moved:#}");
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@contoso.example")
        .await
        .expect("exists");
    assert_eq!(zoe[EXT_URN]["reportsTo"], "bo.berg@contoso.example");
    assert_eq!(
        writes(&ws.sync(&[], 0)),
        vec![],
        "a sync right after a sync plans nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_longer_than_fifteen_minutes_fails_the_run_naming_its_end() {
    let graph = tenant().await;
    let ws = workspace(&graph);
    graph.throttle_next("/v1.0/users/delta", 1, "3600");
    let run = ws.run(&["sync", "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("3600 s, until") && run.stderr.contains("15 minutes"),
        "{}",
        run.stderr
    );
    assert!(ws.peer.users().await.is_empty(), "nothing was written");
}

/// A soft-deleted user keeps its group memberships in Graph (for a restore), so a later change
/// of one of its groups reaches it: it stays deactivated until it is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_change_does_not_bring_back_a_soft_deleted_user() {
    let graph = tenant().await;
    let ws = workspace(&graph);
    ws.sync(&[], 0);
    graph.soft_delete("u2");
    assert_eq!(writes(&ws.sync(&[], 0)), pairs(&[("deactivate", "u2")]));
    graph.rename_group("g2", "LP Welcome");
    let renamed = ws.sync(&[], 0);
    assert_eq!(writes(&renamed), vec![], "{renamed:#}");
    graph.restore("u2");
    let restored = ws.sync(&[], 0);
    assert_eq!(
        writes(&restored),
        pairs(&[("reactivate", "u2")]),
        "{restored:#}"
    );
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@contoso.example")
        .await
        .expect("reactivated");
    assert_eq!(zoe[EXT_URN]["learningPaths"], json!(["Welcome"]));
}
