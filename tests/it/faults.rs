//! Fault injection (issue 7): the real binary against a programmable SCIM server, the fake Okta
//! and the file source, with faults on each side, and a state directory that cannot be used.
//!
//! What every test checks, after the faulty run:
//! - the exit code SPEC §3 gives (0 done, 1 failed, 3 held);
//! - every user is accounted for: a write reported `ok` is done (a dry run against the healed
//!   server plans nothing for it), a write reported `failed` carries an error (and the dry run
//!   plans it again) — [`check_accounted`];
//! - a failure about the whole target (401/403, unreachable, retries exhausted) stops the run and
//!   blames nobody (no failure is counted for any user);
//! - a source or state that cannot be read stops the run before anything is sent (the SCIM
//!   server received no request at all);
//! - once healthy, the next runs converge: one account per person, none duplicated.
//!
//! The SCIM server here is `support::fake_scim::FakeScim`: users with `userName` uniqueness
//! (409), the `userName eq` filter used for adoption, PUT/PATCH/DELETE, and faults matched by
//! method, path and body: a status (5xx, 429 with or without `Retry-After`, 401/403, SCIM errors
//! with and without `detail`), or — after the operation was carried out — a slow answer, a
//! connection reset mid-body, or a body replaced by non-JSON or truncated JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::fake_okta::{FakeOkta, TestKey};
use crate::support::fake_scim::{BodyFault, FakeScim, FaultKind, scim_error};
use crate::support::{Workspace, ops};

const EMAIL_DOMAIN: &str = "fault.example";

// ─── Workspaces and checks ─────────────────────────────────────────────────────────────────────

/// `n` people in the SocialTalent group: `P00` manages everyone else.
fn people(n: usize) -> Value {
    Value::Array((0..n).map(person).collect())
}

fn person(i: usize) -> Value {
    json!({
        "id": format!("P{i:02}"),
        "login": email(i),
        "email": email(i),
        "given_name": "Pat",
        "family_name": format!("Number{i}"),
        "active": true,
        "department": "Sales",
        "title": "Recruiter",
        "manager_id": if i == 0 { Value::Null } else { json!("P00") },
        "groups": ["SocialTalent"],
        "isManager": i == 0,
    })
}

fn email(i: usize) -> String {
    format!("p{i:02}@{EMAIL_DOMAIN}")
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("P{i:02}")).collect()
}

/// A workspace whose target is `fake`, with `n` people in the directory.
fn workspace(fake: &FakeScim, n: usize, target_extra: &str) -> Workspace {
    let mut ws = Workspace::new();
    ws.peer.base_url = fake.base_url.clone();
    ws.peer.token = fake.token.clone();
    ws.target_extra = target_extra.to_owned();
    ws.write_directory(&people(n));
    ws
}

/// `sync --output json` with the exit code checked.
fn sync(ws: &Workspace, extra: &[&str], code: i32) -> Value {
    ws.sync(extra, code)
}

/// The write actions of an applied report: `(idp_id, Ok(()) | Err(error))`. Asserts that each
/// one carries a result, and that a failed one says why.
fn results(report: &Value) -> BTreeMap<String, Result<(), String>> {
    let mut out = BTreeMap::new();
    for action in report["actions"].as_array().expect("actions") {
        let op = action["op"].as_str().expect("op");
        if matches!(op, "skip" | "held") {
            continue;
        }
        let id = action["idp_id"].as_str().expect("idp_id").to_owned();
        let result = match action["result"].as_str() {
            Some("ok") => Ok(()),
            Some("failed") => {
                let error = action["error"].as_str().unwrap_or("").trim().to_owned();
                assert!(!error.is_empty(), "a failed action says nothing: {action}");
                Err(error)
            }
            other => panic!("an action without a result ({other:?}): {action}"),
        };
        out.insert(id, result);
    }
    out
}

fn failed_ids(report: &Value) -> BTreeSet<String> {
    results(report)
        .into_iter()
        .filter(|(_, result)| result.is_err())
        .map(|(id, _)| id)
        .collect()
}

/// Every user of a faulty run is accounted for: with the target healed, a dry run plans exactly
/// the users reported as failed (a user reported done is done), then a real run converges and
/// the next one plans nothing; SocialTalent ends with one account per expected person.
fn check_accounted(ws: &Workspace, fake: &FakeScim, faulty: &Value, expected: &[String]) {
    fake.heal();
    let failed = failed_ids(faulty);
    let dry = sync(ws, &["--dry-run"], 0);
    let planned: BTreeSet<String> = ops(&dry)
        .into_iter()
        .filter(|(op, _)| op != "skip")
        .map(|(_, id)| id)
        .collect();
    assert_eq!(
        planned, failed,
        "after healing, the dry run must plan exactly the users reported failed\nfaulty run: {faulty:#}\ndry run: {dry:#}"
    );
    let healed = sync(ws, &[], 0);
    assert!(
        failed_ids(&healed).is_empty(),
        "the healed run failed: {healed:#}"
    );
    let quiet = sync(ws, &["--dry-run"], 0);
    assert!(ops(&quiet).is_empty(), "not converged: {quiet:#}");
    fake.assert_accounts(expected);
}

