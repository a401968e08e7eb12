//! Crash convergence (SPEC §5, "Safety — nothing is lost"): killed at any moment (`kill -9`
//! included), a restart converges — no duplicate account, no lost update, no deactivation that
//! was not planned.
//!
//! Each *point* builds a history against a fresh scim2-server tenant (syncs sent straight to the
//! peer), then starts the real binary for the run under test through a slowing TCP proxy (each
//! response is held back for `CRASH_DELAY_MS`, so a run of 21 writes takes seconds and the
//! process can die after SocialTalent applied a write but before the state recorded it), sends
//! it SIGKILL at a point derived from the seed, restarts `sync` until it exits 0, and compares
//! SocialTalent with a *reference* tenant that went through the same history without a kill.
//! Then a following `sync` must plan nothing, and a `--full` read-back dry run must find nothing
//! to create, adopt, update or deactivate and no orphan.
//!
//! Scenarios (the phase a point kills): `read` (the Okta source, its users page slowed with
//! `delay_next`, killed before the first SCIM request), `okta-incr` (an incremental Okta run
//! after profile, status and group changes), `create` (21 creates on an empty tenant), `update`
//! (every user changed, plus hires), `deactivate` (11 leavers, limits raised), `rehire` (10
//! leavers come back). Kills land at a random time of the run or just after the n-th write's
//! answer left SocialTalent (still held by the proxy, so not yet recorded).
//!
//! `cargo test --test it crash` runs a handful of points (`CRASH_POINTS`, default 8);
//! `scripts/crash-suite.sh` runs 60 and prints the summary table for RELIABILITY.md.
//! Knobs: `CRASH_POINTS`, `CRASH_SEED`, `CRASH_JOBS` (points run at once, default 2),
//! `CRASH_DELAY_MS` (default 250), `CRASH_SUMMARY` (a file to write the summary table to).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::fake_okta::FakeOkta;
use crate::support::peer::{EXT_URN, ScimPeer};
use crate::support::{TOKEN_VAR, Workspace, example_directory, person};

/// Syncs a restart may take to exit 0 before the point counts as not converged.
const MAX_RESTARTS: usize = 4;
/// How long the slowed Okta users page is held back.
const OKTA_READ_DELAY: Duration = Duration::from_millis(1200);
/// Any one run of the binary must end within this (bounded loops).
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// Deactivations must not be held: the scenarios deactivate up to half the users.
const SAFETY: &str = "[safety]\nmax_deactivations = 1000\nmax_deactivation_percent = 100.0\n";

// ----- The slowing proxy ---------------------------------------------------------------------

/// A TCP relay on 127.0.0.1 in front of the SCIM peer. scim2-server answers one request per
/// connection (HTTP/1.0, no keep-alive), so each connection is one request: its first bytes name
/// the method; the answer's first bytes are held back for `delay` before they are relayed.
/// While a write's answer is held, SocialTalent has applied the write and the client has not
/// seen it: a kill then lands between the write and its state record.
struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyShared {
    upstream: u16,
    delay: Duration,
    /// When each connection's request arrived.
    requests: Mutex<Vec<Instant>>,
    /// Write requests relayed to SocialTalent whose answer has not come back yet.
    writes_in_flight: AtomicUsize,
    /// Write answers received from SocialTalent and not yet delivered to the client.
    writes_held: AtomicUsize,
    /// (method, when SocialTalent's answer arrived) of every write.
    answers: Mutex<Vec<(String, Instant)>>,
}

/// The proxy's counters at one instant.
#[derive(Debug, Clone, Copy)]
struct ProxySnapshot {
    requests: usize,
    writes_in_flight: usize,
    writes_held: usize,
}

fn is_write(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

impl Proxy {
    async fn start(upstream: u16, delay: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(ProxyShared {
            upstream,
            delay,
            requests: Mutex::new(Vec::new()),
            writes_in_flight: AtomicUsize::new(0),
            writes_held: AtomicUsize::new(0),
            answers: Mutex::new(Vec::new()),
        });
        let accept = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, Arc::clone(&accept)));
            }
        });
        Proxy { port, shared, task }
    }

    /// The base URL of `peer`'s tenant through the proxy.
    fn base_url(&self, peer: &ScimPeer) -> String {
        format!("http://127.0.0.1:{}/{}/v2", self.port, peer.tenant)
    }

    fn snapshot(&self) -> ProxySnapshot {
        ProxySnapshot {
            requests: lock(&self.shared.requests).len(),
            writes_in_flight: self.shared.writes_in_flight.load(Ordering::SeqCst),
            writes_held: self.shared.writes_held.load(Ordering::SeqCst),
        }
    }

    fn first_request(&self) -> Option<Instant> {
        lock(&self.shared.requests).first().copied()
    }

    fn writes_answered(&self) -> usize {
        lock(&self.shared.answers).len()
    }

    /// When SocialTalent answered the `nth` (1-based) write, or the `nth` write with `method`.
    fn answered(&self, method: Option<&str>, nth: usize) -> Option<Instant> {
        lock(&self.shared.answers)
            .iter()
            .filter(|(m, _)| method.is_none_or(|method| m == method))
            .nth(nth.saturating_sub(1))
            .map(|(_, at)| *at)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Decrements a counter when dropped (a relay task ends however it ends).
struct Gauge<'a>(&'a AtomicUsize);

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn gauge(counter: &AtomicUsize) -> Gauge<'_> {
    counter.fetch_add(1, Ordering::SeqCst);
    Gauge(counter)
}

