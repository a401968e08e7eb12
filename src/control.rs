//! The daemon's local control socket: while `run` holds the state, every command that needs it
//! (`status`, `sync`, `sync --dry-run`, `approve`, `preview`) is served by the daemon through a
//! Unix socket that only root and the service user can use (mode 0600, in `$RUNTIME_DIRECTORY`
//! when systemd gives one, else in the state directory). The loopback HTTP port is no
//! substitute: any local user can call it.
//!
//! The protocol is one line of JSON each way: the command's [`Request`], then its [`Response`]
//! (what the command would have printed and its exit code). The client side ([`ask`]) finds the
//! socket from the note the daemon leaves in the state directory; when nothing answers there, the
//! command runs on the state itself.
//!
//! The server answers `status` itself, at any time; everything else becomes a [`Job`] for the
//! daemon's loop, which serves it between runs (runs never overlap), so a requested run goes
//! through the same path as a scheduled one.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::OutputFormat;
use crate::config::Config;
use crate::holds::{self, HoldKey};
use crate::state::State;
use crate::status::StatusReport;

/// The socket's file name.
pub const SOCKET_NAME: &str = "control.sock";
/// The note in the state directory that names the socket of the daemon holding the state.
const NOTE_NAME: &str = "control";
/// The longest request line the server reads.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long a client may take to send its request line (a silent client must not hold a
/// connection task, which shutdown waits for, forever).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A command sent to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// `status`.
    Status {
        /// Output format.
        output: OutputFormat,
    },
    /// `sync` (a run now, waited for), or `sync --dry-run` (planned between runs).
    Sync {
        /// Plan only.
        dry_run: bool,
        /// A full run.
        full: bool,
        /// Release the pending holds (as `approve`).
        allow_deactivations: bool,
        /// Output format.
        output: OutputFormat,
    },
    /// `approve`: one full run right after the current one that releases exactly the holds
    /// pending when it was asked for; `--dry-run` plans it.
    Approve {
        /// Plan only.
        dry_run: bool,
        /// Output format.
        output: OutputFormat,
    },
    /// `preview USER` (and `--apply`).
    Preview {
        /// The user's IdP id, login or email.
        user: String,
        /// Provision that user now.
        apply: bool,
        /// Output format.
        output: OutputFormat,
    },
}

/// What a served command printed, and its exit code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The exit code.
    pub code: u8,
    /// What it printed on standard output.
    pub stdout: String,
    /// What it printed on standard error.
    pub stderr: String,
}

impl Response {
    /// A failure with its message (as `main` prints one).
    pub fn failure(code: u8, message: &str) -> Response {
        Response {
            code,
            stdout: String::new(),
            stderr: format!("error: {message}\n"),
        }
    }
}

/// A request for the daemon's loop, with where its answer goes.
#[derive(Debug)]
pub struct Job {
    /// The request (never [`Request::Status`], which the server answers itself).
    pub request: Request,
    /// For `approve` and `sync --allow-deactivations`: the holds pending when it was asked for.
    pub release: Option<Arc<BTreeSet<HoldKey>>>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Response>,
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the control socket {}: {source}", path.display())]
pub struct BindError {
    /// The socket's path.
    pub path: PathBuf,
    /// The error.
    pub source: std::io::Error,
}

/// Where the daemon puts its socket: `$RUNTIME_DIRECTORY` (the first, when systemd gives
/// several), else the state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    runtime_directory()
        .unwrap_or_else(|| state_dir.to_owned())
        .join(SOCKET_NAME)
}

fn runtime_directory() -> Option<PathBuf> {
    let dirs = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = dirs.to_string_lossy().split(':').next()?.to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// The control socket, bound; dropping it removes the socket file and the note.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    note: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.note);
    }
}

