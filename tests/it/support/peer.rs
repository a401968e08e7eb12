//! The real SCIM 2.0 peer for the integration tests: `scim2-server` (PyPI, pinned 0.8.3).
//!
//! One `scim2-server` process is started per test process, on the first call to
//! [`scim_peer`], with `--dynamic-tenants`, the SocialTalent schema files and a bearer token.
//! Every call to [`scim_peer`] returns a fresh tenant (`http://127.0.0.1:PORT/<tenant>/v2`),
//! which has its own empty store, so tests running in parallel do not see each other's users.
//!
//! The venv and the schema files come from `tests/scim-peer/install.sh`, which this module runs
//! (idempotent, ~10 ms when already installed), so a fresh clone passes `cargo test`.
//! `SCIM_VENV` / `SCIM_CFG` override where they live, as for `install.sh`.
//!
//! The server dies with the test process: it is spawned with `PR_SET_PDEATHSIG = SIGKILL` from a
//! dedicated thread that lives as long as the process (the death signal fires when the *thread*
//! that forked the child exits, and every `#[test]` runs on its own short-lived thread).

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The SocialTalent user extension declared by `tests/scim-peer/make-schemas.py`.
pub const EXT_URN: &str = "urn:ietf:params:scim:schemas:extension:socialtalent:2.0:User";
/// The core User schema URN.
pub const USER_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// The media type scim2-server sends and expects.
pub const SCIM_JSON: &str = "application/scim+json";

/// How long the server may take to print "Serving SCIM" (it imports pydantic; ~0.5 s idle,
/// more when `cargo test` is compiling or running other tests on the 2 cores).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at finding a free port, in case another process takes it between probe and bind.
const PORT_ATTEMPTS: usize = 5;
/// How much of the server's output is kept for panic messages.
const LOG_CAP: usize = 64 * 1024;
/// scim2-server's `filter.maxResults`: the largest page it serves.
const PAGE_SIZE: usize = 1000;

/// One isolated SCIM tenant on the shared scim2-server process.
#[derive(Clone, Debug)]
pub struct ScimPeer {
    /// `http://127.0.0.1:PORT/<tenant>/v2` (no trailing slash); `Users` lives under it.
    pub base_url: String,
    /// The bearer token the server accepts (`Authorization: Bearer <token>`).
    pub token: String,
    /// This tenant's name (unique in the test process).
    pub tenant: String,
    client: reqwest::Client,
}

/// The shared server process, started once per test process.
struct Server {
    port: u16,
    token: String,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static SERVER_LOG: OnceLock<Arc<Mutex<String>>> = OnceLock::new();
static NEXT_TENANT: AtomicU64 = AtomicU64::new(1);

/// Starts scim2-server once per test process (first call), with `--dynamic-tenants`, the custom
/// schema files and a bearer token, on a free 127.0.0.1 port; every call returns a fresh tenant
/// (unique name) so tests are isolated.
///
/// Panics with the server's output if it cannot be installed or started.
#[track_caller]
pub fn scim_peer() -> ScimPeer {
    let server = match SERVER.get_or_init(start_server) {
        Ok(server) => server,
        Err(e) => panic!("the SCIM peer (scim2-server) is not available: {e}"),
    };
    let n = NEXT_TENANT.fetch_add(1, Ordering::Relaxed);
    let tenant = format!("t{n}");
    let client = reqwest::Client::builder()
        // Tests talk only to 127.0.0.1: never route them through an HTTP(S)_PROXY from the env.
        .no_proxy()
        // No `.timeout()`: under `#[tokio::test(start_paused = true)]` tokio auto-advances the
        // paused clock while waiting on the socket, so any reqwest timeout fires at once.
        .build()
        .expect("build the reqwest client for the SCIM peer");
    ScimPeer {
        base_url: format!("http://127.0.0.1:{}/{tenant}/v2", server.port),
        token: server.token.clone(),
        tenant,
        client,
    }
}

/// The last output (stdout and stderr, interleaved; up to 64 KiB) of the shared scim2-server,
/// including one access-log line per request. Empty before the server is started.
pub fn server_log() -> String {
    SERVER_LOG
        .get()
        .map(|log| log.lock().map(|s| s.clone()).unwrap_or_default())
        .unwrap_or_default()
}

impl ScimPeer {
    /// A request to `base_url` + `path` (e.g. `"/Users"`) with the bearer token and SCIM
    /// `Accept` header set, for tests that want to look at statuses and headers themselves.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.token)
            .header(ACCEPT, SCIM_JSON)
    }