async fn relay(client: TcpStream, shared: Arc<ProxyShared>) {
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", shared.upstream)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    let n = match client_read.read(&mut buf).await {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    let method = String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    let write = is_write(&method);
    lock(&shared.requests).push(Instant::now());
    let in_flight = write.then(|| gauge(&shared.writes_in_flight));
    if upstream_write.write_all(&buf[..n]).await.is_err() {
        return;
    }
    // The rest of the request (a body sent after the headers), relayed as it comes.
    let request_rest = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
    });
    let n = match upstream_read.read(&mut buf).await {
        Ok(0) | Err(_) => {
            request_rest.abort();
            return;
        }
        Ok(n) => n,
    };
    let held = write.then(|| {
        lock(&shared.answers).push((method.clone(), Instant::now()));
        gauge(&shared.writes_held)
    });
    drop(in_flight);
    tokio::time::sleep(shared.delay).await;
    if client_write.write_all(&buf[..n]).await.is_ok() {
        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    }
    drop(held);
    request_rest.abort();
}

fn upstream_port(peer: &ScimPeer) -> u16 {
    peer.base_url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("unexpected peer URL {}", peer.base_url))
}

// ----- Scenarios -----------------------------------------------------------------------------

/// What the killed run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Scenario {
    Create,
    Update,
    Deactivate,
    Rehire,
    Read,
    OktaIncremental,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario::Create,
    Scenario::Update,
    Scenario::Deactivate,
    Scenario::Rehire,
    Scenario::Read,
    Scenario::OktaIncremental,
];

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Create => "create",
            Scenario::Update => "update",
            Scenario::Deactivate => "deactivate",
            Scenario::Rehire => "rehire",
            Scenario::Read => "read",
            Scenario::OktaIncremental => "okta-incr",
        }
    }

    fn okta(self) -> bool {
        matches!(self, Scenario::Read | Scenario::OktaIncremental)
    }

    /// Builds the history before the run under test (straight to the peer), and leaves the
    /// source as the run under test reads it.
    async fn prepare(self, env: &mut Env) {
        match self {
            Scenario::Create => {}
            Scenario::Update => {
                env.sync_direct().await;
                env.ws.write_directory(&updated_directory());
            }
            Scenario::Deactivate => {
                env.sync_direct().await;
                env.ws.write_directory(&leavers_directory());
            }
            Scenario::Rehire => {
                env.sync_direct().await;
                let mut directory = example_directory();
                for id in REHIRED {
                    person(&mut directory, id).insert("active".into(), json!(false));
                }
                env.ws.write_directory(&directory);
                env.sync_direct().await;
                env.ws.write_directory(&example_directory());
            }
            Scenario::Read => {}
            Scenario::OktaIncremental => {
                env.sync_direct().await;
                let (okta, groups) = env.okta.as_ref().expect("okta");
                okta.advance_clock(600);
                for id in [
                    "E1002", "E1005", "E1009", "E1011", "E1014", "E1016", "E1019",
                ] {
                    okta.update_profile(id, json!({"title": format!("Changed title of {id}")}));
                }
                okta.update_profile("E1013", json!({"department": "Sales"}));
                okta.set_status("E1010", "DEPROVISIONED");
                okta.set_status("E1017", "SUSPENDED");
                okta.add_member(&groups["LP Sourcing"], "E1012");
                okta.advance_clock(60);
            }
        }
        if let Some((okta, _)) = &env.okta {
            okta.delay_next("/api/v1/users", OKTA_READ_DELAY, 1);
        }
    }
}

/// The leavers of the rehire scenario (all without reports).
const REHIRED: [&str; 10] = [
    "E1009", "E1010", "E1011", "E1012", "E1013", "E1014", "E1015", "E1016", "E1017", "E1018",
];

/// Every person changed in some managed attribute, and two hires (a manager and her report).
fn updated_directory() -> Value {
    let mut directory = example_directory();
    for (i, record) in directory
        .as_array_mut()
        .expect("array")
        .iter_mut()
        .enumerate()
    {
        let record = record.as_object_mut().expect("object");
        match i % 4 {
            0 => {
                let title = record["title"].as_str().unwrap_or_default().to_owned();
                record.insert("title".into(), json!(format!("{title} II")));
            }
            1 => {
                record.remove("title");
            }
            2 => {
                record.insert("department".into(), json!("Operations"));
            }
            _ => {
                record.insert("customerId".into(), json!(format!("C-9{i:03}")));
                if let Some(groups) = record.get_mut("groups").and_then(Value::as_array_mut) {
                    groups.push(json!("LP Negotiation"));
                }
            }
        }
    }
    directory.as_array_mut().expect("array").extend([
        json!({"id": "E3001", "email": "new.report@northwind.example", "given_name": "New",
               "family_name": "Report", "active": true, "department": "Sales",
               "manager_id": "E3000", "groups": ["SocialTalent"]}),
        json!({"id": "E3000", "email": "new.lead@northwind.example", "given_name": "New",
               "family_name": "Lead", "active": true, "department": "Sales",
               "manager_id": "E1001", "groups": ["SocialTalent"], "isManager": true}),
    ]);
    directory
}

/// Eleven leavers: six gone from the directory, three inactive, two out of the group.
fn leavers_directory() -> Value {
    let mut directory = example_directory();
    let gone = ["E1013", "E1014", "E1016", "E1017", "E1019", "E1020"];
    directory
        .as_array_mut()
        .expect("array")
        .retain(|record| !gone.iter().any(|id| record["id"] == *id));
    for id in ["E1010", "E1012", "E1025"] {
        person(&mut directory, id).insert("active".into(), json!(false));
    }
    for id in ["E1009", "E1018"] {
        person(&mut directory, id).insert("groups".into(), json!(["All Staff"]));
    }
    directory
}