impl ControlSocket {
    /// Binds the socket at [`socket_path`] (replacing a stale one: the caller holds the state's
    /// lock, so no other daemon of this state is listening), makes it 0600, and leaves a note
    /// naming it in the state directory.
    ///
    /// # Errors
    /// [`BindError`].
    pub fn bind(state_dir: &Path) -> Result<ControlSocket, BindError> {
        let path = socket_path(state_dir);
        let error = |source: std::io::Error| BindError {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(error(e)),
            _ => {}
        }
        let listener = UnixListener::bind(&path).map_err(error)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
        let note = state_dir.join(NOTE_NAME);
        std::fs::write(&note, path.to_string_lossy().as_bytes()).map_err(error)?;
        std::fs::set_permissions(&note, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
        Ok(ControlSocket {
            listener,
            path,
            note,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What the server needs to answer `status` itself and hand the rest to the loop.
#[derive(Clone)]
pub struct Server {
    /// The open state.
    pub state: State,
    /// The daemon's current configuration.
    pub config: Arc<Mutex<Arc<Config>>>,
    /// The daemon loop's queue.
    pub jobs: mpsc::UnboundedSender<Job>,
}

/// Accepts connections until `shutdown`, each served on its own task in `tracker`.
pub async fn serve(
    socket: ControlSocket,
    server: Server,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = socket.listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let server = server.clone();
                tracker.spawn(async move {
                    if let Err(error) = serve_connection(stream, server).await {
                        tracing::warn!(message = "A control socket connection failed.", %error);
                    }
                });
            }
            Err(error) => {
                tracing::warn!(message = "The control socket cannot accept.", %error);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    drop(socket);
}

async fn serve_connection(stream: UnixStream, server: Server) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(reader).take(MAX_REQUEST_BYTES);
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no request line within 10 s")
        })??;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(error) => Response::failure(2, &format!("the daemon cannot read the request: {error}")),
        Ok(request) => answer(request, &server).await,
    };
    let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    writer.shutdown().await
}

async fn answer(request: Request, server: &Server) -> Response {
    let config = Arc::clone(&server.config.lock().unwrap_or_else(PoisonError::into_inner));
    if let Request::Status { output } = request {
        return match StatusReport::of(&server.state, config.safety.failure_quarantine_after) {
            Ok(report) => Response {
                code: 0,
                stdout: crate::cli::render_status(&report, output),
                stderr: String::new(),
            },
            Err(error) => Response::failure(1, &error.to_string()),
        };
    }
    let releases = matches!(
        request,
        Request::Approve { .. }
            | Request::Sync {
                allow_deactivations: true,
                ..
            }
    );
    // The holds pending now are the ones released, whatever runs come before the job's turn.
    let release = if releases {
        match server.state.pending_holds() {
            Ok(pending) => Some(Arc::new(holds::keys(&pending))),
            Err(error) => return Response::failure(1, &error.to_string()),
        }
    } else {
        None
    };
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request,
        release,
        reply,
    };
    if server.jobs.send(job).is_err() {
        return Response::failure(1, "the daemon is shutting down; try again when it is back");
    }
    answer.await.unwrap_or_else(|_| {
        Response::failure(
            1,
            "the daemon stopped before it could serve the request; try again when it is back",
        )
    })
}

/// What asking the daemon gave.
#[derive(Debug)]
pub enum Asked {
    /// No daemon answers for this state: run the command on the state itself.
    NoDaemon,
    /// The daemon served it.
    Served(Response),
}

/// Sends `request` to the daemon that holds the state of `config`, if one is listening, and
/// waits for its answer (a sync waits for its run).
///
/// # Errors
/// A message when a daemon's socket exists but cannot be used (permissions) or the exchange
/// failed midway.
pub async fn ask(config: &Config, request: &Request) -> Result<Asked, String> {
    for path in candidates(&config.state.path) {
        let stream = match UnixStream::connect(&path).await {
            Ok(stream) => stream,
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(format!(
                    "the daemon's control socket {} cannot be used by this user ({error}); run the command as root or as the service user",
                    path.display()
                ));
            }
            // No socket, or a stale one (nobody listening): try the next place.
            Err(_) => continue,
        };
        tracing::debug!(message = "Served by the running daemon.", socket = %path.display());
        return exchange(stream, request)
            .await
            .map(Asked::Served)
            .map_err(|error| {
                format!(
                    "the daemon's control socket {} failed: {error}",
                    path.display()
                )
            });
    }
    Ok(Asked::NoDaemon)
}

/// Where a daemon of this state may listen: the note's path, the runtime directory, the state
/// directory.
fn candidates(state_dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Ok(text) = std::fs::read_to_string(state_dir.join(NOTE_NAME)) {
        let noted = PathBuf::from(text.trim());
        if !noted.as_os_str().is_empty() {
            paths.push(noted);
        }
    }
    for path in [socket_path(state_dir), state_dir.join(SOCKET_NAME)] {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

async fn exchange(stream: UnixStream, request: &Request) -> std::io::Result<Response> {
    let (reader, mut writer) = stream.into_split();
    let mut text = serde_json::to_string(request).map_err(std::io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(reader).read_line(&mut line).await?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without an answer",
        ));
    }
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_are_one_json_line_each() {
        let request = Request::Sync {
            dry_run: false,
            full: true,
            allow_deactivations: true,
            output: OutputFormat::Json,
        };
        let text = serde_json::to_string(&request).expect("json");
        assert!(!text.contains('\n'));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).expect("json")["command"],
            "sync"
        );
        assert_eq!(
            serde_json::from_str::<Request>(&text).expect("back"),
            request
        );
        let response = Response::failure(2, "bad\nthing");
        let text = serde_json::to_string(&response).expect("json");
        assert!(!text.contains('\n'), "newlines are escaped: {text}");
    }

    #[tokio::test]
    async fn the_socket_is_private_and_removed_with_its_note() {
        let dir = tempfile::tempdir().expect("dir");
        let socket = ControlSocket::bind(dir.path()).expect("bind");
        let mode = std::fs::metadata(socket.path())
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            candidates(dir.path()).first().map(PathBuf::as_path),
            Some(socket.path())
        );
        let path = socket.path().to_owned();
        drop(socket);
        assert!(!path.exists());
        assert!(!dir.path().join(NOTE_NAME).exists());
    }
}
