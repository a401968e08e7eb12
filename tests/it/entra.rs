//! The Entra ID source end to end: the real binary reads the fake Microsoft Graph (built from
//! the documented behaviour) and writes to the real SCIM peer. First run, then incremental runs
//! for a hire, a change, a disable, a delete, a manager change, a group change, and expired
//! delta tokens of both kinds; certificate credentials; throttling; write-back.

use serde_json::{Value, json};

use crate::support::fake_graph::{ExpiryMode, FakeGraph};
use crate::support::peer::EXT_URN;
use crate::support::{Workspace, ops, wait_until_unlocked};

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

/// The reason of the action on `idp_id` in a report.
fn reason_of(report: &Value, idp_id: &str) -> String {
    report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["idp_id"] == idp_id)
        .unwrap_or_else(|| panic!("no action for {idp_id}: {report:#}"))["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The requests to Graph other than the two delta queries (and the token endpoint).
fn reads_besides_delta(graph: &FakeGraph) -> Vec<String> {
    graph
        .requests()
        .iter()
        .map(|request| request.path.clone())
        .filter(|path| {
            path.starts_with("/v1.0/")
                && !path.starts_with("/v1.0/users/delta")
                && !path.starts_with("/v1.0/groups/delta")
        })
        .collect()
}

/// The tenant with nested groups: "Sales EMEA" (u5) is a member of "SocialTalent"; "LP Cycle A"
/// (u7) and "LP Cycle B" are members of each other, and A is a member of "SocialTalent".
async fn nested_tenant() -> FakeGraph {
    let graph = tenant().await;
    graph.add_user("u7", person("Fay", "Gold", "Sales"));
    graph.add_group("g5", "Sales EMEA");
    graph.add_member("g5", "u5");
    graph.add_group_member("g1", "g5");
    graph.add_group("g6", "LP Cycle A");
    graph.add_group("g7", "LP Cycle B");
    graph.add_member("g6", "u7");
    graph.add_group_member("g6", "g7");
    graph.add_group_member("g7", "g6");
    graph.add_group_member("g1", "g6");
    graph
}

/// A user who is in "SocialTalent" only through "Sales EMEA" is in scope and created; a cycle
/// of groups ends, and its groups reach their members; `preview` reads the same through
/// `transitiveMemberOf`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_nested_groups_are_in_scope_and_cycles_end() {
    let graph = nested_tenant().await;
    let ws = workspace(&graph);
    let first = ws.sync(&[], 0);
    assert_eq!(
        writes(&first),
        pairs(&[
            ("create", "u1"),
            ("create", "u2"),
            ("create", "u3"),
            ("create", "u4"),
            ("create", "u5"),
            ("create", "u7"),
        ]),
        "{first:#}"
    );
    let ed = ws
        .peer
        .user_by_name("ed.fox@contoso.example")
        .await
        .expect("created through Sales EMEA");
    assert_eq!(ed["externalId"], "u5");
    let fay = ws
        .peer
        .user_by_name("fay.gold@contoso.example")
        .await
        .expect("created through the cycle");
    assert_eq!(
        fay[EXT_URN]["learningPaths"],
        json!(["Cycle A", "Cycle B"]),
        "{fay:#}"
    );

    let preview = ws.run(&["preview", "u7", "--output", "json"]);
    assert_eq!(preview.code, 0, "{}", preview.stderr);
    assert_eq!(
        preview.json["user"]["groups"],
        json!(["LP Cycle A", "LP Cycle B", "SocialTalent"])
    );
    assert!(
        graph.count("/v1.0/users/u7/transitiveMemberOf") >= 1,
        "{:?}",
        reads_besides_delta(&graph)
    );
    assert_eq!(
        writes(&ws.sync(&[], 0)),
        vec![],
        "a sync right after a sync plans nothing"
    );
}

