//! Source-side benchmarks (`cargo bench --bench sources`): the Okta, Entra ID and OneLogin sources against
//! the test suite's fakes (built from the vendors' documented behaviour) on 127.0.0.1.
//!
//! For each source:
//! - `full read`: `source::read` of `BENCH_SOURCE_USERS` users (default 100,000), compared with a
//!   plain reqwest client downloading the same pages one after the other (Okta: following the
//!   `link: rel="next"` headers; Graph: following `@odata.nextLink`; OneLogin: `After-Cursor`
//!   sent back as `cursor=`, 100 per page with the source's `fields`). Target: ≤ 1.5× the plain
//!   download.
//! - `incremental`: after the full read is committed to a state, 10 users change; the next read
//!   is timed and its requests to the users endpoint counted. Targets: ≤ 3 (Okta, OneLogin) /
//!   ≤ 2 (Graph) requests, under 1 s. OneLogin's incremental read also re-reads the members of
//!   the roles the `groups` globs select: here three "LP *" roles of 100 members each, and two
//!   of the 10 changes are role assignments that do not move `updated_at`.
//! - `group rename`: a group holding a tenth of the users (10,000 of 100,000) is renamed; the
//!   next incremental read is timed, its requests per user counted (target: none), and the
//!   mapping and planning of the users it returns timed (target: ≤ 1 s).
//! - `graph nested`: Entra ID with 2,000 groups of 50 members besides a group holding a tenth
//!   of the users; that group is added to the selected group "SocialTalent" (10,000 users gain
//!   it), then one user is added to it. Each incremental read is timed and its requests counted
//!   (targets: one delta round each for users and groups, no request per user), and the
//!   mapping and planning of the 10,000 timed (target: ≤ 1 s).
//!
//! `BENCH_ONLY=okta,okta-rename,graph,graph-nested,onelogin` runs the cases it names (default:
//! all).
//!
//! It measures; it asserts nothing. One line per figure: `name value unit target PASS|MISS`.
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a 500-user smoke version.

#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "../tests/it/support/fake_graph.rs"]
mod fake_graph;
#[path = "../tests/it/support/fake_okta.rs"]
mod fake_okta;
#[path = "../tests/it/support/fake_onelogin.rs"]
mod fake_onelogin;
#[path = "../tests/it/support/quote.rs"]
mod quote;

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use socialtalent_sync::config::{Config, SourceConfig};
use socialtalent_sync::model::{CacheUpdate, SourceCommit};
use socialtalent_sync::source;
use socialtalent_sync::state::State;

use fake_graph::FakeGraph;
use fake_okta::FakeOkta;
use fake_onelogin::FakeOneLogin;

fn line(name: &str, value: f64, unit: &str, target: &str, pass: Option<bool>) {
    let verdict = match pass {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "INFO",
    };
    println!("{name:<44} {value:>12.3} {unit:<8} {target:<18} {verdict}");
}