/// A fake Okta org holding the bundled example directory (the same ids), with its groups.
async fn okta_org() -> (FakeOkta, BTreeMap<String, String>) {
    let okta = FakeOkta::start().await;
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in example_directory().as_array().expect("array") {
        let id = record["id"].as_str().expect("id");
        let mut profile = serde_json::Map::new();
        for (ours, okta_name) in [
            ("email", "login"),
            ("email", "email"),
            ("given_name", "firstName"),
            ("family_name", "lastName"),
            ("display_name", "displayName"),
            ("department", "department"),
            ("title", "title"),
            ("employee_id", "employeeNumber"),
            ("manager_id", "managerId"),
            ("customerId", "customerId"),
            ("isManager", "isManager"),
            ("managedTeams", "managedTeams"),
            ("costCenter", "costCenter"),
            ("location", "location"),
        ] {
            match &record[ours] {
                Value::Null => {}
                Value::String(text) if text.is_empty() => {}
                value => {
                    profile.insert(okta_name.into(), value.clone());
                }
            }
        }
        let status = if record["active"] == true {
            "ACTIVE"
        } else {
            "DEPROVISIONED"
        };
        okta.add_user(id, status, Value::Object(profile));
        for group in record["groups"].as_array().expect("groups") {
            members
                .entry(group.as_str().expect("group").to_owned())
                .or_default()
                .push(id.to_owned());
        }
    }
    members.entry("LP Sourcing".into()).or_default();
    let mut groups = BTreeMap::new();
    for (i, (name, ids)) in members.into_iter().enumerate() {
        let group_id = format!("00g{i:03}");
        okta.add_group(&group_id, &name);
        for id in ids {
            okta.add_member(&group_id, &id);
        }
        groups.insert(name, group_id);
    }
    (okta, groups)
}

// ----- Configuration variants and the environment of a point ----------------------------------

/// How the binary is configured for a point (the reference uses the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Variant {
    /// `[reconcile] read_back`.
    read_back: bool,
    /// `update_with = "patch"` and `deactivate_with = "patch"` (else PUT and DELETE).
    patch: bool,
    /// `[reconcile] orphans = "deactivate"` (with read-back only): a created but unrecorded
    /// account must be adopted, never taken for an orphan.
    orphans_deactivate: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        read_back: false,
        patch: false,
        orphans_deactivate: false,
    },
    Variant {
        read_back: false,
        patch: true,
        orphans_deactivate: false,
    },
    Variant {
        read_back: true,
        patch: false,
        orphans_deactivate: true,
    },
    Variant {
        read_back: true,
        patch: true,
        orphans_deactivate: false,
    },
];

impl Variant {
    fn label(self) -> String {
        format!(
            "{}{}{}",
            if self.patch { "patch" } else { "put/delete" },
            if self.read_back { "+read-back" } else { "" },
            if self.orphans_deactivate {
                "+orphans=deactivate"
            } else {
                ""
            },
        )
    }

    fn reconcile(self) -> String {
        let mut lines = format!("read_back = {}", self.read_back);
        if self.orphans_deactivate {
            lines.push_str("\norphans = \"deactivate\"");
        }
        lines
    }
}

/// One workspace and tenant (and fake Okta) for a point or a reference.
struct Env {
    ws: Workspace,
    /// The tenant, reached directly.
    direct: ScimPeer,
    okta: Option<(FakeOkta, BTreeMap<String, String>)>,
    variant: Variant,
}

/// What one run of the binary produced.
struct Ran {
    code: Option<i32>,
    json: Value,
    stderr: String,
}

impl Env {
    async fn new(scenario: Scenario, variant: Variant) -> Env {
        let mut ws = Workspace::new();
        let direct = ws.peer.clone();
        ws.sections = SAFETY.to_owned();
        ws.reconcile = variant.reconcile();
        if variant.patch {
            ws.target_extra = "update_with = \"patch\"\ndeactivate_with = \"patch\"".into();
        }
        let okta = if scenario.okta() {
            let (okta, groups) = okta_org().await;
            ws.source = format!(
                "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\ntoken = \"{}\"\ngroups = [\"SocialTalent\", \"SocialTalent Admins\", \"LP *\"]\n",
                okta.url,
                okta.api_token()
            );
            Some((okta, groups))
        } else {
            None
        };
        Env {
            ws,
            direct,
            okta,
            variant,
        }
    }

    /// Sends the binary's SCIM requests through `proxy`, or straight to the peer.
    fn route(&mut self, proxy: Option<&Proxy>) {
        self.ws.peer.base_url = match proxy {
            Some(proxy) => proxy.base_url(&self.direct),
            None => self.direct.base_url.clone(),
        };
    }

    fn command(&self, args: &[&str], log: &str) -> tokio::process::Command {
        std::fs::write(self.ws.config_path(), self.ws.config_text()).expect("write config");
        let file = |suffix: &str| {
            std::fs::File::create(self.ws.dir.path().join(format!("{log}.{suffix}")))
                .expect("log file")
        };
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_socialtalent-sync"));
        command
            .current_dir(self.ws.dir.path())
            .env(TOKEN_VAR, &self.ws.peer.token)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .arg("--config")
            .arg(self.ws.config_path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file("out"))
            .stderr(file("err"))
            .kill_on_drop(true);
        command
    }

    /// Runs the binary to its end (bounded by [`RUN_TIMEOUT`]).
    async fn run(&self, args: &[&str]) -> Ran {
        let log = "run";
        let mut child = self.command(args, log).spawn().expect("spawn");
        let status = tokio::time::timeout(RUN_TIMEOUT, child.wait())
            .await
            .unwrap_or_else(|_| panic!("`{args:?}` did not end within {RUN_TIMEOUT:?}"))
            .expect("wait");
        self.ran(status.code(), log)
    }

    fn ran(&self, code: Option<i32>, log: &str) -> Ran {
        let read = |suffix: &str| {
            std::fs::read_to_string(self.ws.dir.path().join(format!("{log}.{suffix}")))
                .unwrap_or_default()
        };
        let stdout = read("out");
        Ran {
            code,
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stderr: read("err"),
        }
    }