/// Nested membership changes reach every user whose groups they change, in the same
/// incremental run, with the group change as the reason, and without a request per user: a
/// nested group gains a user; a group is added to "SocialTalent"; a group is added to and
/// removed from a learning-path group; a nested group leaves "SocialTalent"; a nested group is
/// renamed into the filter, then deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_group_changes_reach_their_users_in_the_same_incremental_run() {
    let graph = tenant().await;
    graph.add_user("u7", person("Fay", "Gold", "Sales"));
    graph.add_user("u8", person("Gus", "Hale", "Sales"));
    graph.add_group("g5", "Sales EMEA");
    graph.add_member("g5", "u5");
    graph.add_group_member("g1", "g5");
    graph.add_group("g6", "Sales APAC");
    graph.add_member("g6", "u8");
    let ws = workspace(&graph);
    let first = ws.sync(&[], 0);
    assert_eq!(first["summary"]["create"], 5, "{first:#}");
    let learning_paths = |user: Value| user[EXT_URN]["learningPaths"].clone();

    // A nested group gains a user: created.
    graph.add_member("g5", "u7");
    graph.clear_requests();
    let gained = ws.sync(&[], 0);
    assert_eq!(gained["source"]["full"], false);
    assert_eq!(writes(&gained), pairs(&[("create", "u7")]), "{gained:#}");
    assert_eq!(
        reason_of(&gained, "u7"),
        "group membership changed: added to Sales EMEA"
    );
    assert_eq!(reads_besides_delta(&graph), Vec::<String>::new());
    assert!(
        ws.peer
            .user_by_name("fay.gold@contoso.example")
            .await
            .is_some()
    );

    // A group is added to "SocialTalent": its members are created.
    graph.add_group_member("g1", "g6");
    graph.clear_requests();
    let added = ws.sync(&[], 0);
    assert_eq!(writes(&added), pairs(&[("create", "u8")]), "{added:#}");
    assert_eq!(
        reason_of(&added, "u8"),
        "group membership changed: Sales APAC added to SocialTalent"
    );
    assert_eq!(reads_besides_delta(&graph), Vec::<String>::new());

    // A learning path from a parent group reaches the child group's members, and leaves with it.
    graph.add_group_member("g2", "g5");
    let joined = ws.sync(&[], 0);
    assert_eq!(
        writes(&joined),
        pairs(&[("update", "u5"), ("update", "u7")]),
        "{joined:#}"
    );
    assert_eq!(
        reason_of(&joined, "u7"),
        "group membership changed: Sales EMEA added to LP Onboarding"
    );
    let fay = ws
        .peer
        .user_by_name("fay.gold@contoso.example")
        .await
        .expect("exists");
    assert_eq!(learning_paths(fay), json!(["Onboarding"]));
    graph.remove_group_member("g2", "g5");
    let left = ws.sync(&[], 0);
    assert_eq!(
        writes(&left),
        pairs(&[("update", "u5"), ("update", "u7")]),
        "{left:#}"
    );
    let fay = ws
        .peer
        .user_by_name("fay.gold@contoso.example")
        .await
        .expect("exists");
    assert!(fay[EXT_URN].get("learningPaths").is_none(), "{fay:#}");

    // The nested group leaves "SocialTalent": its members leave scope and are deactivated
    // (two, within the default limits).
    graph.remove_group_member("g1", "g5");
    let removed = ws.sync(&[], 0);
    assert_eq!(
        writes(&removed),
        pairs(&[("deactivate", "u5"), ("deactivate", "u7")]),
        "{removed:#}"
    );
    assert!(
        reason_of(&removed, "u5")
            .contains("group membership changed: Sales EMEA removed from SocialTalent"),
        "{removed:#}"
    );
    for gone in ["ed.fox@contoso.example", "fay.gold@contoso.example"] {
        let account = ws.peer.user_by_name(gone).await;
        assert!(
            account.as_ref().is_none_or(|a| a["active"] == false),
            "{gone}: {account:?}"
        );
    }

    // A nested group renamed into the filter: its members get the learning path.
    graph.rename_group("g6", "LP APAC");
    let renamed = ws.sync(&[], 0);
    assert_eq!(writes(&renamed), pairs(&[("update", "u8")]), "{renamed:#}");
    assert_eq!(
        reason_of(&renamed, "u8"),
        "group renamed: Sales APAC → LP APAC"
    );
    let gus = ws
        .peer
        .user_by_name("gus.hale@contoso.example")
        .await
        .expect("exists");
    assert_eq!(learning_paths(gus), json!(["APAC"]));

    // A group below it: its members get the learning path too.
    graph.add_group("g9", "APAC Sydney");
    graph.add_member("g9", "u4");
    graph.add_group_member("g6", "g9");
    let below = ws.sync(&[], 0);
    assert_eq!(writes(&below), pairs(&[("update", "u4")]), "{below:#}");
    assert_eq!(
        reason_of(&below, "u4"),
        "group membership changed: APAC Sydney added to LP APAC"
    );

    // The nested group is deleted: its members leave scope, and the members of the group below
    // it lose the learning path.
    graph.delete_group("g6");
    let deleted = ws.sync(&[], 0);
    assert_eq!(
        writes(&deleted),
        pairs(&[("deactivate", "u8"), ("update", "u4")]),
        "{deleted:#}"
    );
    assert!(
        reason_of(&deleted, "u8").contains("group deleted: LP APAC"),
        "{deleted:#}"
    );
    assert_eq!(reason_of(&deleted, "u4"), "group deleted: LP APAC");
    let cy = ws
        .peer
        .user_by_name("cy.dahl@contoso.example")
        .await
        .expect("exists");
    assert!(cy[EXT_URN].get("learningPaths").is_none(), "{cy:#}");
    assert_eq!(
        writes(&ws.sync(&[], 0)),
        vec![],
        "a sync right after a sync plans nothing"
    );
}