/// The 1-minute load average (`/proc/loadavg`), printed with the figures: the machine is shared
/// and the fakes run on the same 2 cores as the reads, so timings depend on it.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn config(source: &str) -> Config {
    let text = format!(
        "{source}\n[target]\nbase_url = \"http://127.0.0.1:9/v2\"\ntoken = \"unused\"\n[mapping]\nuserName = \"{{{{ user.email }}}}\"\n"
    );
    Config::parse(Path::new("bench.toml"), &text).expect("a valid configuration")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn okta(users: usize, rounds: usize) {
    let okta = FakeOkta::start().await;
    for index in 0..users {
        okta.add_user(
            &format!("00u{index:08}"),
            "ACTIVE",
            json!({"login": format!("user{index}@example.com"), "email": format!("user{index}@example.com"),
                   "firstName": "Given", "lastName": format!("Family{index}"), "department": "Sales",
                   "title": "Recruiter", "employeeNumber": index.to_string(),
                   "managerId": format!("00u{:08}", index / 10)}),
        );
    }
    okta.add_group("00g1", "SocialTalent");
    // The directory predates the reads (as in an org): the watermark's overlap excludes it.
    okta.advance_clock(3600);
    let config = config(&format!(
        "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\ntoken = \"{}\"\ngroups = [\"NoGroupMatches\"]",
        okta.url,
        okta.api_token()
    ));
    assert!(
        matches!(config.source, SourceConfig::Okta(_)),
        "an Okta configuration"
    );

    let mut ours = Vec::new();
    let mut plain = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        let started = Instant::now();
        let read = source::read(&config.source, None, true)
            .await
            .expect("full read");
        ours.push(started.elapsed().as_secs_f64());
        assert_eq!(read.users.len(), users);
        last = Some(read);

        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let started = Instant::now();
        let mut url = format!("{}/api/v1/users?limit=200", okta.url);
        loop {
            let response = client
                .get(&url)
                .header("Authorization", format!("SSWS {}", okta.api_token()))
                .send()
                .await
                .expect("page");
            let next = response
                .headers()
                .get_all("link")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| v.contains("rel=\"next\""))
                .and_then(|v| v.split_once('<').and_then(|(_, r)| r.split_once('>')))
                .map(|(u, _)| u.to_owned());
            let _ = response.bytes().await.expect("body");
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
        let _ = client
            .get(format!("{}/api/v1/groups?limit=200", okta.url))
            .header("Authorization", format!("SSWS {}", okta.api_token()))
            .send()
            .await
            .expect("groups")
            .bytes()
            .await;
        plain.push(started.elapsed().as_secs_f64());
    }
    let (ours, plain) = (median(ours), median(plain));
    line("okta full read (s)", ours, "s", "", None);
    line(
        "okta plain download of the same pages (s)",
        plain,
        "s",
        "",
        None,
    );
    line(
        "okta full read / plain download",
        ours / plain,
        "ratio",
        "<= 1.5",
        Some(ours / plain <= 1.5),
    );

    // Incremental: 10 changes among all users.
    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("state");
    state
        .apply_source_commit(&last.expect("a read").commit)
        .expect("commit");
    okta.advance_clock(600);
    for index in 0..10 {
        okta.update_profile(
            &format!("00u{:08}", index * 997 % users),
            json!({"title": "Lead"}),
        );
    }
    okta.advance_clock(60);
    okta.clear_requests();
    let started = Instant::now();
    let read = source::read(&config.source, Some(&state), false)
        .await
        .expect("incremental read");
    let elapsed = started.elapsed().as_secs_f64();
    let requests = okta.count("/api/v1/users");
    assert!(!read.full);
    line(
        "okta incremental: users changed",
        read.users.len() as f64,
        "users",
        "10",
        Some(read.users.len() == 10),
    );
    line(
        "okta incremental: requests to /api/v1/users",
        requests as f64,
        "requests",
        "<= 3",
        Some(requests <= 3),
    );
    line(
        "okta incremental: time",
        elapsed,
        "s",
        "< 1",
        Some(elapsed < 1.0),
    );
}

/// A group with a tenth of the users is renamed: the incremental read finds its members in the
/// source cache (no request per user), and they are mapped and planned.
async fn okta_rename(users: usize) {
    let okta = FakeOkta::start().await;
    okta.add_group("00g1", "LP Security Awareness");
    for index in 0..users {
        let id = format!("00u{index:08}");
        okta.add_user(
            &id,
            "ACTIVE",
            json!({"login": format!("user{index}@example.com"), "email": format!("user{index}@example.com"),
                   "firstName": "Given", "lastName": format!("Family{index}"), "department": "Sales"}),
        );
        if index % 10 == 0 {
            okta.add_member("00g1", &id);
        }
    }
    okta.advance_clock(3600);
    let text = format!(
        "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\ntoken = \"{}\"\ngroups = [\"LP *\"]\n[target]\nbase_url = \"http://127.0.0.1:9/v2\"\ntoken = \"unused\"\n[mapping]\nuserName = \"{{{{ user.email }}}}\"\ncoreTeam = \"{{{{ user.department }}}}\"\nrole = \"user\"\nlearningPaths = {{ expr = \"user.groups | map('replace', 'LP ', '') | list\" }}\n",
        okta.url,
        okta.api_token()
    );
    let config = Config::parse(Path::new("bench.toml"), &text).expect("a valid configuration");
    let full = source::read(&config.source, None, true)
        .await
        .expect("full read");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("state");
    state.apply_source_commit(&full.commit).expect("commit");
    okta.advance_clock(600);
    okta.rename_group("00g1", "LP Security");
    okta.advance_clock(60);
    okta.clear_requests();
    let started = Instant::now();
    let read = source::read(&config.source, Some(&state), false)
        .await
        .expect("incremental read");
    let read_time = started.elapsed().as_secs_f64();
    let per_user = okta
        .requests()
        .iter()
        .filter(|request| request.path.starts_with("/api/v1/users/"))
        .count();
    let members = users.div_ceil(10);
    line(
        "okta rename: users re-derived",
        read.users.len() as f64,
        "users",
        &members.to_string(),
        Some(read.users.len() == members),
    );
    line(
        "okta rename: requests per user",
        per_user as f64,
        "requests",
        "0",
        Some(per_user == 0),
    );
    line("okta rename: incremental read", read_time, "s", "", None);
    let started = Instant::now();
    let planned =
        socialtalent_sync::sync::plan_read(&config, Some(&state), read, &Default::default())
            .expect("planned");
    let plan_time = started.elapsed().as_secs_f64();
    assert_eq!(planned.mapped.len(), members);
    line(
        "okta rename: mapping and planning",
        plan_time,
        "s",
        "<= 1",
        Some(plan_time <= 1.0),
    );
}