    /// A `sync` straight to the peer that must succeed (history building).
    async fn sync_direct(&mut self) {
        self.route(None);
        let ran = self.run(&["sync", "--output", "json"]).await;
        assert_eq!(
            ran.code,
            Some(0),
            "a history sync failed: {}\n{}",
            ran.json,
            ran.stderr
        );
    }

    /// The tenant's accounts, without the server-assigned `id` and `meta`.
    async fn accounts(&self) -> Vec<Value> {
        let mut users = self.direct.users().await;
        for user in &mut users {
            if let Some(object) = user.as_object_mut() {
                object.remove("id");
                object.remove("meta");
            }
        }
        users
    }
}

fn user_name_key(account: &Value) -> String {
    account["userName"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase()
}

fn by_user_name(accounts: &[Value]) -> BTreeMap<String, Value> {
    accounts
        .iter()
        .map(|account| (user_name_key(account), account.clone()))
        .collect()
}

/// Summary counters that must be zero once a run converged.
const WRITE_COUNTS: [&str; 9] = [
    "create",
    "adopted",
    "update",
    "deactivate",
    "reactivate",
    "held",
    "failed",
    "drift_repaired",
    "orphans",
];

/// What a report still wants to do, or `None` when it plans nothing.
fn pending(report: &Value) -> Option<String> {
    let summary = &report["summary"];
    if summary.is_null() {
        return Some(format!("no report: {report}"));
    }
    let counts: Vec<String> = WRITE_COUNTS
        .iter()
        .filter(|key| summary[**key].as_u64().unwrap_or(0) > 0)
        .map(|key| format!("{key}={}", summary[*key]))
        .collect();
    if counts.is_empty() && report["drift"].as_array().is_none_or(Vec::is_empty) {
        return None;
    }
    let actions: Vec<String> = report["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|action| action["op"] != "skip")
        .map(|action| {
            format!(
                "{} {} ({})",
                action["op"].as_str().unwrap_or("?"),
                action["userName"].as_str().unwrap_or("?"),
                action["reason"]
                    .as_str()
                    .or(action["error"].as_str())
                    .unwrap_or("")
            )
        })
        .collect();
    let drift: Vec<String> = report["drift"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|drift| {
            format!(
                "{} {}: ours {} theirs {} repaired {}",
                drift["userName"].as_str().unwrap_or("?"),
                drift["attribute"].as_str().unwrap_or("?"),
                drift["ours"],
                drift["theirs"],
                drift["repaired"]
            )
        })
        .collect();
    Some(format!(
        "[{}] actions [{}] drift [{}] orphans {}",
        counts.join(" "),
        actions.join(", "),
        drift.join(", "),
        report["orphans"]
    ))
}

// ----- The reference: the same history, no kill ----------------------------------------------

/// What a clean run of a scenario produces, and how long its run under test takes.
struct Reference {
    accounts: BTreeMap<String, Value>,
    /// From spawn to exit of the run under test, through the proxy.
    total: Duration,
    /// From spawn to its first SCIM request.
    first_request: Duration,
    /// Writes SocialTalent answered during that run.
    writes: usize,
}

async fn reference(scenario: Scenario, variant: Variant, delay: Duration) -> Reference {
    let mut env = Env::new(scenario, variant).await;
    scenario.prepare(&mut env).await;
    let proxy = Proxy::start(upstream_port(&env.direct), delay).await;
    env.route(Some(&proxy));
    let started = Instant::now();
    let ran = env.run(&["sync", "--output", "json"]).await;
    let total = started.elapsed();
    assert_eq!(
        ran.code,
        Some(0),
        "the reference run of {} ({}) failed: {}\n{}",
        scenario.name(),
        variant.label(),
        ran.json,
        ran.stderr
    );
    let first_request = proxy
        .first_request()
        .map_or(total, |at| at.duration_since(started));
    let writes = proxy.writes_answered();
    env.route(None);
    let again = env.run(&["sync", "--output", "json"]).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(
        pending(&again.json),
        None,
        "the reference of {} ({}) does not settle",
        scenario.name(),
        variant.label()
    );
    Reference {
        accounts: by_user_name(&env.accounts().await),
        total,
        first_request,
        writes,
    }
}

// ----- Kills ---------------------------------------------------------------------------------

/// When to send SIGKILL.
#[derive(Debug, Clone)]
enum Trigger {
    /// This long after the spawn.
    At(Duration),
    /// This long after SocialTalent answered the `nth` write (with `method`, if given): the
    /// answer is still held by the proxy, so the write is applied and not recorded.
    AfterWrite {
        method: Option<&'static str>,
        nth: usize,
        extra: Duration,
    },
}

impl Trigger {
    fn label(&self) -> String {
        match self {
            Trigger::At(at) => format!("t+{}ms", at.as_millis()),
            Trigger::AfterWrite { method, nth, extra } => format!(
                "{}#{nth}+{}ms",
                method.unwrap_or("write"),
                extra.as_millis()
            ),
        }
    }
}

/// Where in the run a kill landed, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Landed {
    /// Before the first SCIM request (reading the source, planning).
    BeforeScim,
    /// A write had reached SocialTalent, its answer not back yet.
    WriteInFlight,
    /// SocialTalent had answered a write; the binary had not seen the answer (not recorded).
    WriteAnswered,
    /// Between SCIM requests, or during a read (read-back, adoption lookup).
    BetweenWrites,
    /// The run had already ended: no kill.
    RunOver,
}

impl Landed {
    fn label(self) -> &'static str {
        match self {
            Landed::BeforeScim => "before any SCIM request",
            Landed::WriteInFlight => "write in flight",
            Landed::WriteAnswered => "write applied, answer not yet seen",
            Landed::BetweenWrites => "between writes / during a read",
            Landed::RunOver => "run had ended (no kill)",
        }
    }

    fn mid_write(self) -> bool {
        matches!(self, Landed::WriteInFlight | Landed::WriteAnswered)
    }
}