/// `nested_groups = false`: only direct members count, as before nested groups were read;
/// `preview` reads `memberOf`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nested_groups_only_direct_members_count() {
    let graph = nested_tenant().await;
    let mut ws = workspace(&graph);
    ws.source.push_str("nested_groups = false\n");
    let first = ws.sync(&[], 0);
    assert_eq!(
        writes(&first),
        pairs(&[
            ("create", "u1"),
            ("create", "u2"),
            ("create", "u3"),
            ("create", "u4"),
        ]),
        "{first:#}"
    );
    // A group added to "SocialTalent" changes nobody; a direct member does.
    graph.add_group("g8", "Sales APAC");
    graph.add_member("g8", "u7");
    graph.add_group_member("g1", "g8");
    graph.add_member("g1", "u5");
    let next = ws.sync(&[], 0);
    assert_eq!(writes(&next), pairs(&[("create", "u5")]), "{next:#}");

    let preview = ws.run(&["preview", "u7", "--output", "json"]);
    assert_eq!(preview.code, 0, "{}", preview.stderr);
    assert_eq!(preview.json["user"]["groups"], json!(["LP Cycle A"]));
    assert_eq!(graph.count("/v1.0/users/u7/transitiveMemberOf"), 0);
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

/// A state without the group membership cache, as the version before nested groups left it
/// (delta links and group names only), is read in full once, which brings in the members of
/// nested groups; so is a state whose cache was read with another `nested_groups` setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_without_the_membership_cache_is_read_in_full_once() {
    let graph = nested_tenant().await;
    let mut ws = workspace(&graph);
    ws.source.push_str("nested_groups = false\n");
    assert_eq!(ws.sync(&[], 0)["summary"]["create"], 4);
    {
        // The state has no way to delete a key; an unreadable header is read as a missing one.
        let state = socialtalent_sync::state::State::open(&ws.state_path()).expect("state");
        state
            .set_meta(socialtalent_sync::source::entra::GROUP_GRAPH_KEY, "")
            .expect("meta");
        state.flush().expect("flush");
    }
    wait_until_unlocked(&ws.state_path());
    ws.source = entra_source(&graph, &format!("client_secret = \"{SECRET}\""));
    let upgraded = ws.sync(&[], 0);
    assert_eq!(upgraded["source"]["full"], true, "{upgraded:#}");
    assert!(
        upgraded["warnings"]
            .to_string()
            .contains("group membership cache"),
        "{}",
        upgraded["warnings"]
    );
    assert_eq!(
        writes(&upgraded),
        pairs(&[("create", "u5"), ("create", "u7")]),
        "{upgraded:#}"
    );
    let next = ws.sync(&[], 0);
    assert_eq!(next["source"]["full"], false);
    assert_eq!(writes(&next), vec![]);

    // Back to direct members only: read in full once, and the nested groups' members leave.
    ws.source.push_str("nested_groups = false\n");
    let direct = ws.sync(&[], 0);
    assert_eq!(direct["source"]["full"], true, "{direct:#}");
    assert_eq!(
        writes(&direct),
        pairs(&[("deactivate", "u5"), ("deactivate", "u7")]),
        "{direct:#}"
    );
    assert_eq!(ws.sync(&[], 0)["source"]["full"], false);
}
