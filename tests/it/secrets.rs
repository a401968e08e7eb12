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

    /// Asserts that no secret (and no PEM body line) appears anywhere.
    fn assert_clean(&self, secrets: &[String]) {
        assert!(!self.items.is_empty(), "nothing collected");
        let needles: Vec<&[u8]> = secrets
            .iter()
            .filter(|secret| secret.len() >= 12)
            .map(|secret| secret.as_bytes())
            .collect();
        for (label, bytes) in &self.items {
            for needle in &needles {
                if bytes.windows(needle.len()).any(|window| window == *needle) {
                    panic!(
                        "a secret ({}…) appears in {label}:\n{}",
                        String::from_utf8_lossy(&needle[..12]),
                        String::from_utf8_lossy(bytes)
                    );
                }
            }
        }
    }
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
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\nclient_id = \"{client_id}\"\nprivate_key_file = \"okta-key.pem\"\nscopes = [\"okta.users.read\", \"okta.groups.read\"]\n",
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
    for (label, content, code) in [
        ("not a key", Some(not_a_key.as_str()), 1),
        ("a PEM that is not a key", Some(fake_body.as_str()), 1),
        ("a public key", Some(key.public_pem.as_str()), 1),
        (
            "a key the app does not know",
            Some(stranger.private_pem.as_str()),
            1,
        ),
        // A missing secret is a configuration problem: exit 2 (SPEC §3).
        ("no key file", None, 2),
    ] {
        let place = Place::new();
        if let Some(content) = content {
            place.write("okta-key.pem", content);
        }
        let env = [("SECRETS_TEST_SCIM", scim_token.as_str())];
        let text = config(&source("0oa-secrets"), &fake.base_url, scim_line, "");
        for args in [
            vec!["sync", "--output", "json", "-vv"],
            vec!["--log-format", "json", "-vv", "check-config", "--connect"],
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
