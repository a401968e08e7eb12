//! The daemon as a real process: a seconds-level schedule against the file source and the SCIM
//! peer, `/healthz`, `/livez`, `/metrics` and `/status`, SIGHUP with a good and a bad
//! configuration, SIGTERM during a run, a second daemon on the same state refused, commands
//! served through the control socket (held deactivations kept pending across incremental runs
//! and released by `approve`), and the watchdog withheld while a run makes no progress.

use std::os::unix::fs::PermissionsExt;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::fake_okta::FakeOkta;
use crate::support::{Workspace, person};

/// A free loopback port for the daemon's endpoint.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn daemon_workspace(schedule: &str, target_extra: &str) -> (Workspace, u16) {
    let mut ws = Workspace::new();
    let port = free_port();
    ws.sections = format!(
        "[schedule]\ncron = \"{schedule}\"\nfull_cron = \"0 0 3 * * *\"\n\n[observability]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    ws.target_extra = target_extra.to_owned();
    (ws, port)
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill failed");
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Polls `check` until it returns Some, or panics with the daemon's log after `within`.
async fn eventually<T>(
    ws: &Workspace,
    within: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; daemon log:\n{}",
            ws.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .ok()?
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_syncs_on_schedule_and_reports_health_and_metrics() {
    let (ws, port) = daemon_workspace("*/2 * * * * *", "");
    let mut daemon = Running {
        child: ws.spawn(&["run"]),
    };

    let health: Value = eventually(
        &ws,
        Duration::from_secs(30),
        "a healthy first run",
        async || {
            let (code, body) = get(port, "/healthz").await?;
            (code == 200).then(|| serde_json::from_str(&body).expect("JSON health"))
        },
    )
    .await;
    assert_eq!(
        health["last_run"]["full"], true,
        "the first run after start is full"
    );
    assert_eq!(ws.peer.users().await.len(), 21);

    let (_, metrics) = get(port, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("socialtalent_sync_runs_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("socialtalent_sync_actions_total{op=\"create\",result=\"ok\"} 21"),
        "{metrics}"
    );
    assert!(
        metrics.contains("socialtalent_sync_users{status=\"active\"} 21"),
        "{metrics}"
    );
    assert!(
        metrics.contains("socialtalent_sync_run_duration_seconds_count"),
        "{metrics}"
    );

    // A change in the directory reaches SocialTalent on a later tick.
    let mut directory = crate::support::example_directory();
    person(&mut directory, "E1009").insert("title".into(), json!("Team Lead"));
    ws.write_directory(&directory);
    eventually(
        &ws,
        Duration::from_secs(20),
        "the change to arrive",
        async || {
            let user = ws
                .peer
                .user_by_name("oliver.bennett@northwind.example")
                .await?;
            (user["title"] == "Team Lead").then_some(())
        },
    )
    .await;

    // `status` works while the daemon holds the state (through its control socket).
    let status = ws.run(&["status", "--output", "json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(status.json["users"]["active"], 21);
    // A `sync` by hand is a run of the daemon's, waited for, with its report and exit code.
    let served = ws.run(&["sync", "--output", "json"]);
    assert_eq!(served.code, 0, "{}\n{}", served.stderr, ws.daemon_log());
    assert_eq!(served.json["mode"], "applied");
    assert_eq!(served.json["summary"]["unchanged"], 21);
    // A second daemon on the same state cannot be served: it is refused at once, naming the
    // directory.
    let second = ws.run(&["run"]);
    assert_eq!(second.code, 1);
    assert!(
        second
            .stderr
            .contains("in use by another socialtalent-sync process"),
        "{}",
        second.stderr
    );
    assert!(
        second
            .stderr
            .contains(&ws.state_path().display().to_string()),
        "{}",
        second.stderr
    );

    signal(&daemon.child, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut daemon.child, Duration::from_secs(40)),
        Some(0),
        "{}",
        ws.daemon_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_good_configuration_and_keeps_the_old_one_otherwise() {
    let (mut ws, port) = daemon_workspace("*/2 * * * * *", "");
    let mut daemon = Running {
        child: ws.spawn(&["run"]),
    };
    eventually(&ws, Duration::from_secs(30), "the first run", async || {
        let (code, _) = get(port, "/healthz").await?;
        (code == 200).then_some(())
    })
    .await;

    // An invalid file: logged, the old configuration stays, the daemon stays healthy.
    std::fs::write(ws.config_path(), "[source\nkind = ").expect("write");
    signal(&daemon.child, libc::SIGHUP);
    eventually(
        &ws,
        Duration::from_secs(10),
        "the refusal to be logged",
        async || {
            ws.daemon_log()
                .contains("keeping the old one")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        get(port, "/healthz").await.map(|(code, _)| code),
        Some(200),
        "{}",
        ws.daemon_log()
    );
    assert!(
        daemon.child.try_wait().expect("wait").is_none(),
        "still running"
    );

    // A valid new mapping is used by the next run.
    ws.mapping = ws.mapping.replace(
        "title = \"{{ user.title }}\"",
        "title = \"{{ user.title }} (Northwind)\"",
    );
    std::fs::write(ws.config_path(), ws.config_text()).expect("write");
    signal(&daemon.child, libc::SIGHUP);
    eventually(
        &ws,
        Duration::from_secs(20),
        "the new mapping to be applied",
        async || {
            let user = ws
                .peer
                .user_by_name("zoe.odegard@northwind.example")
                .await?;
            (user["title"] == "Recruiter (Northwind)").then_some(())
        },
    )
    .await;
    assert!(ws.daemon_log().contains("Configuration reloaded."));

    signal(&daemon.child, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut daemon.child, Duration::from_secs(40)),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_run_finishes_in_flight_work_and_leaves_a_consistent_state() {
    // Slow enough that the first run is still sending when SIGTERM comes.
    let (ws, _port) = daemon_workspace(
        "0 0 * * * *",
        "requests_per_second = 3.0\nburst = 1\nmax_in_flight = 1",
    );
    let mut daemon = Running {
        child: ws.spawn(&["run"]),
    };
    eventually(
        &ws,
        Duration::from_secs(30),
        "the first creates",
        async || (ws.peer.users().await.len() >= 3).then_some(()),
    )
    .await;
    signal(&daemon.child, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut daemon.child, Duration::from_secs(40)),
        Some(0),
        "{}",
        ws.daemon_log()
    );
    let created = ws.peer.users().await.len();
    assert!(created < 21, "the run was cut short ({created} created)");

    // The state recorded every confirmed create: the next sync creates only the rest.
    let report = ws.sync(&[], 0);
    assert_eq!(
        report["summary"]["create"].as_u64().expect("count") as usize,
        21 - created,
        "{}",
        ws.daemon_log()
    );
    assert_eq!(
        ws.peer.users().await.len(),
        21,
        "no duplicates, nothing lost"
    );
}

/// A small Okta org: four active people in the SocialTalent group.
async fn okta_org() -> FakeOkta {
    let okta = FakeOkta::start().await;
    for (id, first, last) in [
        ("00u1", "Ana", "Li"),
        ("00u2", "Zoe", "Odegard"),
        ("00u3", "Bo", "Berg"),
        ("00u4", "Cy", "Dahl"),
    ] {
        let email = format!(
            "{}.{}@northwind.example",
            first.to_lowercase(),
            last.to_lowercase()
        );
        okta.add_user(
            id,
            "ACTIVE",
            json!({
                "login": email, "email": email, "firstName": first, "lastName": last,
                "department": "Sales", "title": "Recruiter",
            }),
        );
    }
    okta.add_group("00g1", "SocialTalent");
    for id in ["00u1", "00u2", "00u3", "00u4"] {
        okta.add_member("00g1", id);
    }
    okta
}

fn held_ids(value: &Value) -> Vec<String> {
    let mut ids: Vec<String> = value
        .as_array()
        .unwrap_or_else(|| panic!("a list of holds: {value}"))
        .iter()
        .map(|entry| entry["idp_id"].as_str().expect("idp_id").to_owned())
        .collect();
    ids.sort();
    ids
}

fn op_of(report: &Value, idp_id: &str) -> (String, String) {
    let action = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["idp_id"] == idp_id)
        .unwrap_or_else(|| panic!("no action for {idp_id}: {report}"));
    (
        action["op"].as_str().unwrap_or_default().to_owned(),
        action["result"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_deactivations_stay_pending_across_incremental_runs_until_approve_releases_them() {
    let okta = okta_org().await;
    let (mut ws, port) = daemon_workspace("*/2 * * * * *", "");
    ws.source = format!(
        "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\ntoken = \"{}\"\ngroups = [\"SocialTalent\"]\n",
        okta.url,
        okta.api_token()
    );
    ws.sections
        .push_str("\n[safety]\nmax_deactivations = 0\nmax_deactivation_percent = 0.0\n");
    let mut daemon = Running {
        child: ws.spawn(&["run"]),
    };
    eventually(&ws, Duration::from_secs(30), "the first run", async || {
        let (code, _) = get(port, "/healthz").await?;
        (code == 200 && ws.peer.users().await.len() == 4).then_some(())
    })
    .await;

    // Two people are deleted in Okta: only a full read sees it, and the limits hold both.
    okta.delete_user("00u3");
    okta.delete_user("00u4");
    let held = ws.run(&["sync", "--full", "--output", "json"]);
    assert_eq!(held.code, 3, "{}\n{}", held.stderr, ws.daemon_log());
    assert_eq!(held.json["mode"], "applied");
    assert_eq!(op_of(&held.json, "00u3").0, "held");
    assert_eq!(op_of(&held.json, "00u4").0, "held");

    // An incremental run comes next; the holds are not forgotten.
    eventually(
        &ws,
        Duration::from_secs(20),
        "an incremental run",
        async || {
            let (_, body) = get(port, "/healthz").await?;
            let health: Value = serde_json::from_str(&body).ok()?;
            (health["last_run"]["full"] == false).then_some(())
        },
    )
    .await;
    let status = ws.run(&["status", "--output", "json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(
        held_ids(&status.json["held_deactivations"]),
        ["00u3", "00u4"]
    );
    let (code, body) = get(port, "/healthz").await.expect("healthz");
    assert_eq!(code, 200, "pending holds do not fail /healthz: {body}");
    let health: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["held_deactivations"], 2);
    let (_, metrics) = get(port, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("socialtalent_sync_held_deactivations 2"),
        "{metrics}"
    );
    // A sync that ends with holds pending exits 3, whatever it planned itself.
    let incremental = ws.run(&["sync", "--output", "json"]);
    assert_eq!(incremental.code, 3, "{}", incremental.stderr);
    assert_eq!(incremental.json["source"]["full"], false);
    assert_eq!(
        held_ids(&incremental.json["pending_holds"]),
        ["00u3", "00u4"]
    );
    assert_eq!(ws.peer.users().await.len(), 4, "nothing deactivated yet");

    // `approve --dry-run` shows what would be released, and releases nothing.
    let preview = ws.run(&["approve", "--dry-run", "--output", "json"]);
    assert_eq!(preview.code, 0, "{}", preview.stderr);
    assert_eq!(preview.json["mode"], "dry-run");
    assert_eq!(op_of(&preview.json, "00u3").0, "deactivate");
    assert_eq!(op_of(&preview.json, "00u4").0, "deactivate");
    assert_eq!(ws.peer.users().await.len(), 4);

    // `approve` asks the daemon, which runs and prints that run's report.
    let approved = ws.run(&["approve", "--output", "json"]);
    assert_eq!(approved.code, 0, "{}\n{}", approved.stderr, ws.daemon_log());
    assert_eq!(approved.json["mode"], "applied");
    assert_eq!(
        op_of(&approved.json, "00u3"),
        ("deactivate".to_owned(), "ok".to_owned())
    );
    assert_eq!(
        op_of(&approved.json, "00u4"),
        ("deactivate".to_owned(), "ok".to_owned())
    );
    for gone in ["bo.berg@northwind.example", "cy.dahl@northwind.example"] {
        assert!(ws.peer.user_by_name(gone).await.is_none(), "{gone}");
    }
    assert_eq!(ws.peer.users().await.len(), 2);
    let status = ws.run(&["status", "--output", "json"]);
    assert_eq!(
        held_ids(&status.json["held_deactivations"]),
        Vec::<String>::new()
    );
    let again = ws.run(&["approve", "--output", "text"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("nothing to release"),
        "{}",
        again.stdout
    );

    signal(&daemon.child, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut daemon.child, Duration::from_secs(40)),
        Some(0),
        "{}",
        ws.daemon_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_private_and_status_stays_off_a_public_listen() {
    let mut ws = Workspace::new();
    let port = free_port();
    ws.sections = format!(
        "[schedule]\ncron = \"0 0 * * * *\"\n\n[observability]\nlisten = \"0.0.0.0:{port}\"\n"
    );
    let mut daemon = Running {
        child: ws.spawn(&["run"]),
    };
    eventually(&ws, Duration::from_secs(30), "the first run", async || {
        let (code, _) = get(port, "/healthz").await?;
        (code == 200).then_some(())
    })
    .await;

    let socket = ws.state_path().join("control.sock");
    let mode = std::fs::metadata(&socket)
        .unwrap_or_else(|error| panic!("{}: {error}\n{}", socket.display(), ws.daemon_log()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only root and the service user");
    // Idle between runs: alive.
    assert_eq!(get(port, "/livez").await.map(|(code, _)| code), Some(200));
    // `/status` names people: not on an address others can reach…
    assert_eq!(get(port, "/status").await.map(|(code, _)| code), Some(404));
    // …but `status` by hand is served through the socket.
    let status = ws.run(&["status", "--output", "json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(status.json["users"]["active"], 21);
    // So is a dry run, planned between runs.
    let dry = ws.run(&["sync", "--dry-run", "--output", "json"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.json["mode"], "dry-run");
    assert_eq!(dry.json["summary"]["unchanged"], 21);
    // And `preview`.
    let preview = ws.run(&["preview", "E1001", "--output", "json"]);
    assert_eq!(preview.code, 0, "{}", preview.stderr);
    assert_eq!(preview.json["user"]["id"], "E1001");

    signal(&daemon.child, libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut daemon.child, Duration::from_secs(40)),
        Some(0),
        "{}",
        ws.daemon_log()
    );
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_only_while_the_run_makes_progress() {
    // A target that accepts connections and never answers.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stuck_port = stuck.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in stuck.incoming() {
            match stream {
                Ok(stream) => held.push(stream),
                Err(_) => break,
            }
        }
    });
    // The request timeout is far longer than the watchdog interval, so the run stays stuck.
    let (mut ws, port) = daemon_workspace("0 0 * * * *", "timeout = \"120s\"\nmax_retries = 0");
    ws.peer.base_url = format!("http://127.0.0.1:{stuck_port}/v2");
    let notify_path = ws.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind");
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let started = Instant::now();
    let window = Duration::from_secs(16);
    let _daemon = Running {
        child: ws.spawn_with_env(
            &["run"],
            &[
                ("NOTIFY_SOCKET", notify_path.as_os_str()),
                ("WATCHDOG_USEC", std::ffi::OsStr::new("2000000")),
            ],
        ),
    };
    let received = tokio::task::spawn_blocking(move || {
        let mut messages = Vec::new();
        let mut buffer = [0u8; 4096];
        while started.elapsed() < window {
            if let Ok(n) = notify.recv(&mut buffer) {
                messages.push((
                    started.elapsed(),
                    String::from_utf8_lossy(&buffer[..n]).into_owned(),
                ));
            }
        }
        messages
    });
    // /livez follows the same rule.
    eventually(
        &ws,
        Duration::from_secs(15),
        "/livez to report the stuck run",
        async || {
            let (code, _) = get(port, "/livez").await?;
            (code == 503).then_some(())
        },
    )
    .await;
    let messages = received.await.expect("collected");
    assert!(
        messages
            .iter()
            .any(|(_, message)| message.contains("READY=1")),
        "{messages:?}"
    );
    let pings: Vec<Duration> = messages
        .iter()
        .filter(|(_, message)| message.contains("WATCHDOG=1"))
        .map(|(at, _)| *at)
        .collect();
    assert!(!pings.is_empty(), "fed while starting: {messages:?}");
    assert!(
        pings.iter().all(|at| *at + Duration::from_secs(6) < window),
        "pings went on while the run was stuck: {pings:?}\n{}",
        ws.daemon_log()
    );
    // The run is still stuck on the first writes: no answer came, no run finished.
    assert_eq!(get(port, "/healthz").await.map(|(code, _)| code), Some(503));
    assert!(
        ws.daemon_log().contains("no longer feeding the watchdog"),
        "{}",
        ws.daemon_log()
    );
}