/// Starts `sync` through the proxy and kills it with SIGKILL when `trigger` fires.
async fn killed_run(env: &Env, proxy: &Proxy, trigger: &Trigger, log: &str) -> Landed {
    let mut child = env
        .command(&["sync", "--output", "json"], log)
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    let deadline = started + RUN_TIMEOUT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return Landed::RunOver;
        }
        let fire_at = match trigger {
            Trigger::At(at) => Some(started + *at),
            Trigger::AfterWrite { method, nth, extra } => {
                proxy.answered(*method, *nth).map(|at| at + *extra)
            }
        };
        if fire_at.is_some_and(|at| Instant::now() >= at) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run under test neither ended nor reached {trigger:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let seen = proxy.snapshot();
    let pid = libc::pid_t::try_from(child.id().expect("a running child has a pid")).expect("pid");
    // SAFETY: kill(2) on our own child's pid (not yet reaped, so not reused) has no
    // memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill failed: {}", std::io::Error::last_os_error());
    let status = tokio::time::timeout(RUN_TIMEOUT, child.wait())
        .await
        .expect("the killed process ends")
        .expect("wait");
    if status.code().is_some() {
        // It exited on its own between the last check and the signal.
        return Landed::RunOver;
    }
    if seen.writes_held > 0 {
        Landed::WriteAnswered
    } else if seen.writes_in_flight > 0 {
        Landed::WriteInFlight
    } else if seen.requests == 0 {
        Landed::BeforeScim
    } else {
        Landed::BetweenWrites
    }
}

// ----- Points --------------------------------------------------------------------------------

/// splitmix64: a small deterministic generator, so that a seed names the same points anywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A kill point, before its times are known (they are fractions of the reference run).
#[derive(Debug, Clone, Copy)]
struct PointSpec {
    index: usize,
    scenario: Scenario,
    variant: Variant,
    /// Kill on the n-th write's answer (fraction of the writes) rather than at a time.
    on_write: Option<f64>,
    /// The time (fraction of the window) or the extra delay (fraction of the proxy delay).
    fraction: f64,
    /// Also kill the first restart, at this fraction of the reference run.
    second_kill: Option<f64>,
}

fn points(count: usize, seed: u64) -> Vec<PointSpec> {
    let mut rng = Rng(seed);
    let rotation = rng.below(SCENARIOS.len());
    (0..count)
        .map(|index| {
            let scenario = SCENARIOS[(index + rotation) % SCENARIOS.len()];
            let variant = VARIANTS[rng.below(VARIANTS.len())];
            let on_write = (scenario != Scenario::Read && rng.below(2) == 0).then(|| rng.unit());
            let fraction = rng.unit();
            let second_kill = (rng.below(5) == 0).then(|| rng.unit());
            PointSpec {
                index,
                scenario,
                variant,
                on_write,
                fraction,
                second_kill,
            }
        })
        .collect()
}

fn trigger(spec: &PointSpec, reference: &Reference, delay: Duration) -> Trigger {
    match (spec.scenario, spec.on_write) {
        // Reading the source: anywhere before the first SCIM request.
        (Scenario::Read, _) => Trigger::At(reference.first_request.mul_f64(spec.fraction)),
        (_, Some(which)) if reference.writes > 0 => Trigger::AfterWrite {
            method: None,
            nth: 1 + ((which * reference.writes as f64) as usize).min(reference.writes - 1),
            extra: delay.mul_f64(spec.fraction * 0.9),
        },
        _ => Trigger::At(reference.total.mul_f64(spec.fraction)),
    }
}

/// How SocialTalent differs from the reference.
#[derive(Debug, Default, Clone)]
struct Divergence {
    /// Extra accounts for one person (by externalId or userName).
    duplicates: usize,
    /// Accounts missing that a create should have made, or whose attributes differ.
    lost_updates: usize,
    /// Accounts active in the reference, deactivated (or deleted) here.
    unplanned_deactivations: usize,
    /// Accounts deactivated in the reference, still active here.
    missed_deactivations: usize,
    details: Vec<String>,
}

impl Divergence {
    fn total(&self) -> usize {
        self.duplicates
            + self.lost_updates
            + self.unplanned_deactivations
            + self.missed_deactivations
    }
}

/// Compares the accounts with the reference; `before` holds the userNames that existed before
/// the run under test (an absent one of those was deleted, not never created).
fn compare(
    reference: &BTreeMap<String, Value>,
    accounts: &[Value],
    before: &BTreeSet<String>,
) -> Divergence {
    let mut divergence = Divergence::default();
    let mut per_person: BTreeMap<String, usize> = BTreeMap::new();
    for account in accounts {
        let key = account["externalId"].as_str().map_or_else(
            || format!("userName {}", user_name_key(account)),
            str::to_owned,
        );
        *per_person.entry(key).or_default() += 1;
    }
    let mut user_names: BTreeMap<String, usize> = BTreeMap::new();
    for account in accounts {
        *user_names.entry(user_name_key(account)).or_default() += 1;
    }
    for (who, n) in per_person.iter().chain(user_names.iter()) {
        if *n > 1 {
            divergence.duplicates += n - 1;
            divergence.details.push(format!("{n} accounts for {who}"));
        }
    }
    let actual = by_user_name(accounts);
    let keys: BTreeSet<&String> = reference.keys().chain(actual.keys()).collect();
    let active = |account: Option<&Value>| account.is_some_and(|a| a["active"] == true);
    for key in keys {
        let (want, got) = (reference.get(key), actual.get(key));
        match (active(want), active(got)) {
            (true, false) if got.is_none() && !before.contains(key) => {
                divergence.lost_updates += 1;
                divergence.details.push(format!("{key}: never created"));
            }
            (true, false) => {
                divergence.unplanned_deactivations += 1;
                divergence
                    .details
                    .push(format!("{key}: deactivated, should be active: {got:?}"));
            }
            (false, true) => {
                divergence.missed_deactivations += 1;
                divergence
                    .details
                    .push(format!("{key}: still active, should be deactivated"));
            }
            _ if want != got => {
                divergence.lost_updates += 1;
                divergence
                    .details
                    .push(format!("{key}: {}", differences(got, want)));
            }
            _ => {}
        }
    }
    divergence
}

