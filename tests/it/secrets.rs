//! Secret hygiene (issue 7, SPEC §4 "Secrets never appear in logs, errors or reports"): the
//! real binary runs a wide set of commands and failure paths with recognisable secret values —
//! the SCIM token, an Okta API token, an Okta service app's private key (PEM) and the access
//! tokens and client assertions it leads to, an Entra client secret — given inline, through
//! `${ENV}` and through `*_file` (next to the configuration and in `$CREDENTIALS_DIRECTORY`).
//! Everything the program leaves behind is collected — stdout, stderr (text and JSON logs, up to
//! `-vv` trace), the JSON and text reports, `--dump` files, the daemon's log and HTTP endpoints,
//! and every byte of the state directory (sled files included) — and searched for the secrets
//! and for every line of the PEM body.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::EXAMPLE_MAPPING;
use crate::support::fake_graph::FakeGraph;
use crate::support::fake_okta::{FakeOkta, TestKey};
use crate::support::fake_onelogin::{CLIENT_ID as ONELOGIN_CLIENT_ID, FakeOneLogin};
use crate::support::fake_scim::{FakeScim, FaultKind, scim_error};

/// A recognisable secret: `SEKRET-<what>-<random>`.
fn sekret(what: &str) -> String {
    format!("SEKRET-{what}-{:016x}", rand::random::<u64>())
}

/// Everything the program printed or wrote, by where it came from.
#[derive(Default)]
struct Evidence {
    items: Vec<(String, Vec<u8>)>,
}

impl Evidence {
    fn add(&mut self, label: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.items.push((label.into(), bytes.into()));
    }

    fn output(&mut self, label: &str, output: &Output) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{label} panicked:\n{stderr}");
        self.add(format!("{label}: stdout"), output.stdout.clone());
        self.add(format!("{label}: stderr"), output.stderr.clone());
    }

    /// Every file under `dir`, as bytes.
    fn tree(&mut self, label: &str, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                self.tree(label, &path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                self.add(format!("{label}: {}", path.display()), bytes);
            }
        }
    }

    /// Asserts that no secret (and no PEM body line) appears anywhere, in plain form or
    /// base64-encoded (standard or URL-safe), and that no JWT appears at all.
    fn assert_clean(&self, secrets: &[String]) {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        assert!(!self.items.is_empty(), "nothing collected");
        // A secret inside a longer base64 text (`Basic base64(id:secret)`, a base64 trace of a
        // request) shows as one of three strings, by its offset modulo 3: each is a needle.
        let base64_forms = |secret: &str| -> Vec<Vec<u8>> {
            let mut forms = Vec::new();
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                for shift in 0..3 {
                    let mut bytes = vec![0_u8; shift];
                    bytes.extend_from_slice(secret.as_bytes());
                    let encoded = engine.encode(&bytes);
                    let start = [0, 2, 3][shift];
                    let end = encoded.len() - usize::from(bytes.len() % 3 != 0);
                    forms.push(encoded.as_bytes()[start..end].to_vec());
                }
            }
            forms
        };
        let needles: Vec<Vec<u8>> = secrets
            .iter()
            .filter(|secret| secret.len() >= 12)
            .flat_map(|secret| {
                let mut forms = vec![secret.clone().into_bytes()];
                forms.extend(base64_forms(secret));
                forms
            })
            .collect();
        for (label, bytes) in &self.items {
            for needle in &needles {
                if bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_slice())
                {
                    panic!(
                        "a secret ({}…) appears in {label}:\n{}",
                        String::from_utf8_lossy(&needle[..needle.len().min(12)]),
                        String::from_utf8_lossy(bytes)
                    );
                }
            }
            if let Some(jwt) = find_jwt(bytes) {
                panic!(
                    "a JWT ({jwt}) appears in {label}:\n{}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }
}

/// The first JWT-shaped string in `bytes` (`eyJ…` with two dots among base64url characters).
fn find_jwt(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let is_b64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("eyJ") {
        let candidate: String = rest[start..]
            .chars()
            .take_while(|c| is_b64url(*c) || *c == '.')
            .collect();
        let segments: Vec<&str> = candidate.split('.').collect();
        if segments.len() >= 3 && segments[..3].iter().all(|s| s.len() >= 2) {
            return Some(candidate.chars().take(24).collect());
        }
        rest = &rest[start + 3..];
    }
    None
}

/// The secret-looking lines of a PEM document (its base64 body), each a needle of its own.
fn pem_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("-----") && line.len() >= 16)
        .map(str::to_owned)
        .collect()
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A directory with a configuration and a state, and a credentials directory beside it.
struct Place {
    dir: tempfile::TempDir,
}