async fn graph(users: usize, rounds: usize) {
    let graph = FakeGraph::start().await;
    graph.register_app_secret("bench-app", "bench-secret");
    for index in 0..users {
        let upn = format!("user{index}@contoso.example");
        graph.add_user(
            &format!("u{index:08}"),
            json!({"userPrincipalName": upn, "mail": upn, "givenName": "Given",
                   "surname": format!("Family{index}"), "displayName": format!("User {index}"),
                   "accountEnabled": true, "department": "Sales", "jobTitle": "Recruiter",
                   "employeeId": index.to_string()}),
        );
    }
    let config = config(&format!(
        "[source]\nkind = \"entra\"\n[source.entra]\ntenant_id = \"{}\"\nclient_id = \"bench-app\"\nclient_secret = \"bench-secret\"\ngraph_url = \"{url}\"\nlogin_url = \"{url}\"\ngroups = [\"NoGroupMatches\"]",
        graph.tenant(),
        url = graph.url
    ));
    let SourceConfig::Entra(entra_config) = &config.source else {
        unreachable!("an Entra configuration")
    };
    let select = source::entra::select(entra_config);

    let mut ours = Vec::new();
    let mut plain = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        let started = Instant::now();
        let read = source::read(&config.source, None, true)
            .await
            .expect("full read");
        ours.push(started.elapsed().as_secs_f64());
        assert_eq!(read.users.len(), users);
        last = Some(read);

        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let token = graph.issue_token();
        let started = Instant::now();
        for first in [
            format!("{}/v1.0/users/delta?$select={select}", graph.url),
            format!(
                "{}/v1.0/groups/delta?$select=displayName,members",
                graph.url
            ),
        ] {
            let mut url = first;
            loop {
                let body = client
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("page")
                    .bytes()
                    .await
                    .expect("body");
                let page: Value = serde_json::from_slice(&body).expect("JSON page");
                match page.get("@odata.nextLink").and_then(Value::as_str) {
                    Some(next) => url = next.to_owned(),
                    None => break,
                }
            }
        }
        plain.push(started.elapsed().as_secs_f64());
    }
    let (ours, plain) = (median(ours), median(plain));
    line("graph full delta read (s)", ours, "s", "", None);
    line(
        "graph plain download of the same pages (s)",
        plain,
        "s",
        "",
        None,
    );
    line(
        "graph full read / plain download",
        ours / plain,
        "ratio",
        "<= 1.5",
        Some(ours / plain <= 1.5),
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("state");
    state
        .apply_source_commit(&last.expect("a read").commit)
        .expect("commit");
    for index in 0..10 {
        graph.update_user(
            &format!("u{:08}", index * 997 % users),
            json!({"jobTitle": "Lead"}),
        );
    }
    graph.clear_requests();
    let started = Instant::now();
    let read = source::read(&config.source, Some(&state), false)
        .await
        .expect("incremental read");
    let elapsed = started.elapsed().as_secs_f64();
    let requests = graph.count("/v1.0/users");
    assert!(!read.full);
    line(
        "graph incremental: users changed",
        read.users.len() as f64,
        "users",
        "10",
        Some(read.users.len() == 10),
    );
    line(
        "graph incremental: requests to /v1.0/users",
        requests as f64,
        "requests",
        "<= 2",
        Some(requests <= 2),
    );
    line(
        "graph incremental: time",
        elapsed,
        "s",
        "< 1",
        Some(elapsed < 1.0),
    );
}

