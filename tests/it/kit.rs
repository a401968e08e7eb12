//! The administrator's kit around the binary: `--version` names the commit and the state format.

use std::process::Command;

fn version_output(flag: &str) -> String {
    let output = assert_cmd::Command::cargo_bin("socialtalent-sync")
        .expect("binary")
        .arg(flag)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{flag} exited {:?}", output.status);
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn version_names_the_release_the_commit_and_the_state_format() {
    let text = version_output("--version");
    let expected_start = format!("socialtalent-sync {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected_start), "{text}");
    assert!(
        text.ends_with(&format!(
            ", state format {})",
            socialtalent_sync::state::FORMAT_VERSION
        )),
        "{text}"
    );
    // The commit is this checkout's HEAD when git can say (a build from a tarball says
    // "unknown").
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    let commit = text
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("a commit");
    match head {
        Some(head) => assert_eq!(commit, head, "{text}"),
        None => assert_eq!(commit, "unknown", "{text}"),
    }
    assert_eq!(version_output("-V"), text);
}

/// The `socialtalent_sync_*` metric names a text mentions (PromQL in a dashboard or rules).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    const PREFIX: &str = "socialtalent_sync_";
    text.match_indices(PREFIX)
        .map(|(index, _)| {
            text[index..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > PREFIX.len())
        .collect()
}

/// Every metric the Grafana dashboard and the Prometheus rules query is one the daemon's
/// `/metrics` serves, after a real run against the SCIM peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_query_metrics_the_daemon_serves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/socialtalent-sync.json"))
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut queries = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for target in targets {
            queries.push_str(target["expr"].as_str().expect("expr"));
            queries.push('\n');
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        queries.push_str(&variable["definition"].to_string());
    }
    let dashboard_names = metric_names(&queries);
    let alert_names = metric_names(
        &std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("alerts.yml"),
    );
    for wanted in [
        "socialtalent_sync_runs_total",
        "socialtalent_sync_run_duration_seconds_bucket",
        "socialtalent_sync_actions_total",
        "socialtalent_sync_scim_retries_total",
        "socialtalent_sync_rate_limit_wait_seconds_total",
        "socialtalent_sync_held_deactivations",
        "socialtalent_sync_quarantined_users",
        "socialtalent_sync_last_success_timestamp_seconds",
    ] {
        assert!(
            dashboard_names.contains(wanted),
            "the dashboard misses {wanted}"
        );
    }

    let mut ws = crate::support::Workspace::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    ws.sections = format!(
        "[schedule]\ncron = \"*/2 * * * * *\"\n\n[observability]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let mut child = ws.spawn(&["run"]);
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let get = async |path: &str| {
        let response = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .ok()?;
        Some((response.status().as_u16(), response.text().await.ok()?))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let metrics = loop {
        if let Some((200, _)) = get("/healthz").await {
            break get("/metrics").await.expect("metrics").1;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "no healthy run within 60 s; daemon log:\n{}",
                ws.daemon_log()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let _ = child.wait();

    let served: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<String> = dashboard_names
        .iter()
        .chain(&alert_names)
        .filter(|name| !served.contains(*name))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not served: {missing:?}\n/metrics:\n{metrics}"
    );
}