/// The users `status` lists as failing.
fn failing_users(ws: &Workspace) -> BTreeMap<String, u64> {
    let status = ws.run(&["status", "--output", "json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    status.json["failing_users"]
        .as_array()
        .expect("failing_users")
        .iter()
        .map(|user| {
            (
                user["idp_id"].as_str().expect("idp_id").to_owned(),
                user["consecutive_failures"].as_u64().expect("count"),
            )
        })
        .collect()
}

/// A run stopped by a failure of the whole target: exit 1, `stopped` says why, every write
/// failed or was not sent, and nobody's failure count went up.
fn assert_stopped_without_blame(ws: &Workspace, report: &Value, why: &str) {
    let stopped = report["stopped"]
        .as_str()
        .unwrap_or_else(|| panic!("not stopped: {report:#}"));
    assert!(
        stopped.contains(why),
        "stopped because {stopped:?}, expected {why:?}"
    );
    assert!(
        failing_users(ws).is_empty(),
        "a systemic failure was blamed on users"
    );
}

// ─── Target faults ─────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_server_errors_is_waited_out_and_the_run_completes() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 8, "");
    // Four creates meet 500, 502 (an HTML page from a proxy), 503 (with Retry-After) and 504:
    // each is retried once.
    for (i, status, retry_after) in [
        (1, 500, None),
        (2, 502, None),
        (3, 503, Some("0.1")),
        (4, 504, None),
    ] {
        fake.fault(
            Some("POST"),
            Some(&email(i)),
            1,
            FaultKind::Status {
                status,
                headers: retry_after
                    .map(|r| ("retry-after", r.to_owned()))
                    .into_iter()
                    .collect(),
                body: if status == 502 {
                    "<html><body>Bad gateway</body></html>".into()
                } else {
                    scim_error(status, None, None).to_string()
                },
            },
        );
    }
    let report = sync(&ws, &[], 0);
    assert!(failed_ids(&report).is_empty(), "{report:#}");
    assert_eq!(
        fake.count("POST"),
        8 + 4,
        "each failed POST was sent once more"
    );
    check_accounted(&ws, &fake, &report, &ids(8));
}

/// The executor records confirmed writes in batches (of 64): across several batches, with
/// refused users among them, every user reported done is recorded and nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_several_recording_batches_records_every_confirmed_write() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 150, "max_in_flight = 8");
    for i in [10, 70, 130] {
        fake.fault(
            Some("POST"),
            Some(&email(i)),
            1,
            FaultKind::Status {
                status: 400,
                headers: vec![],
                body: scim_error(400, Some("invalidValue"), Some("refused for the test"))
                    .to_string(),
            },
        );
    }
    let report = sync(&ws, &[], 1);
    let failed = failed_ids(&report);
    assert_eq!(
        failed,
        ["P10", "P70", "P130"].map(str::to_owned).into(),
        "{report:#}"
    );
    assert_eq!(fake.users().len(), 147);
    check_accounted(&ws, &fake, &report, &ids(150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_that_outlast_the_retries_stop_the_run_and_blame_nobody() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 6, "max_retries = 2");
    fake.fail_all(503, vec![("retry-after", "0.05".into())]);
    let report = sync(&ws, &[], 1);
    assert_stopped_without_blame(&ws, &report, "unavailable (503) after 3 attempts");
    // The manager's create (wave 0) was tried three times; its reports were never sent.
    assert_eq!(fake.count("POST"), 3);
    assert_eq!(failed_ids(&report).len(), 6);
    check_accounted(&ws, &fake, &report, &ids(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_with_retry_after_is_waited_out() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 6, "max_retries = 5\nmax_in_flight = 2");
    fake.fault(
        None,
        None,
        5,
        FaultKind::Status {
            status: 429,
            headers: vec![("retry-after", "0.3".into())],
            body: scim_error(429, None, Some("Too many requests")).to_string(),
        },
    );
    let started = Instant::now();
    let report = sync(&ws, &[], 0);
    assert!(failed_ids(&report).is_empty(), "{report:#}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "Retry-After was not honoured"
    );
    assert_eq!(fake.count("POST"), 6 + 5);
    check_accounted(&ws, &fake, &report, &ids(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_without_retry_after_backs_off_then_completes() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 5, "max_retries = 3");
    // No Retry-After, one that does not parse, and an HTTP date in the past: each is a plain
    // backoff (or no wait at all), never an error.
    for retry_after in [
        None,
        Some("in a while"),
        Some("Wed, 21 Oct 2015 07:28:00 GMT"),
    ] {
        fake.fault(
            Some("POST"),
            None,
            1,
            FaultKind::Status {
                status: 429,
                headers: retry_after
                    .map(|value| ("retry-after", value.to_owned()))
                    .into_iter()
                    .collect(),
                body: String::new(),
            },
        );
    }
    let report = sync(&ws, &[], 0);
    assert!(failed_ids(&report).is_empty(), "{report:#}");
    check_accounted(&ws, &fake, &report, &ids(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_429_storm_stops_the_run_and_blames_nobody() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 5, "max_retries = 1");
    // Without Retry-After first, then with one: both kinds end the run the same way.
    fake.fail_all(429, Vec::new());
    let report = sync(&ws, &[], 1);
    assert_stopped_without_blame(&ws, &report, "(429) after 2 attempts");
    fake.heal();
    fake.fail_all(429, vec![("retry-after", "0.05".into())]);
    let report = sync(&ws, &[], 1);
    assert_stopped_without_blame(&ws, &report, "(429) after 2 attempts");
    assert!(fake.users().is_empty());
    check_accounted(&ws, &fake, &report, &ids(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_timeout_is_retried_and_the_account_adopted() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 5, "timeout = \"1s\"");
    // SocialTalent creates P03 but answers after the timeout: the retry meets 409 and adopts.
    fake.fault(
        Some("POST"),
        Some(&email(3)),
        1,
        FaultKind::SlowAfterApply(Duration::from_millis(2500)),
    );
    let report = sync(&ws, &[], 0);
    assert!(failed_ids(&report).is_empty(), "{report:#}");
    let p03 = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["idp_id"] == "P03")
        .expect("P03");
    assert!(
        p03["note"].as_str().unwrap_or("").contains("adopted"),
        "{p03}"
    );
    check_accounted(&ws, &fake, &report, &ids(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_always_times_out_stops_the_run_and_nothing_is_duplicated() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 4, "timeout = \"1s\"\nmax_retries = 1");
    // Every write is carried out, but every answer comes too late.
    fake.fault(
        None,
        None,
        usize::MAX,
        FaultKind::SlowAfterApply(Duration::from_millis(1500)),
    );
    let report = sync(&ws, &[], 1);
    assert_stopped_without_blame(&ws, &report, "timed out");
    // The manager's account exists although the state does not know it: the next run adopts it.
    check_accounted(&ws, &fake, &report, &ids(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_answer_is_retried_for_create_update_and_deactivate() {
    let fake = FakeScim::start().await;
    let mut ws = workspace(&fake, 5, "");
    fake.fault(Some("POST"), Some(&email(2)), 1, FaultKind::ResetAfterApply);
    let report = sync(&ws, &[], 0);
    assert!(failed_ids(&report).is_empty(), "{report:#}");
    fake.assert_accounts(&ids(5));

    // An update whose answer is cut: PUT is idempotent, the retry succeeds.
    let mut directory = people(5);
    directory[1]["title"] = json!("Team Lead");
    ws.write_directory(&directory);
    fake.fault(Some("PUT"), Some(&email(1)), 1, FaultKind::ResetAfterApply);
    fake.clear_requests();
    let report = sync(&ws, &[], 0);
    assert_eq!(ops(&report), vec![("update".to_owned(), "P01".to_owned())]);
    assert!(failed_ids(&report).is_empty(), "{report:#}");
    assert_eq!(fake.count("PUT"), 2);

    // A deactivation whose answer is cut: the retry meets 404, which counts as done.
    directory[4]["active"] = json!(false);
    ws.write_directory(&directory);
    ws.sections = "[safety]\nmax_deactivations = 5\n".into();
    let gone = fake.id_of(&email(4));
    fake.fault(Some("DELETE"), Some(&gone), 1, FaultKind::ResetAfterApply);
    let report = sync(&ws, &[], 0);
    assert_eq!(
        ops(&report),
        vec![("deactivate".to_owned(), "P04".to_owned())]
    );
    assert!(failed_ids(&report).is_empty(), "{report:#}");
    check_accounted(&ws, &fake, &report, &ids(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_201_with_a_body_that_cannot_be_read_fails_that_user_and_the_next_run_adopts() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 6, "");
    fake.fault(
        Some("POST"),
        Some(&email(2)),
        1,
        FaultKind::BodyAfterApply {
            status: 201,
            body: BodyFault::Text("<html><body>Created</body></html>"),
        },
    );
    fake.fault(
        Some("POST"),
        Some(&email(4)),
        1,
        FaultKind::BodyAfterApply {
            status: 201,
            body: BodyFault::TruncatedJson,
        },
    );
    let report = sync(&ws, &[], 1);
    let results = results(&report);
    for id in ["P02", "P04"] {
        let error = results[id].as_ref().expect_err("failed");
        assert!(error.contains("cannot be read"), "{id}: {error}");
    }
    assert_eq!(
        failed_ids(&report).len(),
        2,
        "the others went on: {report:#}"
    );
    assert!(
        report.get("stopped").is_none(),
        "not a reason to stop the run"
    );
    assert_eq!(
        failing_users(&ws),
        BTreeMap::from([("P02".to_owned(), 1), ("P04".to_owned(), 1)])
    );
    // Both accounts exist; the next run's creates meet 409 and adopt them: no duplicates.
    check_accounted(&ws, &fake, &report, &ids(6));
    assert!(failing_users(&ws).is_empty(), "a success clears the count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_errors_with_and_without_detail_fail_only_that_user_and_say_why() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 7, "");
    let refuse = |i: usize, status: u16, body: String| {
        fake.fault(
            Some("POST"),
            Some(&email(i)),
            usize::MAX,
            FaultKind::Status {
                status,
                headers: Vec::new(),
                body,
            },
        );
    };
    refuse(
        1,
        400,
        scim_error(
            400,
            Some("invalidValue"),
            Some("coreTeam 'Sales' does not exist"),
        )
        .to_string(),
    );
    refuse(
        2,
        400,
        scim_error(400, Some("invalidSyntax"), None).to_string(),
    );
    refuse(3, 400, scim_error(400, None, None).to_string());
    refuse(4, 422, String::new());
    refuse(
        5,
        404,
        scim_error(404, None, Some("no such core team")).to_string(),
    );
    let report = sync(&ws, &[], 1);
    let results = results(&report);
    let error = |id: &str| results[id].clone().expect_err("failed");
    assert!(
        error("P01").contains("coreTeam 'Sales' does not exist"),
        "{}",
        error("P01")
    );
    assert!(error("P01").contains("(400)"), "{}", error("P01"));
    assert!(error("P02").contains("invalidSyntax"), "{}", error("P02"));
    assert!(
        error("P03").contains("no SCIM error detail"),
        "{}",
        error("P03")
    );
    assert!(error("P04").contains("Unprocessable"), "{}", error("P04"));
    assert!(
        error("P05").contains("no such core team"),
        "{}",
        error("P05")
    );
    assert!(
        results["P00"].is_ok() && results["P06"].is_ok(),
        "{report:#}"
    );
    assert!(
        report.get("stopped").is_none(),
        "a refused user does not stop the run"
    );
    let failing = failing_users(&ws);
    let refused: Vec<String> = (1..=5).map(|i| format!("P{i:02}")).collect();
    assert_eq!(failing.keys().cloned().collect::<Vec<_>>(), refused);
    assert!(failing.values().all(|count| *count == 1), "{failing:?}");
    // A second faulty run counts again, and sends nothing for the users already done.
    fake.clear_requests();
    let again = sync(&ws, &[], 1);
    assert_eq!(
        failed_ids(&again),
        refused.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert!(failing_users(&ws).values().all(|count| *count == 2));
    assert!(
        fake.requests()
            .iter()
            .all(|seen| [0, 6].iter().all(|i| !seen
                .body
                .contains(&format!("\"userName\":\"{}\"", email(*i))))),
        "done users were sent again"
    );
    check_accounted(&ws, &fake, &again, &ids(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_stop_the_run_at_once_and_blame_nobody() {
    for status in [401, 403] {
        let fake = FakeScim::start().await;
        let ws = workspace(&fake, 6, "");
        fake.fail_all(status, Vec::new());
        let run = ws.run(&["sync", "--output", "json"]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains("check target.token"), "{}", run.stderr);
        assert_stopped_without_blame(&ws, &run.json, &format!("({status})"));
        assert_eq!(fake.requests().len(), 1, "one refusal is enough to stop");
        check_accounted(&ws, &fake, &run.json, &ids(6));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_mid_run_stops_the_rest_and_keeps_what_was_done() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 8, "max_in_flight = 1");
    // Three writes go through, then the token stops working.
    fake.fault(
        Some("POST"),
        Some(&email(3)),
        usize::MAX,
        FaultKind::Status {
            status: 401,
            headers: Vec::new(),
            body: scim_error(401, None, Some("token revoked")).to_string(),
        },
    );
    let report = sync(&ws, &[], 1);
    assert_stopped_without_blame(&ws, &report, "token revoked");
    let results = results(&report);
    assert_eq!(
        results.values().filter(|r| r.is_ok()).count(),
        3,
        "{report:#}"
    );
    check_accounted(&ws, &fake, &report, &ids(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_stops_the_run_and_blames_nobody() {
    let fake = FakeScim::start().await;
    let mut ws = workspace(&fake, 4, "max_retries = 1");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    ws.peer.base_url = format!("http://127.0.0.1:{closed}/v2");
    let run = ws.run(&["sync", "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot reach SocialTalent"),
        "{}",
        run.stderr
    );
    assert_stopped_without_blame(&ws, &run.json, "cannot reach SocialTalent");
    ws.peer.base_url = fake.base_url.clone();
    check_accounted(&ws, &fake, &run.json, &ids(4));
}

// ─── Source faults ─────────────────────────────────────────────────────────────────────────────

/// An Okta org of `n` users (`00u0001`…) in three groups, the last one `LP Onboarding`.
async fn okta_org(n: usize) -> FakeOkta {
    let okta = FakeOkta::start().await;
    okta.add_group("00g1", "SocialTalent");
    okta.add_group("00g2", "Everyone");
    okta.add_group("00g3", "LP Onboarding");
    for i in 0..n {
        let id = format!("00u{i:04}");
        let address = format!("u{i:04}@okta.{EMAIL_DOMAIN}");
        okta.add_user(
            &id,
            "ACTIVE",
            json!({"login": address, "email": address, "firstName": "Okta", "lastName": format!("U{i}"),
                   "department": "Sales", "title": "Recruiter"}),
        );
        okta.add_member("00g1", &id);
        okta.add_member("00g2", &id);
        if i % 2 == 0 {
            okta.add_member("00g3", &id);
        }
    }
    okta
}

fn okta_workspace(okta: &FakeOkta, fake: &FakeScim, target_extra: &str) -> Workspace {
    let mut ws = workspace(fake, 0, target_extra);
    ws.source = format!(
        "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\ntoken = \"{}\"\n",
        okta.url,
        okta.api_token()
    );
    ws
}

/// Asserts that a run failed before anything was sent: exit 1, the message names `names`, and
/// SocialTalent received no request at all.
fn assert_failed_before_any_write(ws: &Workspace, fake: &FakeScim, names: &str) -> String {
    let run = ws.run(&["sync", "--output", "json"]);
    assert_eq!(
        run.code, 1,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains(names),
        "the message does not name {names:?}: {}",
        run.stderr
    );
    assert!(
        fake.requests().is_empty(),
        "SocialTalent was contacted: {:?}",
        fake.requests()
    );
    run.stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_okta_page_at_any_position_aborts_before_any_write() {
    // 450 users: three pages of /api/v1/users, then the groups list, then each group's members.
    let okta = okta_org(450).await;
    let fake = FakeScim::start().await;
    let ws = okta_workspace(&okta, &fake, "requests_per_second = 1000.0\nburst = 100");
    let users = "/api/v1/users";
    let last_members = "/api/v1/groups/00g3/users";
    type Inject = Box<dyn Fn(&FakeOkta)>;
    let cases: Vec<(&str, Inject)> = vec![
        (
            "first users page: 501",
            Box::new(move |o: &FakeOkta| o.fail_next(users, 501, 1)),
        ),
        (
            "middle users page: 400",
            Box::new(move |o: &FakeOkta| {
                o.delay_next(users, Duration::from_millis(1), 1);
                o.fail_next(users, 400, 1);
            }),
        ),
        (
            "last users page: 403",
            Box::new(move |o: &FakeOkta| {
                o.delay_next(users, Duration::from_millis(1), 2);
                o.fail_next(users, 403, 1);
            }),
        ),
        (
            "first users page: truncated JSON",
            Box::new(move |o: &FakeOkta| o.truncate_next_page(users)),
        ),
        (
            "groups list: 501",
            Box::new(|o: &FakeOkta| o.fail_next("/api/v1/groups", 501, 1)),
        ),
        (
            "last group's members: truncated JSON",
            Box::new(move |o: &FakeOkta| o.truncate_next_page(last_members)),
        ),
    ];
    for (what, inject) in cases {
        okta.clear_requests();
        inject(&okta);
        let stderr = assert_failed_before_any_write(&ws, &fake, &okta.url);
        assert!(okta.count(users) >= 1, "{what}: Okta was not read");
        let status = ws.run(&["status", "--output", "json"]);
        assert_eq!(
            status.json["users"]["active"], 0,
            "{what}: the state recorded users"
        );
        assert_eq!(
            status.json["last_runs"][0]["outcome"], "failed",
            "{what}: {stderr}"
        );
    }
    // Healthy again (but for one page whose body is cut mid-stream, which is retried): one run
    // provisions everybody.
    okta.abort_next_page(last_members);
    let report = sync(&ws, &[], 0);
    assert_eq!(report["summary"]["create"], 450);
    assert_eq!(fake.users().len(), 450);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_in_okta_profiles_skip_those_users_and_the_others_go_on() {
    let okta = okta_org(3).await;
    okta.add_user(
        "00ubad1",
        "ACTIVE",
        json!({"login": ["a", "b"], "email": "bad1@okta.fault.example", "department": "Sales"}),
    );
    okta.add_user(
        "00ubad2",
        "ACTIVE",
        json!({"login": "bad2@okta.fault.example", "email": {"value": "x"}, "department": "Sales"}),
    );
    okta.add_user("00ubad3", "ACTIVE", json!({"login": "bad3@okta.fault.example", "email": "bad3@okta.fault.example", "department": true}));
    for id in ["00ubad1", "00ubad2", "00ubad3"] {
        okta.add_member("00g1", id);
    }
    let fake = FakeScim::start().await;
    let ws = okta_workspace(&okta, &fake, "");
    let report = sync(&ws, &[], 0);
    let skipped: BTreeMap<String, String> = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|action| action["op"] == "skip")
        .map(|action| {
            (
                action["idp_id"].as_str().unwrap_or("").to_owned(),
                action["error"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        skipped.keys().cloned().collect::<Vec<_>>(),
        ["00ubad1", "00ubad2", "00ubad3"],
        "{report:#}"
    );
    assert!(skipped["00ubad1"].contains("profile.login"), "{skipped:?}");
    assert!(skipped["00ubad2"].contains("profile.email"), "{skipped:?}");
    assert!(
        skipped["00ubad3"].contains("profile.department"),
        "{skipped:?}"
    );
    assert_eq!(report["summary"]["create"], 3);
    fake.assert_accounts(&["00u0000".into(), "00u0001".into(), "00u0002".into()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_file_records_are_skipped_and_reported_and_the_others_go_on() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 0, "");
    let mut directory = people(4);
    let bad = |id: &str, field: &str, value: Value| {
        let mut record = person(9);
        record["id"] = json!(id);
        record["email"] = json!(format!("{}@{EMAIL_DOMAIN}", id.to_lowercase()));
        record[field] = value;
        record
    };
    let array = directory.as_array_mut().expect("array");
    array.push(bad("B1", "groups", json!(5)));
    array.push(bad("B2", "active", json!("maybe")));
    array.push(bad("B3", "login", json!(["x"])));
    array.push(bad("B4", "groups", json!(["SocialTalent", 7])));
    array.push(bad("B5", "department", json!({"name": "Sales"})));
    ws.write_directory(&directory);
    let report = sync(&ws, &[], 0);
    let skipped: BTreeMap<String, String> = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|action| action["op"] == "skip")
        .map(|action| {
            (
                action["idp_id"].as_str().unwrap_or("").to_owned(),
                action["error"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        skipped.keys().cloned().collect::<Vec<_>>(),
        ["B1", "B2", "B3", "B4", "B5"],
        "{report:#}"
    );
    for (id, field) in [
        ("B1", "groups"),
        ("B2", "active"),
        ("B3", "login"),
        ("B4", "groups"),
        ("B5", "department"),
    ] {
        assert!(skipped[id].contains(field), "{id}: {}", skipped[id]);
    }
    fake.assert_accounts(&ids(4));

    // A provisioned user whose record breaks is not deactivated: the record protects its id.
    let mut directory = people(4);
    directory[2]["groups"] = json!(42);
    ws.write_directory(&directory);
    let report = sync(&ws, &[], 0);
    assert_eq!(ops(&report), vec![("skip".to_owned(), "P02".to_owned())]);

    // A record without a usable id (and a line that is not an object) could be anyone: every
    // deactivation of the run is held (exit 3) while the rest goes on.
    let mut directory = people(4);
    directory[3]["active"] = json!(false);
    let array = directory.as_array_mut().expect("array");
    array.push(json!({"id": {"oops": 1}, "email": "who@fault.example"}));
    array.push(json!(17));
    ws.write_directory(&directory);
    let report = sync(&ws, &[], 3);
    assert_eq!(report["summary"]["held"], 1, "{report:#}");
    assert_eq!(fake.count("DELETE"), 0);
    fake.assert_accounts(&ids(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_unparsable_export_aborts_before_any_write() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 0, "");
    let text = serde_json::to_string_pretty(&people(5)).expect("json");
    let path = ws.dir.path().join("directory.json");
    std::fs::write(&path, &text[..text.len() / 2]).expect("write");
    assert_failed_before_any_write(&ws, &fake, "directory.json");
    std::fs::write(&path, b"\xff\xfe[{\"id\": 1}]").expect("write");
    assert_failed_before_any_write(&ws, &fake, "not UTF-8");

    // The CSV export: a row with the wrong number of cells is rejected alone.
    let csv = ws.dir.path().join("directory.csv");
    std::fs::write(
        &csv,
        "id,email,department,active,groups\nC1,c1@fault.example,Sales,true,SocialTalent\nC2,c2@fault.example,Sales\nC3,c3@fault.example,Sales,perhaps,SocialTalent\nC4,c4@fault.example,Sales,true,SocialTalent\n",
    )
    .expect("write");
    let mut ws = ws;
    ws.source = "[source]\nkind = \"file\"\n[source.file]\npath = \"directory.csv\"\n".into();
    let report = sync(&ws, &[], 0);
    let skipped: Vec<String> = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|action| action["op"] == "skip")
        .map(|action| action["error"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(skipped.len(), 2, "{report:#}");
    assert_eq!(report["summary"]["create"], 2);
    fake.assert_accounts(&["C1".into(), "C4".into()]);
    // A CSV without an `id` column cannot be read at all.
    fake.clear_requests();
    std::fs::write(&csv, "C9,c9@fault.example\n").expect("write");
    assert_failed_before_any_write(&ws, &fake, "directory.csv");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_cycle_provisions_both_and_does_not_hang() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 0, "");
    let mut directory = people(4);
    directory[1]["manager_id"] = json!("P02");
    directory[2]["manager_id"] = json!("P01");
    directory[3]["manager_id"] = json!("P03");
    ws.write_directory(&directory);
    let started = Instant::now();
    let report = sync(&ws, &[], 0);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(report["summary"]["create"], 4, "{report:#}");
    let by_name = |i: usize| {
        fake.users()
            .into_iter()
            .find(|user| user["userName"] == email(i))
            .unwrap_or_else(|| panic!("no account for P{i:02}"))
    };
    let ext = "urn:ietf:params:scim:schemas:extension:socialtalent:2.0:User";
    assert_eq!(by_name(1)[ext]["reportsTo"], email(2));
    assert_eq!(by_name(2)[ext]["reportsTo"], email(1));
    assert!(
        by_name(3)[ext].get("reportsTo").is_none(),
        "a self-manager is ignored"
    );
    let quiet = sync(&ws, &["--dry-run"], 0);
    assert!(ops(&quiet).is_empty(), "{quiet:#}");

    // The same in Okta (managerId), full then incremental.
    let okta = okta_org(3).await;
    okta.update_profile("00u0001", json!({"managerId": "00u0002"}));
    okta.update_profile("00u0002", json!({"managerId": "00u0001"}));
    let fake = FakeScim::start().await;
    let ws = okta_workspace(&okta, &fake, "");
    assert_eq!(sync(&ws, &[], 0)["summary"]["create"], 3);
    okta.advance_clock(600);
    okta.update_profile("00u0001", json!({"title": "Lead"}));
    okta.advance_clock(60);
    let incremental = sync(&ws, &[], 0);
    assert_eq!(incremental["source"]["full"], false);
    assert_eq!(
        ops(&incremental),
        vec![("update".to_owned(), "00u0001".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_who_map_to_one_username_are_skipped_never_merged() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 0, "");
    let mut directory = people(4);
    // P03 has P02's address in other case: both would become p02@fault.example.
    directory[3]["email"] = json!(email(2).to_uppercase());
    ws.write_directory(&directory);
    let report = sync(&ws, &[], 0);
    let skipped: BTreeSet<String> = ops(&report)
        .into_iter()
        .filter(|(op, _)| op == "skip")
        .map(|(_, id)| id)
        .collect();
    assert_eq!(
        skipped,
        BTreeSet::from(["P02".to_owned(), "P03".to_owned()]),
        "{report:#}"
    );
    fake.assert_accounts(&["P00".into(), "P01".into()]);

    // Once one of them has the account, a newcomer claiming it is skipped and the owner kept.
    ws.write_directory(&people(4));
    sync(&ws, &[], 0);
    let mut directory = people(5);
    directory[4]["email"] = json!(email(2));
    ws.write_directory(&directory);
    let report = sync(&ws, &[], 0);
    assert_eq!(
        ops(&report),
        vec![("skip".to_owned(), "P04".to_owned())],
        "{report:#}"
    );
    fake.assert_accounts(&ids(4));

    // The same for two Okta users sharing an address.
    let okta = okta_org(2).await;
    okta.add_user("00udup", "ACTIVE", json!({"login": "dup@okta.fault.example", "email": "U0001@okta.fault.example", "department": "Sales"}));
    okta.add_member("00g1", "00udup");
    let fake = FakeScim::start().await;
    let ws = okta_workspace(&okta, &fake, "");
    let report = sync(&ws, &[], 0);
    let skipped: BTreeSet<String> = ops(&report)
        .into_iter()
        .filter(|(op, _)| op == "skip")
        .map(|(_, id)| id)
        .collect();
    assert_eq!(
        skipped,
        BTreeSet::from(["00u0001".to_owned(), "00udup".to_owned()])
    );
    fake.assert_accounts(&["00u0000".into()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_directory_holds_every_deactivation() {
    let fake = FakeScim::start().await;
    let ws = workspace(&fake, 5, "");
    sync(&ws, &[], 0);
    ws.write_directory(&json!([]));
    fake.clear_requests();
    let report = sync(&ws, &[], 3);
    assert_eq!(report["summary"]["held"], 5, "{report:#}");
    assert_eq!(report["summary"]["deactivate"], 0);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    let status = ws.run(&["status", "--output", "json"]);
    assert_eq!(
        status.json["held_deactivations"].as_array().map(Vec::len),
        Some(5)
    );
    fake.assert_accounts(&ids(5));

    // The same when Okta returns nobody.
    let okta = okta_org(3).await;
    let fake = FakeScim::start().await;
    let ws = okta_workspace(&okta, &fake, "");
    sync(&ws, &[], 0);
    for i in 0..3 {
        okta.delete_user(&format!("00u{i:04}"));
    }
    fake.clear_requests();
    let report = sync(&ws, &["--full"], 3);
    assert_eq!(report["summary"]["held"], 3, "{report:#}");
    assert!(fake.requests().is_empty());
}

fn service_app_source(okta: &FakeOkta) -> String {
    format!(
        "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\nclient_id = \"0oa-faults\"\nprivate_key_file = \"okta-key.pem\"\n",
        okta.url
    )
}

/// Runs `ws` while `during` runs on another thread (for faults timed between two pages).
fn run_while(ws: &Workspace, during: impl FnOnce() + Send) -> crate::support::Run {
    std::thread::scope(|scope| {
        let helper = scope.spawn(during);
        let run = ws.run(&["sync", "--output", "json"]);
        helper.join().expect("helper thread");
        run
    })
}

/// Waits until Okta has seen `n` requests to `path`.
fn wait_for(okta: &FakeOkta, path: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while okta.count(path) < n {
        assert!(
            Instant::now() < deadline,
            "Okta never saw request {n} to {path}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_okta_credential_that_stops_working_mid_read_fails_the_run_before_any_write() {
    let users = "/api/v1/users";
    // An API token revoked between the first and the second page.
    let okta = okta_org(250).await;
    let fake = FakeScim::start().await;
    let ws = okta_workspace(&okta, &fake, "");
    okta.delay_next(users, Duration::from_millis(1), 1);
    okta.fail_next(users, 401, 2);
    let stderr = assert_failed_before_any_write(&ws, &fake, "did not accept source.okta.token");
    assert!(
        !stderr.contains(okta.api_token()),
        "the token is printed: {stderr}"
    );

    // A service app's access token expiring between two pages is renewed once and the run goes on.
    let okta = okta_org(250).await;
    let key = TestKey::ec_p256();
    okta.register_service_app("0oa-faults", &key.public_pem, true);
    let fake = FakeScim::start().await;
    let mut ws = okta_workspace(&okta, &fake, "requests_per_second = 1000.0\nburst = 100");
    std::fs::write(ws.dir.path().join("okta-key.pem"), &key.private_pem).expect("write key");
    ws.source = service_app_source(&okta);
    okta.delay_next(users, Duration::from_millis(1000), 1);
    let run = run_while(&ws, || {
        wait_for(&okta, users, 1);
        okta.advance_clock(3600);
    });
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(okta.tokens_issued(), 2, "the expired token was renewed");
    assert_eq!(run.json["summary"]["create"], 250);

    // Expired, and the renewal refused (the app's key was rotated in Okta): no write at all.
    let okta = okta_org(250).await;
    okta.register_service_app("0oa-faults", &key.public_pem, true);
    let fake = FakeScim::start().await;
    let mut ws2 = okta_workspace(&okta, &fake, "");
    std::fs::write(ws2.dir.path().join("okta-key.pem"), &key.private_pem).expect("write key");
    ws2.source = service_app_source(&okta);
    okta.delay_next(users, Duration::from_millis(1000), 1);
    let other = TestKey::ec_p256();
    let run = run_while(&ws2, || {
        wait_for(&okta, users, 1);
        okta.register_service_app("0oa-faults", &other.public_pem, true);
        okta.advance_clock(3600);
    });
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("0oa-faults"),
        "names the service app: {}",
        run.stderr
    );
    assert!(fake.requests().is_empty(), "SocialTalent was contacted");
}

// ─── State faults ──────────────────────────────────────────────────────────────────────────────

/// The state cannot be used: exit 1, a message naming the state directory and `why`, and no
/// request to SocialTalent — for `sync`, `preview --apply` and the daemon.
fn assert_state_refused(ws: &Workspace, fake: &FakeScim, why: &str) {
    fake.clear_requests();
    let state = ws.state_path().display().to_string();
    for args in [
        vec!["sync", "--output", "json"],
        vec!["preview", "P01", "--apply"],
        vec!["run"],
    ] {
        let run = ws.run(&args);
        assert_eq!(
            run.code, 1,
            "{args:?}\nstdout: {}\nstderr: {}",
            run.stdout, run.stderr
        );
        assert!(
            run.stderr.contains(&state),
            "{args:?}: the message does not name {state}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(why),
            "{args:?}: the message does not say {why:?}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
    }
    assert!(
        fake.requests().is_empty(),
        "SocialTalent was contacted: {:?}",
        fake.requests()
    );
}

fn state_workspace(fake: &FakeScim) -> Workspace {
    let mut ws = workspace(fake, 3, "");
    // The daemon must not take a port other tests use, nor wait for a schedule.
    ws.sections = "[observability]\nlisten = \"\"\n".into();
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_that_cannot_be_opened_stops_before_any_write() {
    let fake = FakeScim::start().await;
    let ws = state_workspace(&fake);
    // A file where the directory should be.
    std::fs::write(ws.state_path(), "not a directory").expect("write");
    assert_state_refused(&ws, &fake, "cannot be used");
    std::fs::remove_file(ws.state_path()).expect("remove");

    // A file where sled's own directory should be.
    std::fs::create_dir(ws.state_path()).expect("mkdir");
    std::fs::write(ws.state_path().join("db"), "garbage").expect("write");
    assert_state_refused(&ws, &fake, "cannot be used");
    std::fs::remove_dir_all(ws.state_path()).expect("clean");

    // sled's files overwritten with garbage after a good run.
    sync(&ws, &[], 0);
    let db = ws.state_path().join("db");
    for entry in std::fs::read_dir(&db).expect("db dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::write(&path, vec![0xA5; 4096]).expect("overwrite");
        }
    }
    assert_state_refused(&ws, &fake, "cannot be used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_held_by_another_process_stops_before_any_write() {
    let fake = FakeScim::start().await;
    let ws = state_workspace(&fake);
    sync(&ws, &[], 0);
    // This test process holds the state, as a running daemon would.
    let held = socialtalent_sync::state::State::open(&ws.state_path()).expect("open the state");
    assert_state_refused(&ws, &fake, "in use by another socialtalent-sync process");
    drop(held);
    crate::support::wait_until_unlocked(&ws.state_path());
    let report = sync(&ws, &["--dry-run"], 0);
    assert!(ops(&report).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_from_a_newer_version_stops_before_any_write() {
    let fake = FakeScim::start().await;
    let ws = state_workspace(&fake);
    sync(&ws, &[], 0);
    {
        let state = socialtalent_sync::state::State::open(&ws.state_path()).expect("open");
        state.set_meta("format_version", "99").expect("set");
        state.flush().expect("flush");
    }
    crate::support::wait_until_unlocked(&ws.state_path());
    assert_state_refused(&ws, &fake, "format version 99");
    let status = ws.run(&["status"]);
    assert_eq!(status.code, 1, "{}", status.stderr);
    assert!(status.stderr.contains("upgrade"), "{}", status.stderr);

    // A version that is not a number at all.
    let ws = state_workspace(&fake);
    sync(&ws, &[], 0);
    {
        let state = socialtalent_sync::state::State::open(&ws.state_path()).expect("open");
        state.set_meta("format_version", "one").expect("set");
        state.flush().expect("flush");
    }
    crate::support::wait_until_unlocked(&ws.state_path());
    assert_state_refused(&ws, &fake, "not a number");
}