impl Place {
    fn new() -> Place {
        let place = Place {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::create_dir(place.credentials()).expect("mkdir creds");
        place
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn credentials(&self) -> PathBuf {
        self.dir.path().join("creds")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Runs the binary here with `config` (written as config.toml) and `env`.
    fn run(&self, config: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        self.write("config.toml", config);
        let run = || {
            let mut command =
                std::process::Command::new(assert_cmd::cargo::cargo_bin("socialtalent-sync"));
            command
                .current_dir(self.path())
                .env_remove("RUST_LOG")
                .env_remove("SOCIALTALENT_SYNC_CONFIG")
                .env_remove("STATE_DIRECTORY")
                .env_remove("CREDENTIALS_DIRECTORY")
                .env_remove("NOTIFY_SOCKET")
                .envs(env.iter().copied())
                .arg("--config")
                .arg(self.path().join("config.toml"))
                .args(args);
            command.output().expect("the binary runs")
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        }
    }
}

/// How a secret reaches the program.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    Inline,
    Env,
    /// `*_file` relative to the configuration's directory.
    FileBeside,
    /// `*_file` found in `$CREDENTIALS_DIRECTORY`.
    Credentials,
}

const DELIVERIES: [Delivery; 4] = [
    Delivery::Inline,
    Delivery::Env,
    Delivery::FileBeside,
    Delivery::Credentials,
];

/// The configuration line for secret `key` holding `value`, and the environment it needs.
fn secret_line(
    place: &Place,
    delivery: Delivery,
    key: &str,
    value: &str,
) -> (String, Vec<(String, String)>) {
    let var = format!("SECRETS_TEST_{}", key.to_uppercase());
    let file = format!("{key}-secret");
    match delivery {
        Delivery::Inline => (format!("{key} = \"{value}\""), Vec::new()),
        Delivery::Env => (
            format!("{key} = \"${{{var}}}\""),
            vec![(var, value.to_owned())],
        ),
        Delivery::FileBeside => {
            place.write(&file, &format!("{value}\n"));
            (format!("{key}_file = \"{file}\""), Vec::new())
        }
        Delivery::Credentials => {
            std::fs::write(place.credentials().join(&file), value).expect("write credential");
            (
                format!("{key}_file = \"{file}\""),
                vec![(
                    "CREDENTIALS_DIRECTORY".to_owned(),
                    place.credentials().display().to_string(),
                )],
            )
        }
    }
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A configuration: `source`, the target at `base_url` with `token_line`, a state in `state/`.
fn config(source: &str, base_url: &str, token_line: &str, extra: &str) -> String {
    format!(
        "{source}\n[target]\nbase_url = \"{base_url}\"\n{token_line}\nrequests_per_second = 200.0\nburst = 20\nmax_retries = 1\ntimeout = \"5s\"\n\n[state]\npath = \"state\"\n\n[reconcile]\nread_back = false\n\n{extra}\n{EXAMPLE_MAPPING}"
    )
}

const FILE_SOURCE: &str = "[source]\nkind = \"file\"\n[source.file]\npath = \"directory.json\"\n";

fn directory(title: &str) -> String {
    json!([
        {"id": "S1", "login": "ana@secrets.example", "email": "ana@secrets.example", "given_name": "Ana",
         "family_name": "Li", "active": true, "department": "Sales", "title": title,
         "groups": ["SocialTalent"], "isManager": true},
        {"id": "S2", "login": "bo@secrets.example", "email": "bo@secrets.example", "given_name": "Bo",
         "family_name": "Berg", "active": true, "department": "Sales", "title": "Recruiter",
         "manager_id": "S1", "groups": ["SocialTalent", "LP Onboarding"]},
        {"id": "S3", "login": "cy@secrets.example", "email": "cy@secrets.example", "active": true,
         "title": "No department", "groups": ["SocialTalent"]},
    ])
    .to_string()
}

/// Asserts the exit code of a run and records its output.
fn expect(evidence: &mut Evidence, label: &str, output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{label}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    evidence.output(label, output);
}

// ─── The SCIM token ────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scim_token_never_appears_whatever_the_command_or_the_failure() {
    for delivery in DELIVERIES {
        let token = sekret("scim");
        let fake = FakeScim::start_with_token(&token).await;
        let place = Place::new();
        place.write("directory.json", &directory("Recruiter"));
        let (line, env) = secret_line(&place, delivery, "token", &token);
        let env = env_refs(&env);
        let good = config(FILE_SOURCE, &fake.base_url, &line, "");
        let mut evidence = Evidence::default();
        // Every command with the token from the environment; the essential ones for the others.
        let every = matches!(delivery, Delivery::Env);
        let essential = [
            "check-config",
            "sync -vv",
            "preview --apply",
            "sync 401 echoing the token",
            "status after failures",
        ];
        let mut step = |label: &str, config: &str, args: &[&str], code: i32| {
            if !every && !essential.contains(&label) {
                return;
            }
            let output = place.run(config, &env, args);
            expect(
                &mut evidence,
                &format!("{delivery:?} {label}"),
                &output,
                code,
            );
        };
        step("check-config", &good, &["check-config"], 0);
        step(
            "check-config --connect",
            &good,
            &["check-config", "--connect"],
            0,
        );
        step(
            "dry run",
            &good,
            &["sync", "--dry-run", "--output", "json", "-vv"],
            0,
        );
        step(
            "dump",
            &good,
            &["sync", "--dry-run", "--dump", "dump", "--output", "json"],
            0,
        );
        step("sync -vv", &good, &["sync", "--output", "json", "-vv"], 0);
        place.write("directory.json", &directory("Team Lead"));
        step(
            "sync json logs",
            &good,
            &["--log-format", "json", "-vv", "sync", "--output", "text"],
            0,
        );
        step(
            "preview",
            &good,
            &["preview", "S2", "--output", "json", "-vv"],
            0,
        );
        step(
            "preview text",
            &good,
            &["preview", "ana@secrets.example"],
            0,
        );
        place.write("directory.json", &directory("Director"));
        step(
            "preview --apply",
            &good,
            &["preview", "S1", "--apply", "-vv"],
            0,
        );
        step("status", &good, &["status"], 0);
        step("status json", &good, &["status", "--output", "json"], 0);

        // The target refuses the token (401), once with an error that quotes the token back.
        fake.fail_all(401, Vec::new());
        place.write("directory.json", &directory("Chief"));
        step("sync 401", &good, &["sync", "--output", "json", "-vv"], 1);
        step(
            "check-config --connect 401",
            &good,
            &["check-config", "--connect"],
            1,
        );
        fake.heal();
        fake.fault(
            None,
            None,
            usize::MAX,
            FaultKind::Status {
                status: 401,
                headers: Vec::new(),
                body: scim_error(
                    401,
                    None,
                    Some(&format!(
                        "the bearer token {token} is not valid for this tenant"
                    )),
                )
                .to_string(),
            },
        );
        step(
            "sync 401 echoing the token",
            &good,
            &["--log-format", "json", "-vv", "sync", "--output", "json"],
            1,
        );
        step(
            "check-config --connect echo",
            &good,
            &["check-config", "--connect", "-vv"],
            1,
        );
        step(
            "status after failures",
            &good,
            &["status", "--output", "json"],
            0,
        );
        fake.heal();

        // The target cannot be reached.
        let closed = config(
            FILE_SOURCE,
            &format!("http://127.0.0.1:{}/v2", closed_port()),
            &line,
            "",
        );
        step(
            "sync unreachable",
            &closed,
            &["sync", "--output", "json", "-vv"],
            1,
        );

        evidence.tree(&format!("{delivery:?} state"), &place.path().join("state"));
        evidence.tree(&format!("{delivery:?} dump"), &place.path().join("dump"));
        evidence.assert_clean(std::slice::from_ref(&token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_never_echo_the_secrets_written_in_them() {
    let token = sekret("scim");
    let okta_token = sekret("okta");
    let place = Place::new();
    place.write("directory.json", &directory("Recruiter"));
    let url = "http://127.0.0.1:9/v2";
    let mut evidence = Evidence::default();
    let okta = |extra: &str| {
        format!(
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"http://127.0.0.1:9\"\ntoken = \"{okta_token}\"\n{extra}\n"
        )
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "unknown key holding the secret",
            config(FILE_SOURCE, url, &format!("tokne = \"{token}\""), ""),
        ),
        (
            "both token and token_file",
            config(
                FILE_SOURCE,
                url,
                &format!("token = \"{token}\"\ntoken_file = \"t\""),
                "",
            ),
        ),
        (
            "token of the wrong type",
            config(FILE_SOURCE, url, &format!("token = [\"{token}\"]"), ""),
        ),
        (
            "token as a table",
            config(
                FILE_SOURCE,
                url,
                &format!("token = {{ value = \"{token}\" }}"),
                "",
            ),
        ),
        (
            "unterminated token string",
            config(FILE_SOURCE, url, &format!("token = \"{token}"), ""),
        ),
        (
            "junk after the token",
            config(FILE_SOURCE, url, &format!("token = \"{token}\" junk"), ""),
        ),
        (
            "token given twice",
            config(
                FILE_SOURCE,
                url,
                &format!("token = \"{token}\"\ntoken = \"{token}\""),
                "",
            ),
        ),
        (
            "a bad mapping with inline secrets",
            config(
                &okta(""),
                url,
                &format!("token = \"{token}\""),
                "[scope]\nwhen = \"user.active }} x\"\n",
            ),
        ),
        (
            "okta token and client_id together",
            config(
                &okta("client_id = \"0oa1\"\nprivate_key_file = \"k.pem\""),
                url,
                &format!("token = \"{token}\""),
                "",
            ),
        ),
        (
            "okta token of the wrong type",
            config(
                &format!(
                    "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"http://127.0.0.1:9\"\ntoken = {{ secret = \"{okta_token}\" }}\n"
                ),
                url,
                &format!("token = \"{token}\""),
                "",
            ),
        ),
        (
            "okta org_url that is not allowed",
            config(
                &format!(
                    "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"http://example.okta.com\"\ntoken = \"{okta_token}\"\n"
                ),
                url,
                &format!("token = \"{token}\""),
                "",
            ),
        ),
    ];
    for (label, text) in &cases {
        for args in [
            vec!["check-config"],
            vec!["sync", "--output", "json", "-vv"],
            vec!["--log-format", "json", "run"],
        ] {
            let output = place.run(text, &[], &args);
            expect(&mut evidence, &format!("{label} {args:?}"), &output, 2);
        }
    }
    // A configuration with a missing secret file and an empty one.
    let missing = config(FILE_SOURCE, url, "token_file = \"nope\"", "");
    let output = place.run(&missing, &[], &["check-config"]);
    expect(&mut evidence, "missing token file", &output, 2);
    place.write("empty", "");
    let empty = config(FILE_SOURCE, url, "token_file = \"empty\"", "");
    let output = place.run(&empty, &[], &["sync"]);
    expect(&mut evidence, "empty token file", &output, 2);
    evidence.assert_clean(&[token, okta_token]);
}

// ─── The daemon ────────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_never_logs_or_serves_the_secrets() {
    let token = sekret("scim");
    let fake = FakeScim::start_with_token(&token).await;
    let place = Place::new();
    place.write("directory.json", &directory("Recruiter"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let (line, env) = secret_line(&place, Delivery::Env, "token", &token);
    let text = config(
        FILE_SOURCE,
        &fake.base_url,
        &line,
        &format!(
            "[schedule]\ncron = \"* * * * * *\"\nfull_cron = \"0 0 3 * * *\"\n\n[observability]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    );
    place.write("config.toml", &text);
    let log = |name: &str| std::fs::File::create(place.path().join(name)).expect("log");
    let mut daemon = std::process::Command::new(assert_cmd::cargo::cargo_bin("socialtalent-sync"))
        .current_dir(place.path())
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["--config", "config.toml", "-vv", "run"])
        .stdout(log("daemon.out"))
        .stderr(log("daemon.err"))
        .spawn()
        .expect("spawn the daemon");
    let mut evidence = Evidence::default();
    // Let it run a few syncs, one of them refused with an error that quotes the token.
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.users().len() < 2 {
        assert!(Instant::now() < deadline, "the daemon did not sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    place.write("directory.json", &directory("Team Lead"));
    fake.fault(
        None,
        None,
        usize::MAX,
        FaultKind::Status {
            status: 401,
            headers: Vec::new(),
            body: scim_error(401, None, Some(&format!("bad token {token}"))).to_string(),
        },
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for path in ["/healthz", "/metrics", "/status"] {
        if let Ok(response) = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
        {
            let body = response.bytes().await.unwrap_or_default();
            evidence.add(format!("daemon GET {path}"), body.to_vec());
        }
    }
    let status = place.run(&text, &[], &["status", "--output", "json"]);
    expect(&mut evidence, "status while the daemon runs", &status, 0);
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let pid = libc::pid_t::try_from(daemon.id()).expect("pid");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = daemon.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            panic!("the daemon did not stop");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0));
    for name in ["daemon.out", "daemon.err"] {
        let bytes = std::fs::read(place.path().join(name)).expect("log");
        assert!(!String::from_utf8_lossy(&bytes).contains("panicked"));
        evidence.add(name, bytes);
    }
    let err = std::fs::read_to_string(place.path().join("daemon.err")).expect("log");
    assert!(err.contains("401"), "the refused runs are logged: {err}");
    evidence.tree("daemon state", &place.path().join("state"));
    evidence.assert_clean(&[token]);
}

// ─── Okta ──────────────────────────────────────────────────────────────────────────────────────

async fn okta_org() -> FakeOkta {
    let okta = FakeOkta::start().await;
    okta.add_group("00g1", "SocialTalent");
    for (i, name) in ["ana", "bo", "cy"].iter().enumerate() {
        let id = format!("00u{i}");
        let address = format!("{name}@okta.secrets.example");
        okta.add_user(
            &id,
            "ACTIVE",
            json!({"login": address, "email": address, "firstName": name, "lastName": "Okta",
                   "department": "Sales", "title": "Recruiter"}),
        );
        okta.add_member("00g1", &id);
    }
    okta
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_tokens_never_appear_good_or_bad() {
    let okta = okta_org().await;
    let scim_token = sekret("scim");
    let fake = FakeScim::start_with_token(&scim_token).await;
    let mut evidence = Evidence::default();
    let mut secrets = vec![scim_token.clone(), okta.api_token().to_owned()];
    for delivery in DELIVERIES {
        let place = Place::new();
        let scim_line = "token = \"${SECRETS_TEST_SCIM}\"";
        // A token Okta does not know.
        let bad = sekret("okta");
        secrets.push(bad.clone());
        let (line, mut env) = secret_line(&place, delivery, "token", &bad);
        env.push(("SECRETS_TEST_SCIM".into(), scim_token.clone()));
        let source = format!(
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\n{line}\n",
            okta.url
        );
        let text = config(&source, &fake.base_url, scim_line, "");
        let every = matches!(delivery, Delivery::Env);
        let bad_runs = [
            vec!["sync", "--output", "json", "-vv"],
            vec!["--log-format", "json", "-vv", "sync", "--dry-run"],
            vec!["check-config", "--connect", "-vv"],
            vec!["preview", "00u1"],
        ];
        for args in bad_runs.iter().take(if every { 4 } else { 1 }) {
            let output = place.run(&text, &env_refs(&env), args);
            expect(
                &mut evidence,
                &format!("{delivery:?} bad okta token {args:?}"),
                &output,
                1,
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("source.okta.token"),
                "names the credential: {stderr}"
            );
        }
        // The real token, delivered the same way: everything works.
        let place = Place::new();
        let (line, mut env) = secret_line(&place, delivery, "token", okta.api_token());
        env.push(("SECRETS_TEST_SCIM".into(), scim_token.clone()));
        let source = format!(
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\n{line}\n",
            okta.url
        );
        let text = config(&source, &fake.base_url, scim_line, "");
        let good_runs = [
            vec!["sync", "--output", "json", "-vv"],
            vec!["check-config", "--connect", "-vv"],
            vec!["preview", "00u2", "--output", "json", "-vv"],
            vec!["--log-format", "json", "-vv", "status"],
        ];
        for args in good_runs.iter().take(if every { 4 } else { 1 }) {
            let output = place.run(&text, &env_refs(&env), args);
            expect(
                &mut evidence,
                &format!("{delivery:?} okta token {args:?}"),
                &output,
                0,
            );
        }
        evidence.tree(
            &format!("{delivery:?} okta state"),
            &place.path().join("state"),
        );
    }
    evidence.assert_clean(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_okta_private_key_and_the_tokens_it_earns_never_appear() {
    let okta = okta_org().await;
    let key = TestKey::ec_p256();
    // A second EC key (an RSA key takes seconds to generate in a debug build).
    let second = TestKey::ec_p256();
    okta.register_service_app("0oa-secrets", &key.public_pem, true);
    okta.register_service_app("0oa-secrets-2", &second.public_pem, false);
    let scim_token = sekret("scim");
    let fake = FakeScim::start_with_token(&scim_token).await;
    let mut evidence = Evidence::default();
    let mut secrets = vec![scim_token.clone()];
    secrets.extend(pem_lines(&key.private_pem));
    secrets.extend(pem_lines(&second.private_pem));
    let scim_line = "token = \"${SECRETS_TEST_SCIM}\"";
    let source = |client_id: &str| {
        format!(
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\nclient_id = \"{client_id}\"\nprivate_key_file = \"okta-key.pem\"\nscopes = [\"okta.users.read\", \"okta.groups.read\", \"okta.logs.read\"]\n",
            okta.url
        )
    };
    for (delivery, client_id, pem) in [
        (Delivery::FileBeside, "0oa-secrets", &key.private_pem),
        (Delivery::Credentials, "0oa-secrets-2", &second.private_pem),
    ] {
        let place = Place::new();
        let mut env = vec![("SECRETS_TEST_SCIM".to_owned(), scim_token.clone())];
        match delivery {
            Delivery::Credentials => {
                std::fs::write(place.credentials().join("okta-key.pem"), pem).expect("key");
                env.push((
                    "CREDENTIALS_DIRECTORY".into(),
                    place.credentials().display().to_string(),
                ));
            }
            _ => {
                place.write("okta-key.pem", pem);
            }
        }
        let text = config(&source(client_id), &fake.base_url, scim_line, "");
        for args in [
            vec!["check-config", "--connect", "-vv"],
            vec!["--log-format", "json", "-vv", "sync", "--output", "json"],
            vec!["preview", "00u1", "-vv"],
            vec!["status", "--output", "json"],
        ] {
            let output = place.run(&text, &env_refs(&env), &args);
            expect(&mut evidence, &format!("{client_id} {args:?}"), &output, 0);
        }
        evidence.tree(&format!("{client_id} state"), &place.path().join("state"));
    }
    // The access tokens Okta issued and the client assertions that earned them are secrets too.
    for request in okta.requests() {
        if let Some(authorization) = request.header("authorization")
            && let Some((_, credential)) = authorization.split_once(' ')
            && !credential.trim().is_empty()
        {
            secrets.push(credential.trim().to_owned());
        }
        if request.path.ends_with("/token") {
            for (name, value) in url::form_urlencoded::parse(&request.body) {
                if name == "client_assertion" {
                    secrets.push(value.into_owned());
                }
            }
        }
    }
    assert!(secrets.len() > 4, "no access token was observed");

    // Key errors: a file that is no key (holding another secret), a PEM whose body is not a
    // key, a public key, a key the app does not know, and no file at all.
    let not_a_key = sekret("keyfile");
    let fake_body = format!(
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg{}\n-----END PRIVATE KEY-----\n",
        sekret("pembody").replace('-', "A")
    );
    let stranger = TestKey::ec_p256();
    secrets.push(not_a_key.clone());
    secrets.extend(pem_lines(&fake_body));
    secrets.extend(pem_lines(&stranger.private_pem));
    // A key that cannot be used is a configuration problem (exit 2) for check-config, as a
    // missing one is (SPEC §3); a key Okta does not know fails only when Okta is asked.
    for (label, content, sync_code, check_code) in [
        ("not a key", Some(not_a_key.as_str()), 1, 2),
        ("a PEM that is not a key", Some(fake_body.as_str()), 1, 2),
        ("a public key", Some(key.public_pem.as_str()), 1, 2),
        (
            "a key the app does not know",
            Some(stranger.private_pem.as_str()),
            1,
            1,
        ),
        ("no key file", None, 2, 2),
    ] {
        let place = Place::new();
        if let Some(content) = content {
            place.write("okta-key.pem", content);
        }
        let env = [("SECRETS_TEST_SCIM", scim_token.as_str())];
        let text = config(&source("0oa-secrets"), &fake.base_url, scim_line, "");
        for (args, code) in [
            (vec!["sync", "--output", "json", "-vv"], sync_code),
            (
                vec!["--log-format", "json", "-vv", "check-config", "--connect"],
                check_code,
            ),
        ] {
            let output = place.run(&text, &env, &args);
            expect(&mut evidence, &format!("{label} {args:?}"), &output, code);
        }
    }
    evidence.assert_clean(&secrets);
}

// ─── Entra ID ──────────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_client_secret_never_appears() {
    const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
    let graph = FakeGraph::start().await;
    let secret = sekret("entra");
    graph.register_app_secret(CLIENT_ID, &secret);
    graph.add_user(
        "u1",
        json!({"userPrincipalName": "ana@contoso.example", "mail": "ana@contoso.example",
               "givenName": "Ana", "surname": "Li", "accountEnabled": true, "department": "Sales"}),
    );
    graph.add_group("g1", "SocialTalent");
    graph.add_member("g1", "u1");
    let scim_token = sekret("scim");
    let fake = FakeScim::start_with_token(&scim_token).await;
    let mut evidence = Evidence::default();
    let mut secrets = vec![secret.clone(), scim_token.clone()];
    for delivery in DELIVERIES {
        for (label, value, code) in [("good", secret.clone(), 0), ("wrong", sekret("entra"), 1)] {
            secrets.push(value.clone());
            let place = Place::new();
            let (line, mut env) = secret_line(&place, delivery, "client_secret", &value);
            env.push(("SECRETS_TEST_SCIM".into(), scim_token.clone()));
            let source = format!(
                "[source]\nkind = \"entra\"\n[source.entra]\ntenant_id = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n{line}\ngraph_url = \"{url}\"\nlogin_url = \"{url}\"\n",
                graph.tenant(),
                url = graph.url
            );
            let text = config(
                &source,
                &fake.base_url,
                "token = \"${SECRETS_TEST_SCIM}\"",
                "",
            );
            let every = matches!(delivery, Delivery::Env);
            let runs = [
                vec!["--log-format", "json", "-vv", "sync", "--output", "json"],
                vec!["check-config", "--connect", "-vv"],
                vec!["preview", "ana@contoso.example", "-vv"],
            ];
            for args in runs.iter().take(if every { 3 } else { 1 }) {
                let output = place.run(&text, &env_refs(&env), args);
                expect(
                    &mut evidence,
                    &format!("{delivery:?} {label} entra secret {args:?}"),
                    &output,
                    code,
                );
            }
            evidence.tree(
                &format!("{delivery:?} {label} entra state"),
                &place.path().join("state"),
            );
        }
    }
    for request in graph.requests() {
        if let Some(authorization) = request.header("authorization")
            && let Some((_, credential)) = authorization.split_once(' ')
        {
            secrets.push(credential.trim().to_owned());
        }
    }
    evidence.assert_clean(&secrets);
}

// ─── Answers that quote the request back (issue 15) ────────────────────────────────────────────

/// The credentials a fake Okta received: API tokens and access tokens (`Authorization`), DPoP
/// proofs, and client assertions.
fn okta_credentials(okta: &FakeOkta) -> Vec<String> {
    let mut seen = Vec::new();
    for request in okta.requests() {
        if let Some(authorization) = request.header("authorization")
            && let Some((_, credential)) = authorization.split_once(' ')
        {
            seen.push(credential.trim().to_owned());
        }
        if let Some(proof) = request.header("dpop") {
            seen.push(proof.to_owned());
        }
        for (name, value) in url::form_urlencoded::parse(&request.body) {
            if name == "client_assertion" {
                seen.push(value.into_owned());
            }
        }
    }
    seen
}

/// The credentials a fake Graph received: access tokens, client secrets, client assertions.
fn graph_credentials(graph: &FakeGraph) -> Vec<String> {
    let mut seen = Vec::new();
    for request in graph.requests() {
        if let Some(authorization) = request.header("authorization")
            && let Some((_, credential)) = authorization.split_once(' ')
        {
            seen.push(credential.trim().to_owned());
        }
        for (name, value) in request.form() {
            if name == "client_secret" || name == "client_assertion" {
                seen.push(value);
            }
        }
    }
    seen
}

/// The statuses a quoting answer comes with, and how many requests get it: 500 only twice, so
/// that the retries (logged at `-vv`) end in a success.
const QUOTING: [(u16, usize); 3] = [(401, usize::MAX), (403, usize::MAX), (500, 2)];

/// Runs the commands of a failing edge: a sync with JSON logs and the JSON report, a sync with
/// text logs and the text report, `check-config --connect`, and `status` (the run records).
fn run_quoted_case(
    evidence: &mut Evidence,
    place: &Place,
    label: &str,
    text: &str,
    env: &[(&str, &str)],
    status: u16,
) {
    for args in [
        vec!["--log-format", "json", "-vv", "sync", "--output", "json"],
        vec!["-vv", "sync", "--output", "text"],
        vec!["check-config", "--connect", "-vv"],
        vec!["--log-format", "json", "-vv", "status", "--output", "json"],
        vec!["status"],
    ] {
        let output = place.run(text, env, &args);
        let code = output.status.code();
        if status != 500 && args.contains(&"sync") {
            assert_eq!(
                code,
                Some(1),
                "{label} {args:?}: the refused run fails\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        evidence.output(&format!("{label} {args:?}"), &output);
    }
    evidence.tree(&format!("{label} state"), &place.path().join("state"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scim_edge_never_repeats_a_quoted_token() {
    let mut evidence = Evidence::default();
    let mut secrets = Vec::new();
    for (index, (status, times)) in QUOTING.into_iter().enumerate() {
        let delivery = DELIVERIES[index % DELIVERIES.len()];
        let token = sekret("scim");
        secrets.push(token.clone());
        let fake = FakeScim::start_with_token(&token).await;
        // A 500 only once: the configuration allows one retry.
        let times = if status == 500 { 1 } else { times };
        fake.fault(None, None, times, FaultKind::Echo { status });
        let place = Place::new();
        place.write("directory.json", &directory("Recruiter"));
        let (line, env) = secret_line(&place, delivery, "token", &token);
        let text = config(FILE_SOURCE, &fake.base_url, &line, "");
        run_quoted_case(
            &mut evidence,
            &place,
            &format!("SCIM {status} {delivery:?}"),
            &text,
            &env_refs(&env),
            status,
        );
        assert!(
            fake.requests().len() > 1,
            "the target was asked and answered"
        );
    }
    evidence.assert_clean(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_okta_edges_never_repeat_a_quoted_token_assertion_or_proof() {
    let scim_token = sekret("scim");
    let fake = FakeScim::start_with_token(&scim_token).await;
    let scim_line = "token = \"${SECRETS_TEST_SCIM}\"";
    let mut evidence = Evidence::default();
    let mut secrets = vec![scim_token.clone()];
    for (index, (status, times)) in QUOTING.into_iter().enumerate() {
        let delivery = DELIVERIES[index % DELIVERIES.len()];
        // The API with an API token (SSWS).
        let okta = okta_org().await;
        let api_token = sekret("okta");
        secrets.push(api_token.clone());
        okta.echo_next("/api/v1/", status, times);
        let place = Place::new();
        let (line, mut env) = secret_line(&place, delivery, "token", &api_token);
        env.push(("SECRETS_TEST_SCIM".into(), scim_token.clone()));
        let source = format!(
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\n{line}\n",
            okta.url
        );
        let text = config(&source, &fake.base_url, scim_line, "");
        run_quoted_case(
            &mut evidence,
            &place,
            &format!("Okta API (SSWS) {status} {delivery:?}"),
            &text,
            &env_refs(&env),
            status,
        );
        secrets.extend(okta_credentials(&okta));

        // A service app with DPoP: the token endpoint, then the API with the access token.
        for prefix in ["/oauth2/v1/token", "/api/v1/"] {
            let okta = okta_org().await;
            let key = TestKey::ec_p256();
            okta.register_service_app("0oa-quoted", &key.public_pem, true);
            okta.echo_next(prefix, status, times);
            secrets.extend(pem_lines(&key.private_pem));
            let place = Place::new();
            let mut env = vec![("SECRETS_TEST_SCIM".to_owned(), scim_token.clone())];
            if matches!(delivery, Delivery::Credentials) {
                std::fs::write(place.credentials().join("okta-key.pem"), &key.private_pem)
                    .expect("key");
                env.push((
                    "CREDENTIALS_DIRECTORY".into(),
                    place.credentials().display().to_string(),
                ));
            } else {
                place.write("okta-key.pem", &key.private_pem);
            }
            let source = format!(
                "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\nclient_id = \"0oa-quoted\"\nprivate_key_file = \"okta-key.pem\"\n",
                okta.url
            );
            let text = config(&source, &fake.base_url, scim_line, "");
            run_quoted_case(
                &mut evidence,
                &place,
                &format!("Okta service app {prefix} {status}"),
                &text,
                &env_refs(&env),
                status,
            );
            let credentials = okta_credentials(&okta);
            assert!(
                credentials.iter().any(|c| c.starts_with("eyJ")),
                "assertions and proofs were sent"
            );
            secrets.extend(credentials);
        }
    }
    evidence.assert_clean(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entra_edges_never_repeat_a_quoted_secret_assertion_or_token() {
    const CLIENT_ID: &str = "11111111-2222-3333-4444-666666666666";
    let scim_token = sekret("scim");
    let fake = FakeScim::start_with_token(&scim_token).await;
    let scim_line = "token = \"${SECRETS_TEST_SCIM}\"";
    let cert = crate::support::fake_graph::TestCert::fixture();
    let mut evidence = Evidence::default();
    let mut secrets = vec![scim_token.clone()];
    secrets.extend(pem_lines(&cert.key_pem));
    let graph_org = || async {
        let graph = FakeGraph::start().await;
        graph.add_user(
            "u1",
            json!({"userPrincipalName": "ana@contoso.example", "mail": "ana@contoso.example",
                   "givenName": "Ana", "surname": "Li", "accountEnabled": true,
                   "department": "Sales"}),
        );
        graph.add_group("g1", "SocialTalent");
        graph.add_member("g1", "u1");
        graph
    };
    for (index, (status, times)) in QUOTING.into_iter().enumerate() {
        let delivery = DELIVERIES[index % DELIVERIES.len()];
        for (edge, use_certificate) in [
            ("token", false),
            ("token", true),
            ("/v1.0/", false),
            ("/v1.0/", true),
        ] {
            let graph = graph_org().await;
            let prefix = if edge == "token" {
                format!("/{}/oauth2/", graph.tenant())
            } else {
                edge.to_owned()
            };
            graph.echo_next(&prefix, status, times);
            let place = Place::new();
            let (credential_lines, mut env) = if use_certificate {
                graph.register_app_certificate(CLIENT_ID, &cert.cert_pem);
                let (key_line, env) = secret_line(&place, delivery, "private_key", &cert.key_pem);
                let key_line = if key_line.starts_with("private_key_file") {
                    key_line
                } else {
                    // Only a file can hold the key.
                    place.write("private_key-secret", &cert.key_pem);
                    "private_key_file = \"private_key-secret\"".to_owned()
                };
                place.write("entra-cert.pem", &cert.cert_pem);
                (
                    format!("certificate_file = \"entra-cert.pem\"\n{key_line}"),
                    env,
                )
            } else {
                let secret = sekret("entra");
                secrets.push(secret.clone());
                graph.register_app_secret(CLIENT_ID, &secret);
                secret_line(&place, delivery, "client_secret", &secret)
            };
            env.retain(|(name, _)| !name.starts_with("SECRETS_TEST_PRIVATE_KEY"));
            env.push(("SECRETS_TEST_SCIM".into(), scim_token.clone()));
            let source = format!(
                "[source]\nkind = \"entra\"\n[source.entra]\ntenant_id = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n{credential_lines}\ngraph_url = \"{url}\"\nlogin_url = \"{url}\"\n",
                graph.tenant(),
                url = graph.url
            );
            let text = config(&source, &fake.base_url, scim_line, "");
            run_quoted_case(
                &mut evidence,
                &place,
                &format!("Entra {prefix} certificate={use_certificate} {status} {delivery:?}"),
                &text,
                &env_refs(&env),
                status,
            );
            secrets.extend(graph_credentials(&graph));
        }
    }
    evidence.assert_clean(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_onelogin_edges_never_repeat_a_quoted_secret_or_token() {
    let scim_token = sekret("scim");
    let fake = FakeScim::start_with_token(&scim_token).await;
    let scim_line = "token = \"${SECRETS_TEST_SCIM}\"";
    let mut evidence = Evidence::default();
    let mut secrets = vec![scim_token.clone()];
    for (index, (status, times)) in QUOTING.into_iter().enumerate() {
        let delivery = DELIVERIES[index % DELIVERIES.len()];
        for prefix in ["/auth/oauth2/", "/api/"] {
            let onelogin = FakeOneLogin::start().await;
            onelogin.add_role(10, "SocialTalent");
            onelogin.add_user(
                101,
                json!({"username": "ana", "email": "ana@northwind.example", "firstname": "Ana",
                       "lastname": "Li", "department": "Sales", "role_ids": [10]}),
            );
            let secret = sekret("onelogin");
            secrets.push(secret.clone());
            onelogin.set_client_secret(&secret);
            onelogin.echo_next(prefix, status, times);
            let place = Place::new();
            let (line, mut env) = secret_line(&place, delivery, "client_secret", &secret);
            env.push(("SECRETS_TEST_SCIM".into(), scim_token.clone()));
            let source = format!(
                "[source]\nkind = \"onelogin\"\n[source.onelogin]\napi_url = \"{}\"\nclient_id = \"{ONELOGIN_CLIENT_ID}\"\n{line}\n",
                onelogin.url
            );
            let text = config(&source, &fake.base_url, scim_line, "");
            run_quoted_case(
                &mut evidence,
                &place,
                &format!("OneLogin {prefix} {status} {delivery:?}"),
                &text,
                &env_refs(&env),
                status,
            );
            // The credentials sent: the Basic pair (base64 of id:secret) and every access token.
            let sent: Vec<String> = onelogin
                .requests()
                .iter()
                .filter_map(|request| request.authorization.as_deref())
                .filter_map(|authorization| authorization.split_once(' '))
                .map(|(_, credential)| credential.trim().to_owned())
                .collect();
            assert!(!sent.is_empty(), "OneLogin was asked");
            secrets.extend(sent);
        }
    }
    evidence.assert_clean(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_never_serves_a_token_an_okta_answer_quoted() {
    let okta = okta_org().await;
    let scim_token = sekret("scim");
    let fake = FakeScim::start_with_token(&scim_token).await;
    let place = Place::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let text = config(
        &format!(
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\ntoken = \"{}\"\n",
            okta.url,
            okta.api_token()
        ),
        &fake.base_url,
        &format!("token = \"{scim_token}\""),
        &format!(
            "[schedule]\ncron = \"* * * * * *\"\nfull_cron = \"0 0 3 * * *\"\n\n[observability]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    );
    place.write("config.toml", &text);
    let log = |name: &str| std::fs::File::create(place.path().join(name)).expect("log");
    let mut daemon = std::process::Command::new(assert_cmd::cargo::cargo_bin("socialtalent-sync"))
        .current_dir(place.path())
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .args([
            "--config",
            "config.toml",
            "--log-format",
            "json",
            "-vv",
            "run",
        ])
        .stdout(log("daemon.out"))
        .stderr(log("daemon.err"))
        .spawn()
        .expect("spawn the daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.users().len() < 3 {
        assert!(Instant::now() < deadline, "the daemon did not sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // From now on Okta (or a proxy before it) refuses every request, quoting it back.
    okta.echo_next("/api/v1/", 401, usize::MAX);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(place.path().join("daemon.err"))
        .unwrap_or_default()
        .contains("Invalid request")
    {
        assert!(Instant::now() < deadline, "no refused run was logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut evidence = Evidence::default();
    for path in ["/healthz", "/livez", "/metrics", "/status"] {
        let response = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .expect("the daemon answers");
        let body = response.bytes().await.unwrap_or_default();
        evidence.add(format!("daemon GET {path}"), body.to_vec());
    }
    let status = place.run(&text, &[], &["status", "--output", "json"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("Invalid request"),
        "the refused run is recorded with Okta's message: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    evidence.output("status while the daemon runs", &status);
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let pid = libc::pid_t::try_from(daemon.id()).expect("pid");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if daemon.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            panic!("the daemon did not stop");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in ["daemon.out", "daemon.err"] {
        evidence.add(
            name,
            std::fs::read(place.path().join(name)).expect("the daemon's log"),
        );
    }
    evidence.tree("daemon state", &place.path().join("state"));
    let mut secrets = vec![scim_token, okta.api_token().to_owned()];
    secrets.extend(okta_credentials(&okta));
    evidence.assert_clean(&secrets);
}

// ─── Credential files, key checks and scopes (issue 15, issue 14 item 8) ─────────────────────

const ENTRA_CLIENT: &str = "11111111-2222-3333-4444-777777777777";

/// A Graph tenant with one user in the SocialTalent group, its manager, and the app
/// `ENTRA_CLIENT` knowing the fixture certificate.
async fn entra_tenant() -> FakeGraph {
    let graph = FakeGraph::start().await;
    for (id, name) in [("u1", "ana"), ("u2", "bo")] {
        graph.add_user(
            id,
            json!({"userPrincipalName": format!("{name}@contoso.example"),
                   "mail": format!("{name}@contoso.example"), "givenName": name,
                   "surname": "Li", "accountEnabled": true, "department": "Sales"}),
        );
    }
    graph.set_manager("u2", Some("u1"));
    graph.add_group("g1", "SocialTalent");
    graph.add_member("g1", "u1");
    graph.add_member("g1", "u2");
    let cert = crate::support::fake_graph::TestCert::fixture();
    graph.register_app_certificate(ENTRA_CLIENT, &cert.cert_pem);
    graph
}

/// The `[source]` of `graph` with `credentials` (the certificate and key lines).
fn entra_source(graph: &FakeGraph, credentials: &str) -> String {
    format!(
        "[source]\nkind = \"entra\"\n[source.entra]\ntenant_id = \"{}\"\nclient_id = \"{ENTRA_CLIENT}\"\n{credentials}\ngraph_url = \"{url}\"\nlogin_url = \"{url}\"\n",
        graph.tenant(),
        url = graph.url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_certificate_file_is_found_in_the_credentials_directory() {
    let graph = entra_tenant().await;
    let cert = crate::support::fake_graph::TestCert::fixture();
    let scim_token = sekret("scim");
    let fake = FakeScim::start_with_token(&scim_token).await;
    let place = Place::new();
    // As systemd's LoadCredential= leaves them: both files in $CREDENTIALS_DIRECTORY only.
    std::fs::write(place.credentials().join("entra-cert.pem"), &cert.cert_pem).expect("cert");
    std::fs::write(place.credentials().join("entra-key.pem"), &cert.key_pem).expect("key");
    let credentials = place.credentials().display().to_string();
    let env = [
        ("CREDENTIALS_DIRECTORY", credentials.as_str()),
        ("SECRETS_TEST_SCIM", scim_token.as_str()),
    ];
    let text = config(
        &entra_source(
            &graph,
            "certificate_file = \"entra-cert.pem\"\nprivate_key_file = \"entra-key.pem\"",
        ),
        &fake.base_url,
        "token = \"${SECRETS_TEST_SCIM}\"",
        "",
    );
    let mut evidence = Evidence::default();
    for args in [
        vec!["check-config"],
        vec!["check-config", "--connect", "-vv"],
        vec!["--log-format", "json", "-vv", "sync", "--output", "json"],
    ] {
        let output = place.run(&text, &env, &args);
        expect(&mut evidence, &format!("{args:?}"), &output, 0);
    }
    assert_eq!(fake.users().len(), 2, "the run read Graph and wrote");
    evidence.tree("state", &place.path().join("state"));
    let mut secrets = vec![scim_token];
    secrets.extend(pem_lines(&cert.key_pem));
    secrets.extend(graph_credentials(&graph));
    evidence.assert_clean(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_parses_the_key_and_the_certificate_and_names_the_bad_one() {
    let graph = entra_tenant().await;
    let cert = crate::support::fake_graph::TestCert::fixture();
    let okta = okta_org().await;
    let damaged_key = {
        // A PEM whose body was cut short (a copy-and-paste accident): the label is right.
        let body: Vec<&str> = cert.key_pem.lines().collect();
        let mut cut = body[..body.len() / 2].join("\n");
        cut.push_str("\n-----END PRIVATE KEY-----\n");
        cut
    };
    let place = Place::new();
    place.write("damaged-key.pem", &damaged_key);
    place.write("good-key.pem", &cert.key_pem);
    place.write("good-cert.pem", &cert.cert_pem);
    place.write(
        "damaged-cert.pem",
        "-----BEGIN CERTIFICATE-----\nMIIBnotacert\n-----END CERTIFICATE-----\n",
    );
    let scim_line = "token = \"${SECRETS_TEST_SCIM}\"";
    let env = [("SECRETS_TEST_SCIM", "a-scim-token-for-the-key-checks")];
    let cases = [
        (
            "source.okta.private_key_file",
            format!(
                "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\nclient_id = \"0oa-keys\"\nprivate_key_file = \"damaged-key.pem\"\n",
                okta.url
            ),
        ),
        (
            "source.entra.private_key_file",
            entra_source(
                &graph,
                "certificate_file = \"good-cert.pem\"\nprivate_key_file = \"damaged-key.pem\"",
            ),
        ),
        (
            "source.entra.certificate_file",
            entra_source(
                &graph,
                "certificate_file = \"damaged-cert.pem\"\nprivate_key_file = \"good-key.pem\"",
            ),
        ),
        (
            "source.entra.certificate_file",
            entra_source(
                &graph,
                "certificate_file = \"no-such-cert.pem\"\nprivate_key_file = \"good-key.pem\"",
            ),
        ),
    ];
    let mut evidence = Evidence::default();
    for (key, source) in &cases {
        let text = config(source, "http://127.0.0.1:9/v2", scim_line, "");
        for args in [vec!["check-config"], vec!["check-config", "--connect"]] {
            let output = place.run(&text, &env, &args);
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                stdout.contains("credentials: INVALID") && stdout.contains(key),
                "{key} {args:?}: says what is wrong\n{stdout}"
            );
            expect(&mut evidence, &format!("{key} {args:?}"), &output, 2);
        }
        // `sync` refuses the same key.
        let output = place.run(&text, &env, &["sync"]);
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(key),
            "{key}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        evidence.output(&format!("{key} sync"), &output);
    }
    let mut secrets = pem_lines(&cert.key_pem);
    secrets.extend(pem_lines(&damaged_key));
    evidence.assert_clean(&secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_okta_scopes_let_an_incremental_run_read_the_system_log() {
    let okta = okta_org().await;
    let key = TestKey::ec_p256();
    // The app holds the scopes a run needs; the configuration names none (the defaults).
    okta.register_service_app("0oa-defaults", &key.public_pem, false);
    okta.grant_scopes(
        "0oa-defaults",
        &["okta.users.read", "okta.groups.read", "okta.logs.read"],
    );
    let scim_token = sekret("scim");
    let fake = FakeScim::start_with_token(&scim_token).await;
    let place = Place::new();
    place.write("okta-key.pem", &key.private_pem);
    let env = [("SECRETS_TEST_SCIM", scim_token.as_str())];
    let text = config(
        &format!(
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\nclient_id = \"0oa-defaults\"\nprivate_key_file = \"okta-key.pem\"\n",
            okta.url
        ),
        &fake.base_url,
        "token = \"${SECRETS_TEST_SCIM}\"",
        "",
    );
    let check = place.run(&text, &env, &["check-config", "--connect"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(stdout.contains("System Log"), "{stdout}");
    let full = place.run(&text, &env, &["sync", "--output", "json"]);
    assert_eq!(
        full.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    okta.advance_clock(120);
    okta.update_profile("00u1", json!({"title": "Team Lead"}));
    let incremental = place.run(&text, &env, &["sync", "--output", "json"]);
    assert_eq!(
        incremental.status.code(),
        Some(0),
        "the incremental run reads the System Log: {}",
        String::from_utf8_lossy(&incremental.stderr)
    );
    assert!(okta.count("/api/v1/logs") > 0, "the System Log was read");
    let tokens = okta
        .requests()
        .into_iter()
        .filter(|request| request.path == "/oauth2/v1/token")
        .filter_map(|request| {
            url::form_urlencoded::parse(&request.body)
                .find(|(name, _)| name == "scope")
                .map(|(_, scope)| scope.into_owned())
        })
        .collect::<Vec<_>>();
    assert!(
        !tokens.is_empty() && tokens.iter().all(|scope| scope.contains("okta.logs.read")),
        "{tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_connect_reads_every_endpoint_and_names_the_missing_permission() {
    let scim_token = sekret("scim");
    let fake = FakeScim::start_with_token(&scim_token).await;
    let env = [("SECRETS_TEST_SCIM", scim_token.as_str())];
    let scim_line = "token = \"${SECRETS_TEST_SCIM}\"";

    // Okta: an app without okta.logs.read (and a configuration that does not ask for it).
    let okta = okta_org().await;
    let key = TestKey::ec_p256();
    okta.register_service_app("0oa-nologs", &key.public_pem, false);
    okta.grant_scopes("0oa-nologs", &["okta.users.read", "okta.groups.read"]);
    let place = Place::new();
    place.write("okta-key.pem", &key.private_pem);
    let text = config(
        &format!(
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\nclient_id = \"0oa-nologs\"\nprivate_key_file = \"okta-key.pem\"\nscopes = [\"okta.users.read\", \"okta.groups.read\"]\n",
            okta.url
        ),
        &fake.base_url,
        scim_line,
        "",
    );
    let check = place.run(&text, &env, &["check-config", "--connect"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/api/v1/logs") && stderr.contains("okta.logs.read"),
        "{stderr}"
    );
    for path in ["/api/v1/users", "/api/v1/groups", "/api/v1/logs"] {
        assert!(okta.count(path) > 0, "check-config asked {path}");
    }

    // Graph: an app that may read users but not group memberships, then the reverse.
    for (granted, missing) in [
        ("User.Read.All", "GroupMember.Read.All"),
        ("GroupMember.Read.All", "User.Read.All"),
    ] {
        let graph = entra_tenant().await;
        graph.grant_permissions(ENTRA_CLIENT, &[granted]);
        let cert = crate::support::fake_graph::TestCert::fixture();
        let place = Place::new();
        place.write("cert.pem", &cert.cert_pem);
        place.write("key.pem", &cert.key_pem);
        let text = config(
            &entra_source(
                &graph,
                "certificate_file = \"cert.pem\"\nprivate_key_file = \"key.pem\"",
            ),
            &fake.base_url,
            scim_line,
            "",
        );
        let check = place.run(&text, &env, &["check-config", "--connect"]);
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert_eq!(check.status.code(), Some(1), "{granted}: {stderr}");
        assert!(
            stderr.contains(missing),
            "{granted}: names {missing}: {stderr}"
        );
    }

    // Graph with every permission a run needs: users delta, groups delta and a manager read.
    let graph = entra_tenant().await;
    graph.grant_permissions(ENTRA_CLIENT, &["User.Read.All", "GroupMember.Read.All"]);
    let cert = crate::support::fake_graph::TestCert::fixture();
    let place = Place::new();
    place.write("cert.pem", &cert.cert_pem);
    place.write("key.pem", &cert.key_pem);
    let text = config(
        &entra_source(
            &graph,
            "certificate_file = \"cert.pem\"\nprivate_key_file = \"key.pem\"",
        ),
        &fake.base_url,
        scim_line,
        "",
    );
    let check = place.run(&text, &env, &["check-config", "--connect"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for path in ["/v1.0/users/delta", "/v1.0/groups/delta"] {
        assert!(graph.count(path) > 0, "check-config asked {path}");
    }
    assert!(
        graph
            .requests()
            .iter()
            .any(|request| request.path.ends_with("/manager")),
        "check-config read a manager"
    );
}

/// Every directory and file under `dir` with its permission bits.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("lists") {
        let path = entry.expect("entry").path();
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        if path.is_dir() {
            found.extend(modes(&path));
        }
        found.push((path, mode));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let ws = crate::support::Workspace::new();
    std::fs::write(ws.config_path(), ws.config_text()).expect("config");
    let run = |args: &[&str]| {
        let mut command =
            std::process::Command::new(assert_cmd::cargo::cargo_bin("socialtalent-sync"));
        command
            .current_dir(ws.dir.path())
            .env(crate::support::TOKEN_VAR, &ws.peer.token)
            .env_remove("RUST_LOG")
            .env_remove("STATE_DIRECTORY")
            .arg("--config")
            .arg(ws.config_path())
            .args(args);
        // SAFETY: umask(2) only sets the child's file mode mask; it cannot fail and touches
        // no memory, so it is safe between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        tokio::task::block_in_place(|| command.output().expect("the binary runs"))
    };
    let output = run(&["-vv", "sync", "--output", "json"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !ws.peer.users().await.is_empty(),
        "the run wrote to the peer"
    );
    let state = ws.state_path();
    let mode = |path: &Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "the state directory");
    let inside = modes(&state);
    assert!(inside.len() >= 3, "{inside:?}");
    for (path, mode) in &inside {
        let wanted = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, wanted, "{} is {mode:o}", path.display());
    }
    // The token never reached the state.
    let mut evidence = Evidence::default();
    evidence.output("sync", &output);
    evidence.tree("state", &state);
    evidence.assert_clean(std::slice::from_ref(&ws.peer.token));

    // A state directory someone opened to others is named, by a run and by check-config.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let output = run(&["sync", "--output", "json"]);
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("open to other users") && stderr.contains(&state.display().to_string()),
        "{stderr}"
    );
    let output = run(&["check-config"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("open to other users") && stdout.contains(&state.display().to_string()),
        "{stdout}"
    );
    for (path, mode) in modes(&state) {
        let wanted = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, wanted, "{} is {mode:o}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_records_an_older_version_stored_are_scrubbed_on_upgrade() {
    let okta = okta_org().await;
    let okta_token = sekret("okta");
    let place = Place::new();
    let text = config(
        &format!(
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\ntoken = \"${{SECRETS_TEST_OKTA}}\"\n",
            okta.url
        ),
        "http://127.0.0.1:9/v2",
        "token = \"${SECRETS_TEST_SCIM}\"",
        "",
    );
    let env = [
        ("SECRETS_TEST_OKTA", okta_token.as_str()),
        ("SECRETS_TEST_SCIM", "scim-token-of-the-upgrade-test"),
    ];
    // A state as an older version left it: a run record quoting the token (no header to
    // recognise it by, only its value), and no redaction level.
    let state = place.path().join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    {
        let db = sled::open(state.join("db")).expect("sled");
        db.open_tree("meta")
            .expect("meta")
            .insert("format_version", "2")
            .expect("write");
        let record = json!({
            "started_at": "2026-11-30T10:00:00Z", "finished_at": "2026-11-30T10:00:02Z",
            "full": false, "source": "okta", "users_read": 0,
            "summary": {}, "outcome": "failed",
            "error": format!("Okta rejected /api/v1/users (401: the token {okta_token} was revoked)"),
            "held": [],
        });
        db.open_tree("runs")
            .expect("runs")
            .insert(
                1_u64.to_be_bytes(),
                serde_json::to_vec(&record).expect("json"),
            )
            .expect("write");
        db.flush().expect("flush");
    }
    crate::support::wait_until_unlocked(&state);
    let mut evidence = Evidence::default();
    for args in [vec!["status", "--output", "json"], vec!["status"]] {
        let output = place.run(&text, &env, &args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("was revoked"),
            "the record is kept: {stdout}"
        );
        expect(&mut evidence, &format!("{args:?}"), &output, 0);
    }
    evidence.assert_clean(&[okta_token]);
}