async fn onelogin(users: usize, rounds: usize) {
    let onelogin = FakeOneLogin::start().await;
    for role in 1..=3u64 {
        onelogin.add_role(role, &format!("LP Path {role}"));
    }
    onelogin.add_role(9, "Everyone");
    onelogin.add_group(1, "Staff");
    for index in 0..users {
        let id = 10_000_000 + index as u64;
        // Three learning-path roles of 100 members each.
        let lp = (index < 300).then(|| (index / 100) as u64 + 1);
        let mut role_ids = vec![9];
        role_ids.extend(lp);
        onelogin.add_user(
            id,
            json!({
                "username": format!("user{index}"), "email": format!("user{index}@example.com"),
                "firstname": "Test", "lastname": format!("User {index}"), "department": "Sales",
                "title": "Engineer", "role_ids": role_ids, "group_id": 1,
                "manager_user_id": if index > 0 { Some(10_000_000) } else { None },
                "custom_attributes": {"employeenumber": format!("E{index}"), "costcenter": "CC-1"},
            }),
        );
    }
    onelogin.advance_clock(3600);
    // Three rounds of two full reads of 1,000 pages each exceed the default 5,000 an hour.
    onelogin.set_rate_limit(1_000_000);
    let config = config(&format!(
        "[source]\nkind = \"onelogin\"\n[source.onelogin]\napi_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\ngroups = [\"LP *\"]\nemployee_id_attribute = \"employeenumber\"",
        onelogin.url,
        fake_onelogin::CLIENT_ID,
        fake_onelogin::CLIENT_SECRET
    ));
    assert!(
        matches!(config.source, SourceConfig::OneLogin(_)),
        "a OneLogin configuration"
    );

    let mut ours = Vec::new();
    let mut plain = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        let started = Instant::now();
        let read = source::read(&config.source, None, true)
            .await
            .expect("full read");
        ours.push(started.elapsed().as_secs_f64());
        assert_eq!(read.users.len(), users);
        last = Some(read);

        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let started = Instant::now();
        let token: Value = client
            .post(format!("{}/auth/oauth2/v2/token", onelogin.url))
            .basic_auth(fake_onelogin::CLIENT_ID, Some(fake_onelogin::CLIENT_SECRET))
            .json(&json!({"grant_type": "client_credentials"}))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token JSON");
        let bearer = format!("Bearer {}", token["access_token"].as_str().expect("token"));
        let first = format!(
            "{}/api/2/users?limit=100&fields={}",
            onelogin.url,
            source::onelogin::FIELDS
        );
        let mut url = first.clone();
        loop {
            let response = client
                .get(&url)
                .header("Authorization", &bearer)
                .send()
                .await
                .expect("page");
            let next = response
                .headers()
                .get("after-cursor")
                .and_then(|v| v.to_str().ok())
                .map(|cursor| format!("{first}&cursor={cursor}"));
            let _ = response.bytes().await.expect("body");
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
        for path in ["/api/2/roles?limit=100", "/api/1/groups"] {
            let _ = client
                .get(format!("{}{path}", onelogin.url))
                .header("Authorization", &bearer)
                .send()
                .await
                .expect("list")
                .bytes()
                .await;
        }
        plain.push(started.elapsed().as_secs_f64());
    }
    let (ours, plain) = (median(ours), median(plain));
    line("onelogin full read (s)", ours, "s", "", None);
    line(
        "onelogin plain download of the same pages (s)",
        plain,
        "s",
        "",
        None,
    );
    line(
        "onelogin full read / plain download",
        ours / plain,
        "ratio",
        "<= 1.5",
        Some(ours / plain <= 1.5),
    );

    // Incremental: 8 profile changes and 2 role assignments among all users.
    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("state");
    state
        .apply_source_commit(&last.expect("a read").commit)
        .expect("commit");
    onelogin.advance_clock(600);
    for index in 0..8 {
        onelogin.update_user(
            10_000_000 + (index * 997 % users) as u64,
            json!({"title": "Lead"}),
        );
    }
    onelogin.assign_role(10_000_000 + (users as u64 - 1), 2);
    onelogin.assign_role(10_000_000 + (users as u64 - 2), 3);
    onelogin.advance_clock(60);
    onelogin.clear_requests();
    let started = Instant::now();
    let read = source::read(&config.source, Some(&state), false)
        .await
        .expect("incremental read");
    let elapsed = started.elapsed().as_secs_f64();
    let requests = onelogin.count("/api/2/users");
    assert!(!read.full);
    line(
        "onelogin incremental: users changed",
        read.users.len() as f64,
        "users",
        "10",
        Some(read.users.len() == 10),
    );
    line(
        "onelogin incremental: requests to /api/2/users",
        requests as f64,
        "requests",
        "<= 3",
        Some(requests <= 3),
    );
    line(
        "onelogin incremental: all requests",
        onelogin.requests().len() as f64,
        "requests",
        "",
        None,
    );
    line(
        "onelogin incremental: time",
        elapsed,
        "s",
        "< 1",
        Some(elapsed < 1.0),
    );
}