/// The fields in which an account differs from the reference's, as `field: got (expected …)`.
fn differences(got: Option<&Value>, want: Option<&Value>) -> String {
    let flat = |account: Option<&Value>| -> BTreeMap<String, Value> {
        let mut fields = BTreeMap::new();
        for (name, value) in account.and_then(Value::as_object).into_iter().flatten() {
            match value.as_object() {
                Some(extension) if name == EXT_URN => {
                    for (name, value) in extension {
                        fields.insert(name.clone(), value.clone());
                    }
                }
                _ => {
                    fields.insert(name.clone(), value.clone());
                }
            }
        }
        fields
    };
    let (got, want) = (flat(got), flat(want));
    let names: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    let show = |value: Option<&Value>| value.map_or_else(|| "absent".to_owned(), Value::to_string);
    names
        .into_iter()
        .filter(|name| got.get(*name) != want.get(*name))
        .map(|name| {
            format!(
                "{name} {} (expected {})",
                show(got.get(name)),
                show(want.get(name))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one point found.
#[derive(Debug)]
struct PointResult {
    spec: PointSpec,
    trigger: Trigger,
    landed: Landed,
    second: Option<Landed>,
    restarts: usize,
    /// The last restart's exit code and what it reported, when none exited 0.
    not_converged: Option<String>,
    divergence: Divergence,
    /// What the sync after convergence still planned.
    plan_after: Option<String>,
    /// What a `--full` read-back dry run still planned.
    readback_after: Option<String>,
    elapsed: Duration,
}

impl PointResult {
    fn ok(&self) -> bool {
        self.not_converged.is_none()
            && self.divergence.total() == 0
            && self.plan_after.is_none()
            && self.readback_after.is_none()
    }

    fn line(&self) -> String {
        let mut line = format!(
            "#{:02} {:<10} {:<34} kill {:<18} {:<34}",
            self.spec.index,
            self.spec.scenario.name(),
            self.spec.variant.label(),
            self.trigger.label(),
            self.landed.label(),
        );
        if let Some(second) = self.second {
            let _ = write!(line, " 2nd kill: {}", second.label());
        }
        let _ = write!(
            line,
            " restarts {} ({:.1}s) {}",
            self.restarts,
            self.elapsed.as_secs_f64(),
            if self.ok() { "ok" } else { "DIVERGED" }
        );
        if let Some(why) = &self.not_converged {
            let _ = write!(line, "\n    not converged: {why}");
        }
        for detail in &self.divergence.details {
            let _ = write!(line, "\n    {detail}");
        }
        if let Some(plan) = &self.plan_after {
            let _ = write!(line, "\n    the next sync still plans: {plan}");
        }
        if let Some(plan) = &self.readback_after {
            let _ = write!(line, "\n    a read-back dry run still plans: {plan}");
        }
        line
    }
}

/// Runs one point: history, killed run (and maybe a killed restart), restarts, checks.
async fn run_point(spec: PointSpec, reference: &Reference, delay: Duration) -> PointResult {
    let started = Instant::now();
    let mut env = Env::new(spec.scenario, spec.variant).await;
    spec.scenario.prepare(&mut env).await;
    let before: BTreeSet<String> = env.accounts().await.iter().map(user_name_key).collect();
    let proxy = Proxy::start(upstream_port(&env.direct), delay).await;
    env.route(Some(&proxy));
    let trigger = trigger(&spec, reference, delay);
    let landed = killed_run(&env, &proxy, &trigger, "killed").await;
    drop(proxy);
    let second = match spec.second_kill {
        Some(fraction) => {
            let proxy = Proxy::start(upstream_port(&env.direct), delay).await;
            env.route(Some(&proxy));
            let at = Trigger::At(reference.total.mul_f64(fraction));
            Some(killed_run(&env, &proxy, &at, "killed-again").await)
        }
        None => None,
    };
    env.route(None);
    let (restarts, not_converged) = restart(&env).await;
    let (plan_after, readback_after) = if not_converged.is_none() {
        settled(&mut env).await
    } else {
        (None, None)
    };
    let divergence = compare(&reference.accounts, &env.accounts().await, &before);
    PointResult {
        spec,
        trigger,
        landed,
        second,
        restarts,
        not_converged,
        divergence,
        plan_after,
        readback_after,
        elapsed: started.elapsed(),
    }
}

/// Restarts `sync` until it exits 0; returns the runs made and, when none succeeded, why.
async fn restart(env: &Env) -> (usize, Option<String>) {
    let mut last = String::new();
    for attempt in 1..=MAX_RESTARTS {
        let ran = env.run(&["sync", "--output", "json"]).await;
        if ran.code == Some(0) {
            return (attempt, None);
        }
        let failed: Vec<String> = ran.json["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|action| action["result"] == "failed")
            .map(|action| {
                format!(
                    "{} {}: {}",
                    action["op"].as_str().unwrap_or("?"),
                    action["userName"].as_str().unwrap_or("?"),
                    action["error"].as_str().unwrap_or("?")
                )
            })
            .collect();
        last = format!(
            "exit {:?} after {attempt} restarts; failed: [{}]; stderr tail: {}",
            ran.code,
            failed.join("; "),
            ran.stderr
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    (MAX_RESTARTS, Some(last))
}

/// After convergence: the next `sync` plans nothing, and neither does a `--full` read-back dry
/// run (which would see an account created but not recorded as an orphan or an adoption).
async fn settled(env: &mut Env) -> (Option<String>, Option<String>) {
    let next = env.run(&["sync", "--output", "json"]).await;
    let plan_after = match next.code {
        Some(0) => pending(&next.json),
        code => Some(format!("exit {code:?}: {}", next.stderr)),
    };
    env.ws.reconcile = "read_back = true".into();
    let dry = env
        .run(&["sync", "--dry-run", "--full", "--output", "json"])
        .await;
    env.ws.reconcile = env.variant.reconcile();
    let readback_after = match dry.code {
        Some(0) => pending(&dry.json),
        code => Some(format!("exit {code:?}: {}", dry.stderr)),
    };
    (plan_after, readback_after)
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
        Err(_) => default,
    }
}

/// The summary table (Markdown, for RELIABILITY.md).
fn summary(results: &[PointResult], seed: u64, delay: Duration, wall: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Crash convergence: {} points, seed {seed}, proxy delay {} ms, {} jobs, wall time {:.0} s",
        results.len(),
        delay.as_millis(),
        env_number("CRASH_JOBS", 2),
        wall.as_secs_f64()
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| phase | points | kills landed | kills mid-write (1st or 2nd) | 2nd kills landed | restarts | not converged | duplicates | lost updates | unplanned deactivations | missed deactivations | next sync not empty |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let mut rows: Vec<(String, Vec<&PointResult>)> = SCENARIOS
        .iter()
        .map(|scenario| {
            (
                scenario.name().to_owned(),
                results
                    .iter()
                    .filter(|r| r.spec.scenario == *scenario)
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    rows.push(("**total**".to_owned(), results.iter().collect()));
    for (name, rows) in rows {
        let count = |f: &dyn Fn(&PointResult) -> usize| rows.iter().map(|r| f(r)).sum::<usize>();
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            rows.len(),
            count(&|r| usize::from(r.landed != Landed::RunOver)),
            count(&|r| {
                usize::from(r.landed.mid_write() || r.second.is_some_and(Landed::mid_write))
            }),
            count(&|r| usize::from(r.second.is_some_and(|s| s != Landed::RunOver))),
            count(&|r| r.restarts),
            count(&|r| usize::from(r.not_converged.is_some())),
            count(&|r| r.divergence.duplicates),
            count(&|r| r.divergence.lost_updates),
            count(&|r| r.divergence.unplanned_deactivations),
            count(&|r| r.divergence.missed_deactivations),
            count(&|r| usize::from(r.plan_after.is_some() || r.readback_after.is_some())),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| where the first kill landed | points |");
    let _ = writeln!(out, "|---|--:|");
    let mut landed: BTreeMap<Landed, usize> = BTreeMap::new();
    for result in results {
        *landed.entry(result.landed).or_default() += 1;
    }
    for (where_, n) in landed {
        let _ = writeln!(out, "| {} | {n} |", where_.label());
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| configuration | points |");
    let _ = writeln!(out, "|---|--:|");
    let mut variants: BTreeMap<String, usize> = BTreeMap::new();
    for result in results {
        *variants.entry(result.spec.variant.label()).or_default() += 1;
    }
    for (label, n) in variants {
        let _ = writeln!(out, "| {label} | {n} |");
    }
    out
}

/// The suite: `CRASH_POINTS` kill points (default 8), spread over the phases of a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_any_point_a_restart_converges() {
    let count = usize::try_from(env_number("CRASH_POINTS", 8)).expect("CRASH_POINTS");
    let seed = env_number("CRASH_SEED", 20_261_126);
    let jobs = usize::try_from(env_number("CRASH_JOBS", 2).max(1)).expect("CRASH_JOBS");
    let delay = Duration::from_millis(env_number("CRASH_DELAY_MS", 250));
    let wall = Instant::now();
    let specs = points(count, seed);

    let keys: BTreeSet<(Scenario, Variant)> = specs
        .iter()
        .map(|spec| (spec.scenario, spec.variant))
        .collect();
    let references: HashMap<(Scenario, Variant), Reference> = futures::stream::iter(keys)
        .map(|(scenario, variant)| async move {
            let reference = reference(scenario, variant, delay).await;
            eprintln!(
                "reference {:<10} {:<34} run {:.1}s, first SCIM request at {:.2}s, {} writes",
                scenario.name(),
                variant.label(),
                reference.total.as_secs_f64(),
                reference.first_request.as_secs_f64(),
                reference.writes
            );
            ((scenario, variant), reference)
        })
        .buffer_unordered(jobs)
        .collect()
        .await;

    let mut results: Vec<PointResult> = futures::stream::iter(specs)
        .map(|spec| {
            let reference = &references[&(spec.scenario, spec.variant)];
            async move {
                let result = run_point(spec, reference, delay).await;
                eprintln!("{}", result.line());
                result
            }
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    results.sort_by_key(|result| result.spec.index);

    let table = summary(&results, seed, delay, wall.elapsed());
    println!("\n{table}");
    if let Some(path) = std::env::var_os("CRASH_SUMMARY") {
        std::fs::write(&path, &table).expect("write CRASH_SUMMARY");
    }
    let diverged: Vec<String> = results
        .iter()
        .filter(|result| !result.ok())
        .map(PointResult::line)
        .collect();
    assert!(
        diverged.is_empty(),
        "{} of {} points did not converge (the summary table is in the output above):\n{}",
        diverged.len(),
        results.len(),
        diverged.join("\n")
    );
    let landed = results
        .iter()
        .filter(|result| result.landed != Landed::RunOver)
        .count();
    assert!(
        landed * 2 >= results.len(),
        "most kills must land before the run ends ({landed} of {}): the proxy is not slowing the runs\n{table}",
        results.len()
    );
    if results.iter().any(|result| result.spec.on_write.is_some()) {
        assert!(
            results.iter().any(|result| result.landed.mid_write()),
            "no kill landed between a write and its record\n{table}"
        );
    }
}

// ----- Deterministic windows -----------------------------------------------------------------

/// Kills the run under test of `scenario` just after SocialTalent answered its first `method`
/// write, restarts, and checks convergence against a reference.
async fn kill_after_first(scenario: Scenario, variant: Variant, method: &'static str) {
    let delay = Duration::from_millis(400);
    let reference = reference(scenario, variant, Duration::ZERO).await;
    let mut env = Env::new(scenario, variant).await;
    scenario.prepare(&mut env).await;
    let before: BTreeSet<String> = env.accounts().await.iter().map(user_name_key).collect();
    let proxy = Proxy::start(upstream_port(&env.direct), delay).await;
    env.route(Some(&proxy));
    let trigger = Trigger::AfterWrite {
        method: Some(method),
        nth: 1,
        extra: delay / 4,
    };
    let landed = killed_run(&env, &proxy, &trigger, "killed").await;
    assert_eq!(
        landed,
        Landed::WriteAnswered,
        "the kill must land while SocialTalent's answer to the {method} is held"
    );
    env.route(None);
    let (restarts, not_converged) = restart(&env).await;
    assert_eq!(
        not_converged,
        None,
        "{} ({}) killed after its first {method} was applied: the restarts never exit 0",
        scenario.name(),
        variant.label()
    );
    let (plan_after, readback_after) = settled(&mut env).await;
    assert_eq!(plan_after, None, "the sync after the restart still plans");
    assert_eq!(readback_after, None, "a read-back dry run still plans");
    let divergence = compare(&reference.accounts, &env.accounts().await, &before);
    assert_eq!(
        divergence.total(),
        0,
        "after {restarts} restarts SocialTalent differs from a run without kill: {:#?}",
        divergence.details
    );
}

/// A create applied by SocialTalent but never recorded: the restart's create meets 409 and
/// adopts the account (no duplicate), with and without read-back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_applied_but_not_recorded_is_adopted_on_restart() {
    for variant in [VARIANTS[0], VARIANTS[2]] {
        kill_after_first(Scenario::Create, variant, "POST").await;
    }
}

/// A rehire whose account was deleted on deactivation (DELETE, the default): the reactivation's
/// PUT answers 404, so the account is created again (POST). Killed after that POST was applied
/// but before the state recorded the new id, the restart must converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehire_created_again_but_not_recorded_converges_on_restart() {
    kill_after_first(Scenario::Rehire, VARIANTS[0], "POST").await;
}

/// An update applied by SocialTalent but not recorded, with read-back: the restart finds the
/// account already holding the desired values, so it plans nothing for that user — and the
/// state keeps the old `pushed` values. Every later full run must not keep reporting our own
/// write as drift in SocialTalent ("repaired", though nothing is sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_applied_but_not_recorded_is_not_reported_as_drift_on_every_run() {
    kill_after_first(Scenario::Update, VARIANTS[2], "PUT").await;
}

/// The same window with `drift = "report"`: the unrecorded update looks like a change made in
/// SocialTalent, so when the IdP later changes the value back, that change must still reach
/// SocialTalent (our own write is not someone else's drift to be respected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_applied_but_not_recorded_does_not_block_the_next_change_with_drift_report() {
    let reconcile = "read_back = true\ndrift = \"report\"";
    let history = async |env: &mut Env| {
        env.ws.reconcile = reconcile.to_owned();
        Scenario::Update.prepare(env).await;
    };
    // The reference: base → updated → base again, without a kill.
    let mut clean = Env::new(Scenario::Update, VARIANTS[2]).await;
    history(&mut clean).await;
    clean.sync_direct().await;
    clean.ws.write_directory(&example_directory());
    clean.sync_direct().await;
    let expected = by_user_name(&clean.accounts().await);

    let mut env = Env::new(Scenario::Update, VARIANTS[2]).await;
    history(&mut env).await;
    let delay = Duration::from_millis(400);
    let proxy = Proxy::start(upstream_port(&env.direct), delay).await;
    env.route(Some(&proxy));
    let trigger = Trigger::AfterWrite {
        method: Some("PUT"),
        nth: 1,
        extra: delay / 4,
    };
    let landed = killed_run(&env, &proxy, &trigger, "killed").await;
    assert_eq!(landed, Landed::WriteAnswered);
    env.route(None);
    let (_, not_converged) = restart(&env).await;
    assert_eq!(not_converged, None);
    // The IdP changes the values back.
    env.ws.write_directory(&example_directory());
    env.sync_direct().await;
    let divergence = compare(&expected, &env.accounts().await, &BTreeSet::new());
    assert_eq!(
        divergence.total(),
        0,
        "SocialTalent kept values the IdP no longer has: {:#?}",
        divergence.details
    );
}

#[test]
fn the_points_are_a_pure_function_of_the_seed_and_cover_every_phase() {
    let labels = |specs: &[PointSpec]| -> Vec<String> {
        specs
            .iter()
            .map(|spec| format!("{spec:?}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(labels(&points(50, 7)), labels(&points(50, 7)));
    assert_ne!(labels(&points(50, 7)), labels(&points(50, 8)));
    let specs = points(50, 7);
    for scenario in SCENARIOS {
        let n = specs.iter().filter(|s| s.scenario == scenario).count();
        assert!(n >= 8, "{} has {n} points of 50", scenario.name());
    }
    assert!(specs.iter().any(|s| s.second_kill.is_some()));
    assert!(specs.iter().any(|s| s.on_write.is_some()));
}
