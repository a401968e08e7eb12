//! The daemon as a real process: a seconds-level schedule against the file source and the SCIM
//! peer, `/healthz`, `/metrics` and `/status`, SIGHUP with a good and a bad configuration,
//! SIGTERM during a run, and a second process on the same state refused.

use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

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

    // `status` works while the daemon holds the state (it asks /status).
    let status = ws.run(&["status", "--output", "json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(status.json["users"]["active"], 21);
    // A second process on the same state is refused at once, naming the directory.
    let second = ws.run(&["sync", "--output", "json"]);
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