    /// All users of this tenant, paging through `GET /Users`.
    pub async fn users(&self) -> Vec<Value> {
        let mut users = Vec::new();
        loop {
            let start_index = users.len() + 1;
            let page = self
                .send_expect(
                    self.request(Method::GET, "/Users")
                        .query(&[("startIndex", start_index), ("count", PAGE_SIZE)]),
                    &[StatusCode::OK],
                    &format!("GET /Users?startIndex={start_index}"),
                )
                .await
                .1
                .expect("GET /Users answered without a body");
            let total = page["totalResults"]
                .as_u64()
                .unwrap_or_else(|| panic!("ListResponse without totalResults: {page}"));
            let resources = page["Resources"].as_array().cloned().unwrap_or_default();
            let empty = resources.is_empty();
            users.extend(resources);
            if empty || users.len() as u64 >= total {
                return users;
            }
        }
    }

    /// The user with this `userName` (matched case-insensitively, as the server does), or
    /// `None`. Panics if more than one matches.
    pub async fn user_by_name(&self, user_name: &str) -> Option<Value> {
        // A SCIM filter value is a JSON string literal, so JSON quoting escapes it properly.
        let literal = serde_json::to_string(user_name).expect("quote userName");
        let filter = format!("userName eq {literal}");
        let page = self
            .send_expect(
                self.request(Method::GET, "/Users")
                    .query(&[("filter", filter.as_str())]),
                &[StatusCode::OK],
                &format!("GET /Users?filter={filter}"),
            )
            .await
            .1
            .expect("GET /Users answered without a body");
        let mut found = page["Resources"].as_array().cloned().unwrap_or_default();
        assert!(
            found.len() <= 1,
            "{} users match userName {literal}: {page}",
            found.len()
        );
        found.pop()
    }

    /// `GET /Users/{id}`: the user, or `None` on 404.
    pub async fn get(&self, id: &str) -> Option<Value> {
        let (status, body) = self
            .send_expect(
                self.request(Method::GET, &format!("/Users/{id}")),
                &[StatusCode::OK, StatusCode::NOT_FOUND],
                &format!("GET /Users/{id}"),
            )
            .await;
        if status == StatusCode::NOT_FOUND {
            None
        } else {
            Some(body.expect("GET /Users/{id} answered 200 without a body"))
        }
    }

    /// `POST /Users`; returns the created user. Panics with the server's answer unless 201.
    /// Add `"schemas"` yourself (the server requires the core User URN).
    pub async fn create(&self, body: Value) -> Value {
        self.send_expect(
            self.request(Method::POST, "/Users").json_scim(&body),
            &[StatusCode::CREATED],
            &format!("POST /Users {body}"),
        )
        .await
        .1
        .expect("POST /Users answered 201 without a body")
    }

    /// `PUT /Users/{id}` (replaces every attribute); returns the user. Panics unless 200.
    pub async fn put(&self, id: &str, body: Value) -> Value {
        self.send_expect(
            self.request(Method::PUT, &format!("/Users/{id}"))
                .json_scim(&body),
            &[StatusCode::OK],
            &format!("PUT /Users/{id} {body}"),
        )
        .await
        .1
        .expect("PUT /Users/{id} answered 200 without a body")
    }