fn main() {
    let bench = std::env::args().any(|arg| arg == "--bench");
    let users = if bench {
        std::env::var("BENCH_SOURCE_USERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000)
    } else {
        println!("not run by `cargo bench`: smoke run with 500 users");
        500
    };
    let rounds = if bench { 3 } else { 1 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{:<44} {:>12} {:<8} {:<18} verdict",
        "figure", "value", "unit", "target"
    );
    line(
        "load average (1 min) at start",
        load_average(),
        "",
        "",
        None,
    );
    runtime.block_on(async {
        let started = Instant::now();
        // BENCH_ONLY=okta,okta-rename,graph,graph-nested,onelogin picks cases (default: all).
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let wanted =
            |name: &str| only.is_empty() || only.split(',').any(|case| case.trim() == name);
        if wanted("okta") {
            okta(users, rounds).await;
        }
        if wanted("okta-rename") {
            okta_rename(users).await;
        }
        if wanted("graph") {
            graph(users, rounds).await;
        }
        if wanted("graph-nested") {
            graph_nested(users).await;
        }
        if wanted("onelogin") {
            onelogin(users, rounds).await;
        }
        line(
            "source benchmarks wall time",
            started.elapsed().as_secs_f64(),
            "s",
            "",
            None,
        );
    });
    line("load average (1 min) at end", load_average(), "", "", None);
}

/// Entra ID with nested groups: a group holding a tenth of the users joins the selected group
/// (every one of its members gains "SocialTalent"), then one user joins that group. The reads
/// find the users in the cached membership graph (no request per user).
async fn graph_nested(users: usize) {
    let graph = FakeGraph::start().await;
    graph.register_app_secret("bench-app", "bench-secret");
    graph.add_group("g-st", "SocialTalent");
    graph.add_group("g-emea", "Sales EMEA");
    let other_groups = 2_000;
    for group in 0..other_groups {
        graph.add_group(&format!("g{group:05}"), &format!("Team {group}"));
    }
    for index in 0..users {
        let id = format!("u{index:08}");
        let upn = format!("user{index}@contoso.example");
        graph.add_user(
            &id,
            json!({"userPrincipalName": upn, "mail": upn, "givenName": "Given",
                   "surname": format!("Family{index}"), "displayName": format!("User {index}"),
                   "accountEnabled": true, "department": "Sales", "jobTitle": "Recruiter",
                   "employeeId": index.to_string()}),
        );
        if index % 10 == 0 {
            graph.add_member("g-emea", &id);
        } else if index % 10 == 1 {
            graph.add_member("g-st", &id);
        }
        // 2,000 teams of 50 (at 100,000 users), one team per user, some nested in others.
        graph.add_member(&format!("g{:05}", index % other_groups), &id);
    }
    for group in (0..other_groups).step_by(10) {
        graph.add_group_member(&format!("g{group:05}"), &format!("g{:05}", group + 1));
    }
    let text = format!(
        "[source]\nkind = \"entra\"\n[source.entra]\ntenant_id = \"{}\"\nclient_id = \"bench-app\"\nclient_secret = \"bench-secret\"\ngraph_url = \"{url}\"\nlogin_url = \"{url}\"\ngroups = [\"SocialTalent\", \"LP *\"]\n[target]\nbase_url = \"http://127.0.0.1:9/v2\"\ntoken = \"unused\"\n[scope]\nwhen = \"'SocialTalent' in user.groups\"\n[mapping]\nuserName = \"{{{{ user.email }}}}\"\ncoreTeam = \"{{{{ user.department }}}}\"\nrole = \"user\"\n",
        graph.tenant(),
        url = graph.url
    );
    let config = Config::parse(Path::new("bench.toml"), &text).expect("a valid configuration");
    let started = Instant::now();
    let full = source::read(&config.source, None, true)
        .await
        .expect("full read");
    line(
        "graph nested: full read (s)",
        started.elapsed().as_secs_f64(),
        "s",
        "",
        None,
    );
    let in_scope = full
        .users
        .iter()
        .filter(|user| user.groups.iter().any(|group| group == "SocialTalent"))
        .count();
    assert_eq!(in_scope, (0..users).filter(|index| index % 10 == 1).count());
    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("state");
    // The commit in two parts: the source cache (every user, as before nested groups), then
    // the membership graph and the cursors.
    let started = Instant::now();
    state
        .apply_source_commit(&SourceCommit {
            cache: full.commit.cache.clone(),
            ..SourceCommit::default()
        })
        .expect("commit");
    line(
        "graph nested: full commit, users cache (s)",
        started.elapsed().as_secs_f64(),
        "s",
        "",
        None,
    );
    let started = Instant::now();
    state
        .apply_source_commit(&SourceCommit {
            cache: CacheUpdate::Keep,
            ..full.commit.clone()
        })
        .expect("commit");
    line(
        "graph nested: full commit, graph (s)",
        started.elapsed().as_secs_f64(),
        "s",
        "",
        None,
    );

    // "Sales EMEA" joins "SocialTalent": a tenth of the users gain it.
    graph.add_group_member("g-st", "g-emea");
    graph.clear_requests();
    let started = Instant::now();
    let read = source::read(&config.source, Some(&state), false)
        .await
        .expect("incremental read");
    let read_time = started.elapsed().as_secs_f64();
    assert!(!read.full);
    let members = users.div_ceil(10);
    let requests = graph.requests().len();
    let per_user = graph
        .requests()
        .iter()
        .filter(|request| {
            request.path.starts_with("/v1.0/users/")
                && !request.path.starts_with("/v1.0/users/delta")
        })
        .count();
    line(
        "graph nested: users regrouped",
        read.users.len() as f64,
        "users",
        &members.to_string(),
        Some(read.users.len() == members),
    );
    line(
        "graph nested: requests (token + 2 deltas)",
        requests as f64,
        "requests",
        "<= 3",
        Some(requests <= 3),
    );
    line(
        "graph nested: requests per user",
        per_user as f64,
        "requests",
        "0",
        Some(per_user == 0),
    );
    line(
        "graph nested: incremental read (s)",
        read_time,
        "s",
        "",
        None,
    );
    let commit = read.commit.clone();
    let started = Instant::now();
    let planned =
        socialtalent_sync::sync::plan_read(&config, Some(&state), read, &Default::default())
            .expect("planned");
    let plan_time = started.elapsed().as_secs_f64();
    assert_eq!(planned.mapped.len(), members);
    line(
        "graph nested: mapping and planning",
        plan_time,
        "s",
        "<= 1",
        Some(plan_time <= 1.0),
    );
    let started = Instant::now();
    state.apply_source_commit(&commit).expect("commit");
    line(
        "graph nested: incremental commit (s)",
        started.elapsed().as_secs_f64(),
        "s",
        "",
        None,
    );

    // One user joins the nested group: one user regrouped.
    graph.add_member("g-emea", "u00000003");
    graph.clear_requests();
    let started = Instant::now();
    let read = source::read(&config.source, Some(&state), false)
        .await
        .expect("incremental read");
    let read_time = started.elapsed().as_secs_f64();
    let requests = graph.requests().len();
    line(
        "graph nested: one user joins, users read",
        read.users.len() as f64,
        "users",
        "1",
        Some(read.users.len() == 1),
    );
    line(
        "graph nested: one user joins, requests",
        requests as f64,
        "requests",
        "<= 3",
        Some(requests <= 3),
    );
    line(
        "graph nested: one user joins, read (s)",
        read_time,
        "s",
        "< 1",
        Some(read_time < 1.0),
    );
}