    /// `PATCH /Users/{id}` with a full PatchOp body. scim2-server answers 204 without a body
    /// (then this returns `None`), or 200 with the user when `?attributes=` is given.
    /// Panics on any other status.
    pub async fn patch(&self, id: &str, body: Value) -> Option<Value> {
        self.send_expect(
            self.request(Method::PATCH, &format!("/Users/{id}"))
                .json_scim(&body),
            &[StatusCode::OK, StatusCode::NO_CONTENT],
            &format!("PATCH /Users/{id} {body}"),
        )
        .await
        .1
    }

    /// `DELETE /Users/{id}`. Panics unless 204.
    pub async fn delete(&self, id: &str) {
        self.send_expect(
            self.request(Method::DELETE, &format!("/Users/{id}")),
            &[StatusCode::NO_CONTENT],
            &format!("DELETE /Users/{id}"),
        )
        .await;
    }

    /// Sends `req`; panics with the status and body unless the status is one of `expected`.
    /// Returns the status and the JSON body (`None` when the body is empty).
    async fn send_expect(
        &self,
        req: reqwest::RequestBuilder,
        expected: &[StatusCode],
        what: &str,
    ) -> (StatusCode, Option<Value>) {
        let resp = req.send().await.unwrap_or_else(|e| {
            panic!(
                "{what} on the SCIM peer ({}) failed: {e:?}\n--- scim2-server log ---\n{}",
                self.base_url,
                server_log()
            )
        });
        let status = resp.status();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body of the {status} answer: {e:?}"));
        assert!(
            expected.contains(&status),
            "{what} on the SCIM peer ({}): expected {expected:?}, got {status}: {text}",
            self.base_url
        );
        let body = if text.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("{what}: the {status} answer is not JSON ({e}): {text}")
            }))
        };
        (status, body)
    }
}

/// Sets a SCIM JSON body.
trait JsonScim {
    fn json_scim(self, body: &Value) -> Self;
}

impl JsonScim for reqwest::RequestBuilder {
    fn json_scim(self, body: &Value) -> Self {
        self.header(CONTENT_TYPE, SCIM_JSON)
            .body(serde_json::to_vec(body).expect("serialise a serde_json::Value"))
    }
}

/// Installs the peer if needed, then starts the server from a thread that lives for the whole
/// process and waits until it serves.
fn start_server() -> Result<Server, String> {
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let install = repo_root.join("tests/scim-peer/install.sh");
    let venv = env_path("SCIM_VENV").unwrap_or_else(|| repo_root.join(".scim-venv"));
    let cfg = env_path("SCIM_CFG").unwrap_or_else(|| repo_root.join(".scim-cfg"));

    // Idempotent and quick once installed; installs the venv (~10 s) on a fresh clone.
    let out = Command::new("bash")
        .arg(&install)
        .env("SCIM_VENV", &venv)
        .env("SCIM_CFG", &cfg)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {}: {e}", install.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}{}",
            install.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    let token = format!(
        "it-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default()
    );
    let log = SERVER_LOG
        .get_or_init(|| Arc::new(Mutex::new(String::new())))
        .clone();
    let args = ServerArgs {
        exe: venv.join("bin/scim2-server"),
        schemas: cfg.join("schemas.json"),
        resource_types: cfg.join("resource-types.json"),
        token: token.clone(),
    };

    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("scim2-server".into())
        .spawn(move || supervise(args, log, tx))
        .map_err(|e| format!("could not start the scim2-server supervisor thread: {e}"))?;
    let port = rx
        .recv()
        .map_err(|_| "the scim2-server supervisor thread died".to_string())??;
    Ok(Server { port, token })
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

struct ServerArgs {
    exe: PathBuf,
    schemas: PathBuf,
    resource_types: PathBuf,
    token: String,
}

/// What the output readers report to the supervisor.
enum Event {
    Ready,
    Eof,
}

/// Body of the supervisor thread: spawns the server (retrying on a port race), reports the port
/// (or the error) through `ready`, then never returns, so the server's death signal only fires
/// when the test process exits.
fn supervise(args: ServerArgs, log: Arc<Mutex<String>>, ready: mpsc::Sender<Result<u16, String>>) {
    let mut child = None;
    let mut outcome = Err("no attempt was made".to_string());
    for attempt in 1..=PORT_ATTEMPTS {
        match spawn_once(&args, &log) {
            Ok((c, port)) => {
                child = Some(c);
                outcome = Ok(port);
                break;
            }
            Err((e, port_race)) => {
                outcome = Err(format!("attempt {attempt}: {e}"));
                if !port_race {
                    break;
                }
            }
        }
    }
    // The receiver only goes away if the test process is already unwinding; nothing to do then.
    let _ = ready.send(outcome);
    if let Some(mut child) = child {
        // Record an unexpected exit in the log, for the panic messages of later requests.
        let status = child.wait();
        append(&log, &format!("\n[scim2-server exited: {status:?}]\n"));
    }
    loop {
        std::thread::park();
    }
}

/// Starts the server on a free port and waits for "Serving SCIM". On failure returns the error
/// and whether it looks like a lost race for the port (worth retrying on another port).
fn spawn_once(
    args: &ServerArgs,
    log: &Arc<Mutex<String>>,
) -> Result<(std::process::Child, u16), (String, bool)> {
    let port = free_port().map_err(|e| (format!("no free port on 127.0.0.1: {e}"), false))?;
    let parent = std::process::id();
    let mut cmd = Command::new(&args.exe);
    cmd.arg("--hostname")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(port.to_string())
        .arg("--bearer-token")
        .arg(&args.token)
        .arg("--schema")
        .arg(&args.schemas)
        .arg("--resource-type")
        .arg(&args.resource_types)
        .arg("--dynamic-tenants")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // calls (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Kill the server when the thread that forked it (the supervisor thread, which
            // lives as long as the test process) goes away.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent as libc::pid_t {
                return Err(std::io::Error::other("test process exited"));
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| (format!("could not run {}: {e}", args.exe.display()), false))?;

    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    drain(stdout, log.clone(), tx.clone());
    drain(stderr, log.clone(), tx);

    let deadline = Instant::now() + START_TIMEOUT;
    let mut eofs = 0;
    let failure = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Ready) => return Ok((child, port)),
            Ok(Event::Eof) => {
                eofs += 1;
                if eofs == 2 {
                    break format!(
                        "scim2-server exited before serving ({:?})",
                        child.wait().map_err(|e| e.to_string())
                    );
                }
            }
            Err(_) => {
                break format!(
                    "scim2-server did not print \"Serving SCIM\" within {START_TIMEOUT:?}"
                );
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let output = log.lock().map(|s| s.clone()).unwrap_or_default();
    let port_race = output.contains("Address already in use");
    Err((
        format!("{failure}\ncommand: {cmd:?}\n--- scim2-server output ---\n{output}"),
        port_race,
    ))
}

/// Copies a child's output into the log (keeping the tail) on its own thread, reporting the
/// "Serving SCIM" line and end of file. Keeps reading for the whole life of the server, so that
/// its pipes never fill up and block it.
fn drain(stream: impl Read + Send + 'static, log: Arc<Mutex<String>>, events: mpsc::Sender<Event>) {
    std::thread::Builder::new()
        .name("scim2-server-output".into())
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        append(&log, &text);
                        if text.contains("Serving SCIM") {
                            // Ignored once the supervisor stopped listening.
                            let _ = events.send(Event::Ready);
                        }
                    }
                }
            }
            let _ = events.send(Event::Eof);
        })
        .expect("spawn a thread reading scim2-server's output");
}

fn append(log: &Mutex<String>, text: &str) {
    let Ok(mut log) = log.lock() else { return };
    log.push_str(text);
    if log.len() > LOG_CAP {
        let mut cut = log.len() - LOG_CAP / 2;
        while !log.is_char_boundary(cut) {
            cut += 1;
        }
        log.replace_range(..cut, "[…]\n");
    }
}

/// A port that was free a moment ago: bind 127.0.0.1:0 and release it. The server could lose
/// it to another process before binding; [`supervise`] retries then.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
