//! The command line (SPEC §3): argument parsing with clap, logging set-up, and one function per
//! command. Errors become exit codes here: 2 for bad usage or configuration, 1 for failures, 3
//! when deactivations were held.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::config::{Config, DEFAULT_CONFIG_PATH, LogFormat, SourceConfig};
use crate::control::{self, Asked, Request};
use crate::mapping::Decision;
use crate::scim::wire;
use crate::state::State;
use crate::status::StatusReport;
use crate::sync::{self, Mode, Options, Phase, Progress, Release, SyncError};

/// Keeps SocialTalent's users in step with Okta, Microsoft Entra ID or OneLogin.
#[derive(Debug, Parser)]
#[command(name = "socialtalent-sync", version = crate::version::text(), about, long_about = None)]
pub struct Cli {
    /// The configuration file [default: $SOCIALTALENT_SYNC_CONFIG, else /etc/socialtalent-sync/config.toml].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format (overrides [observability] log_format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less log output (warnings and errors only).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// A terraform-like layout.
    Text,
    /// One JSON document.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One reconciliation, then exit.
    Sync(SyncArgs),
    /// The daemon: runs `sync` on the schedule until SIGTERM/SIGINT (SIGHUP reloads); while it
    /// runs, the other commands are served through its control socket.
    Run {
        /// Allow starting an empty state where the configuration names none.
        #[arg(long)]
        new_state: bool,
    },
    /// Release the held deactivations: runs a full sync that carries out exactly the holds
    /// pending now (through the daemon while it runs) and prints its report.
    Approve {
        /// Show what would be released; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The report [default: text on a terminal, else json].
        #[arg(long, value_enum)]
        output: Option<OutputFormat>,
    },
    /// Validate the configuration and secrets.
    CheckConfig {
        /// Also authenticate to the source and the target and check the mapping against the
        /// target's schemas.
        #[arg(long)]
        connect: bool,
    },
    /// Show one IdP user: source attributes, scope decision, mapped SCIM JSON, pending action.
    Preview {
        /// The user's IdP id, login or email.
        user: String,
        /// Provision that user now.
        #[arg(long)]
        apply: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
        /// With --apply: allow starting an empty state where the configuration names none.
        #[arg(long, requires = "apply")]
        new_state: bool,
    },
    /// What the state holds: last runs, counts, held deactivations, failing users.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

/// `sync` options.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Plan only: no write to SocialTalent, the IdP or the state.
    #[arg(long)]
    pub dry_run: bool,
    /// Full read of the source and of SocialTalent.
    #[arg(long)]
    pub full: bool,
    /// The plan / result report [default: text on a terminal, else json].
    #[arg(long, value_enum)]
    pub output: Option<OutputFormat>,
    /// Release deactivations held by the safety threshold.
    #[arg(long)]
    pub allow_deactivations: bool,
    /// Allow starting an empty state where the configuration names none ([state] path unset
    /// and no $STATE_DIRECTORY).
    #[arg(long)]
    pub new_state: bool,
    /// Write the source read, the state snapshot and the plan as JSON files into this
    /// directory (test fixtures).
    #[arg(long, hide = true, value_name = "DIR")]
    pub dump: Option<PathBuf>,
}

/// A command's failure, with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code (1 or 2).
    pub code: u8,
    /// The message.
    pub message: String,
    /// Whether it failed because another process holds the state.
    pub locked: bool,
}

impl Failure {
    /// Bad usage or configuration (exit 2).
    pub fn usage(message: impl ToString) -> Failure {
        Failure {
            code: 2,
            message: message.to_string(),
            locked: false,
        }
    }

    /// A failure (exit 1).
    pub fn failed(message: impl ToString) -> Failure {
        Failure {
            code: 1,
            message: message.to_string(),
            locked: false,
        }
    }
}

impl From<SyncError> for Failure {
    fn from(error: SyncError) -> Failure {
        match error {
            // A missing secret is a configuration problem (SPEC §3: exit 2), wherever it shows.
            SyncError::Secret(_) | SyncError::Source(crate::source::SourceError::Secret(_)) => {
                Failure::usage(error)
            }
            other => Failure::failed(other),
        }
    }
}

impl From<crate::state::StateError> for Failure {
    fn from(error: crate::state::StateError) -> Failure {
        let locked = matches!(error, crate::state::StateError::Locked { .. });
        Failure {
            locked,
            ..Failure::failed(error)
        }
    }
}

/// Runs the program: parses arguments, runs the command, returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(failure) => {
            tracing::debug!(message = "Command failed.", code = failure.code);
            eprintln!("error: {}", crate::net::redact::scrub(&failure.message));
            failure.code
        }
    };
    ExitCode::from(code)
}

fn run(cli: Cli) -> Result<u8, Failure> {
    let path = config_path(cli.config.as_deref());
    let config = Config::load(&path);
    let log_format = match (cli.log_format, &config) {
        (Some(LogFormatArg::Json), _) => LogFormat::Json,
        (Some(LogFormatArg::Text), _) => LogFormat::Text,
        (None, Ok(config)) => config.observability.log_format,
        (None, Err(_)) => LogFormat::Text,
    };
    init_logging(log_format, cli.verbose, cli.quiet);
    let config = config.map_err(Failure::usage)?;
    let path = config.file.clone();
    for secret in config.secrets() {
        if secret.is_inline() {
            tracing::warn!(
                message = "A secret is written inline in the configuration; prefer ${ENV_VAR} or a *_file key.",
                key = %secret.key
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::failed(format!("cannot start the async runtime: {error}")))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Sync(args) => sync_command(&config, args).await,
            Command::Run { new_state } => daemon(path, config, new_state).await,
            Command::Approve { dry_run, output } => {
                approve(&config, dry_run, output.unwrap_or_else(default_output)).await
            }
            Command::CheckConfig { connect } => check_config(&config, connect).await,
            Command::Preview {
                user,
                apply,
                output,
                new_state,
            } => preview(&config, &user, apply, output, new_state).await,
            Command::Status { output } => status(&config, output).await,
        }
    })
}

async fn daemon(path: PathBuf, config: Config, new_state: bool) -> Result<u8, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    require_named_state(&config, new_state)?;
    let listen = |kind: SignalKind| {
        signal(kind).map_err(|error| Failure::failed(format!("cannot watch signals: {error}")))
    };
    let mut terminate = listen(SignalKind::terminate())?;
    let mut interrupt = listen(SignalKind::interrupt())?;
    let mut hangup = listen(SignalKind::hangup())?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (reload_tx, reload) = tokio::sync::mpsc::unbounded_channel();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = terminate.recv() => { tracing::info!(message = "SIGTERM received."); on_signal.cancel(); }
                _ = interrupt.recv() => { tracing::info!(message = "SIGINT received."); on_signal.cancel(); }
                _ = hangup.recv() => {
                    tracing::info!(message = "SIGHUP received: reloading the configuration.");
                    if reload_tx.send(()).is_err() { break; }
                }
            }
        }
    });
    crate::daemon::run(path, config, crate::daemon::Signals { shutdown, reload })
        .await
        .map_err(|error| match error {
            crate::daemon::DaemonError::State(state) => Failure::from(state),
            other => Failure::failed(other),
        })?;
    Ok(0)
}

/// `--config`, else `$SOCIALTALENT_SYNC_CONFIG`, else the system path.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_owned)
        .or_else(|| {
            std::env::var_os("SOCIALTALENT_SYNC_CONFIG")
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

fn init_logging(format: LogFormat, verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("socialtalent_sync={level},warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Every log line, at every level, passes the redaction step on its way out.
        .with_writer(|| crate::net::redact::Redacting(std::io::stderr()))
        .with_ansi(std::io::stderr().is_terminal());
    // A second initialisation (tests running commands in one process) is harmless.
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Refuses to start a new, empty state where the configuration names none (`[state] path`
/// unset, no `$STATE_DIRECTORY`) unless `--new-state` says so: a command run by hand on an
/// installed system must use the service's state, never a fresh `./socialtalent-sync-state`
/// that takes every SocialTalent account for new.
///
/// # Errors
/// [`Failure`] (exit 2) naming `--new-state`.
pub fn require_named_state(config: &Config, new_state: bool) -> Result<(), Failure> {
    let path = &config.state.path;
    if config.state.named || new_state || path.join("db").exists() {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "there is no state at {} and the configuration names none ([state] path is unset and $STATE_DIRECTORY is not set); \
         this command would start a new, empty state there and take every SocialTalent account for new. \
         Set [state] path to the service's state directory (the package uses /var/lib/socialtalent-sync), \
         or pass --new-state to start a new state at {} on purpose",
        path.display(),
        path.display()
    )))
}

/// Sends the command to the daemon that holds the state, when one is running: `Some(exit
/// code)` once its answer is printed, `None` when the command is to run here.
async fn served_by_daemon(config: &Config, request: &Request) -> Result<Option<u8>, Failure> {
    match control::ask(config, request).await {
        Ok(Asked::NoDaemon) => Ok(None),
        Ok(Asked::Served(response)) => {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(response.stdout.as_bytes());
            let _ = stdout.flush();
            eprint!("{}", response.stderr);
            Ok(Some(response.code))
        }
        Err(message) => Err(Failure::failed(message)),
    }
}

/// `--output`'s default: text on a terminal, else JSON.
fn default_output() -> OutputFormat {
    if std::io::stdout().is_terminal() {
        OutputFormat::Text
    } else {
        OutputFormat::Json
    }
}

/// Writes a run's report in `output`'s format.
///
/// # Errors
/// What writing to `out` returns.
pub fn write_report(
    outcome: &sync::RunOutcome,
    output: OutputFormat,
    out: impl std::io::Write,
) -> std::io::Result<()> {
    match output {
        OutputFormat::Text => crate::report::write_text(outcome, out),
        OutputFormat::Json => crate::report::write_json(outcome, out),
    }
}

/// What `approve` prints when nothing is pending.
pub fn nothing_to_approve(output: OutputFormat) -> String {
    match output {
        OutputFormat::Text => "No held deactivations are pending; nothing to release.\n".into(),
        OutputFormat::Json => format!(
            "{}\n",
            pretty(&json!({"pending_holds": [], "detail": "no held deactivations are pending"}))
        ),
    }
}

/// Opens the state for a command that writes, or for reading when it exists.
fn open_state(config: &Config, create: bool) -> Result<Option<State>, Failure> {
    let path = &config.state.path;
    if !create && !path.join("db").exists() {
        return Ok(None);
    }
    Ok(Some(State::open(path)?))
}

async fn sync_command(config: &Config, args: SyncArgs) -> Result<u8, Failure> {
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Apply
    };
    let output = args.output.unwrap_or_else(default_output);
    // While the daemon holds the state, it runs the sync (`--dump` is only for a state at hand).
    if args.dump.is_none() {
        let request = Request::Sync {
            dry_run: args.dry_run,
            full: args.full,
            allow_deactivations: args.allow_deactivations,
            output,
        };
        if let Some(code) = served_by_daemon(config, &request).await? {
            return Ok(code);
        }
    }
    if mode == Mode::Apply {
        // A missing token is a configuration error reported before anything else.
        config
            .target
            .token
            .resolve()
            .map_err(|error| Failure::from(SyncError::Secret(error)))?;
        require_named_state(config, args.new_state)?;
    }
    let state = open_state(config, mode == Mode::Apply)?;
    let options = Options {
        mode,
        full: args.full,
        release: if args.allow_deactivations {
            Release::All
        } else {
            Release::Nothing
        },
    };
    if let Some(dir) = &args.dump {
        dump(config, state.as_ref(), options.clone(), dir).await?;
    }
    let bar = progress_bar(output);
    // While a phase reads (the source, SocialTalent), a ticker shows the requests answered.
    let reading: Arc<Mutex<Option<(Phase, u64)>>> = Arc::new(Mutex::new(None));
    let ticker = bar.clone().map(|bar| {
        let reading = Arc::clone(&reading);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let current = *reading.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((phase, base)) = current {
                    let answered = crate::progress::answered().saturating_sub(base);
                    bar.set_message(phase_message(phase, Some(answered)));
                }
            }
        })
    });
    let on_progress = |event: Progress| {
        if let Some(bar) = &bar {
            let mut current = reading.lock().unwrap_or_else(PoisonError::into_inner);
            match event {
                Progress::Phase(phase) => {
                    *current = matches!(phase, Phase::ReadingSource | Phase::ReadingTarget)
                        .then(|| (phase, crate::progress::answered()));
                    bar.set_message(phase_message(phase, None));
                }
                Progress::Planned { users_read, writes } => {
                    *current = None;
                    bar.set_length(writes as u64);
                    bar.set_message(planned_message(mode, users_read, writes));
                }
                Progress::ActionDone => bar.inc(1),
            }
        }
    };
    // Ctrl-C stops sending new writes; those in flight finish and are recorded.
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.cancel();
        }
    });
    let outcome = sync::run_once(config, state.as_ref(), options, &cancel, &on_progress).await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let outcome = outcome?;
    let summary = outcome.plan.summary();
    tracing::info!(
        message = "Sync finished.",
        mode = ?outcome.mode,
        users_read = outcome.read.records_read(),
        create = summary.create,
        update = summary.update,
        deactivate = summary.deactivate,
        reactivate = summary.reactivate,
        skipped = summary.skipped,
        held = summary.held,
        failed = outcome.failed(),
    );
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    if let Err(error) = write_report(&outcome, output, stdout) {
        tracing::error!(message = "Cannot write the report to standard output.", %error);
    }
    Ok(outcome.exit_code())
}

/// `approve`: one full run that releases exactly the holds pending now (through the daemon
/// while it holds the state); `--dry-run` plans it.
async fn approve(config: &Config, dry_run: bool, output: OutputFormat) -> Result<u8, Failure> {
    if let Some(code) = served_by_daemon(config, &Request::Approve { dry_run, output }).await? {
        return Ok(code);
    }
    if !dry_run {
        config
            .target
            .token
            .resolve()
            .map_err(|error| Failure::from(SyncError::Secret(error)))?;
    }
    // Approving never starts a state: without one, nothing was ever held.
    let Some(state) = open_state(config, false)? else {
        return Err(Failure::usage(format!(
            "there is no state at {}, so nothing is held; check [state] path (the service's state is /var/lib/socialtalent-sync when installed from the package)",
            config.state.path.display()
        )));
    };
    let pending = state.pending_holds()?;
    if pending.is_empty() {
        print!("{}", nothing_to_approve(output));
        return Ok(0);
    }
    let options = Options {
        mode: if dry_run { Mode::DryRun } else { Mode::Apply },
        full: true,
        release: Release::Pending(std::sync::Arc::new(crate::holds::keys(&pending))),
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.cancel();
        }
    });
    let outcome = sync::run_once(config, Some(&state), options, &cancel, &|_| {}).await?;
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    if let Err(error) = write_report(&outcome, output, stdout) {
        tracing::error!(message = "Cannot write the report to standard output.", %error);
    }
    Ok(outcome.exit_code())
}

fn progress_bar(output: OutputFormat) -> Option<indicatif::ProgressBar> {
    if output != OutputFormat::Text || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} requests")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("reading the source");
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(bar)
}

/// The progress line while a phase runs, with the requests answered so far when it reads.
fn phase_message(phase: Phase, answered: Option<u64>) -> String {
    let requests = |what: &str| match answered {
        Some(answered) => format!("{what}: {answered} requests answered"),
        None => what.to_owned(),
    };
    match phase {
        Phase::ReadingSource => requests("reading the source"),
        Phase::Mapping { users } => format!("mapping {users} users"),
        Phase::ReadingTarget => requests("reading SocialTalent's accounts back"),
        Phase::Planning => "planning".to_owned(),
    }
}

/// The progress line once the plan is built: a dry run sends nothing, so it never says so.
fn planned_message(mode: Mode, users_read: usize, writes: usize) -> String {
    match mode {
        Mode::DryRun => {
            format!("{users_read} users read; {writes} writes planned (dry run: nothing is sent)")
        }
        Mode::Apply => format!("{users_read} users read; sending {writes} writes"),
    }
}

async fn dump(
    config: &Config,
    state: Option<&State>,
    options: Options,
    dir: &Path,
) -> Result<(), Failure> {
    let planned = sync::plan_run(
        config,
        state,
        Options {
            mode: Mode::DryRun,
            ..options
        },
    )
    .await?;
    std::fs::create_dir_all(dir)
        .map_err(|error| Failure::failed(format!("cannot create {}: {error}", dir.display())))?;
    let users: Vec<&crate::model::SourceUser> =
        planned.read.users.iter().map(|u| u.as_ref()).collect();
    let state_users: serde_json::Map<String, Value> = planned
        .snapshot
        .users
        .iter()
        .map(|(id, record)| (id.0.clone(), json!(record)))
        .collect();
    let files = [
        (
            "source.json",
            json!({"read": &planned.read, "users": users}),
        ),
        ("state.json", Value::Object(state_users)),
        ("plan.json", json!(planned.plan.actions)),
    ];
    for (name, value) in files {
        std::fs::write(dir.join(name), pretty(&value)).map_err(|error| {
            Failure::failed(format!(
                "cannot write {}: {error}",
                dir.join(name).display()
            ))
        })?;
    }
    Ok(())
}

async fn check_config(config: &Config, connect: bool) -> Result<u8, Failure> {
    println!("configuration {}: valid", config.file.display());
    println!("  source: {}", config.source.kind());
    if let SourceConfig::File(file) = &config.source {
        println!("  source file: {}", file.path.display());
    }
    println!("  target: {}", config.target.base_url);
    println!("  state: {}", config.state.path.display());
    println!(
        "  mapped attributes: {}",
        config.mapping.attributes().join(", ")
    );
    let mut problems = 0;
    let mut secrets_present = true;
    for secret in config.secrets() {
        match secret.resolve() {
            Ok(_) => println!("  secret {}: present", secret.key),
            Err(error) => {
                problems += 1;
                secrets_present = false;
                println!("  secret {}: MISSING — {error}", secret.key);
            }
        }
    }
    // A key or certificate that is present but unusable fails here as it would in `sync`.
    if secrets_present && let Err(error) = crate::source::check_credentials(&config.source) {
        problems += 1;
        println!("  credentials: INVALID — {error}");
    }
    if let Some(mode) = crate::state::open_to_others(&config.state.path) {
        println!(
            "  state: WARNING — {} is open to other users (mode {mode:04o}); it holds names, \
             emails and SocialTalent ids: chmod 700 {}",
            config.state.path.display(),
            config.state.path.display()
        );
    }
    // Connecting with a credential known to be missing or unusable would only repeat it.
    if connect && problems == 0 {
        problems += check_connections(config).await?;
    } else if connect {
        println!("  not connecting: fix the problems above first");
    }
    if problems > 0 {
        return Err(Failure::usage(format!(
            "{problems} problem(s) found in {}",
            config.file.display()
        )));
    }
    println!("ok");
    Ok(0)
}

/// Contacts the source and the target; returns how many configuration problems it found.
async fn check_connections(config: &Config) -> Result<usize, Failure> {
    let seen = crate::source::check(&config.source)
        .await
        .map_err(|error| Failure::from(SyncError::Source(error)))?;
    println!("  source: {seen}");
    let client = sync::scim_client(config)?;
    let provider = client
        .get_optional("/ServiceProviderConfig")
        .await
        .map_err(Failure::failed)?;
    println!(
        "  target: authenticated; /ServiceProviderConfig {}",
        if provider.is_some() {
            "read"
        } else {
            "not served"
        }
    );
    let Some(schemas) = client
        .get_optional("/Schemas")
        .await
        .map_err(Failure::failed)?
    else {
        println!("  target: /Schemas is not served; the mapping cannot be checked before writing");
        return Ok(0);
    };
    let undeclared = undeclared_attributes(
        &config.mapping.attributes(),
        &schemas,
        &config.target.extension_schema,
    );
    for attribute in &undeclared {
        println!("  mapping: {attribute} is not declared by the target's schemas");
    }
    if undeclared.is_empty() {
        println!("  mapping: every mapped attribute is declared by the target");
    }
    Ok(undeclared.len())
}

/// Mapped attributes that the target's `/Schemas` does not declare.
pub fn undeclared_attributes(
    attributes: &[String],
    schemas: &Value,
    extension_schema: &str,
) -> Vec<String> {
    let resources: Vec<&Value> = match schemas {
        Value::Array(items) => items.iter().collect(),
        other => other
            .get("Resources")
            .and_then(Value::as_array)
            .map(|items| items.iter().collect())
            .unwrap_or_default(),
    };
    let declared = |schema: &str| -> Option<&Vec<Value>> {
        resources
            .iter()
            .find(|resource| resource.get("id").and_then(Value::as_str) == Some(schema))
            .and_then(|resource| resource.get("attributes"))
            .and_then(Value::as_array)
    };
    let has = |list: Option<&Vec<Value>>, name: &str| -> bool {
        list.is_some_and(|list| {
            list.iter().any(|attribute| {
                attribute
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|declared| declared.eq_ignore_ascii_case(name))
            })
        })
    };
    let core = declared(wire::CORE_SCHEMA);
    let name_subs = core.and_then(|attributes| {
        attributes
            .iter()
            .find(|a| a.get("name").and_then(Value::as_str) == Some("name"))
            .and_then(|a| a.get("subAttributes"))
            .and_then(Value::as_array)
    });
    let extension = if extension_schema.is_empty() {
        core
    } else {
        declared(extension_schema)
    };
    attributes
        .iter()
        // `externalId` is a common attribute of every resource (RFC 7643 §3.1), not listed in
        // any schema.
        .filter(|attribute| attribute.as_str() != crate::model::attr::EXTERNAL_ID)
        .filter(|attribute| match wire::placement(attribute) {
            wire::Placement::Core => !has(core, attribute),
            wire::Placement::Name => !has(name_subs, &attribute["name.".len()..]),
            wire::Placement::Extension => !has(extension, attribute),
        })
        .cloned()
        .collect()
}

async fn preview(
    config: &Config,
    wanted: &str,
    apply: bool,
    output: OutputFormat,
    new_state: bool,
) -> Result<u8, Failure> {
    let request = Request::Preview {
        user: wanted.to_owned(),
        apply,
        output,
    };
    if let Some(code) = served_by_daemon(config, &request).await? {
        return Ok(code);
    }
    if apply {
        require_named_state(config, new_state)?;
    }
    let state = open_state(config, apply)?;
    let mut out = String::new();
    let result = preview_to(config, state.as_ref(), wanted, apply, output, &mut out).await;
    print!("{out}");
    result
}

/// `preview` on a state at hand (this process's, or the daemon's), writing what it shows to
/// `out`; with `apply`, provisions that user now.
///
/// # Errors
/// [`Failure`] when the user is unknown, the source cannot be read, or the write failed.
pub async fn preview_to(
    config: &Config,
    state: Option<&State>,
    wanted: &str,
    apply: bool,
    output: OutputFormat,
    out: &mut String,
) -> Result<u8, Failure> {
    use std::fmt::Write as _;
    let read = crate::source::read_one(&config.source, state, wanted)
        .await
        .map_err(|error| Failure::from(SyncError::Source(error)))?
        .ok_or_else(|| {
            Failure::failed(format!(
                "no user {wanted:?} in the source (looked up by id, login and email)"
            ))
        })?;
    let planned = sync::plan_read(config, state, read, &Release::Nothing)?;
    let user = planned
        .read
        .users
        .first()
        .ok_or_else(|| Failure::failed("internal: the source returned no user"))?;
    let mapped = planned
        .mapped
        .iter()
        .find(|mapped| mapped.idp_id == user.id)
        .ok_or_else(|| Failure::failed("internal: the user was read but not mapped"))?;
    let (scope, payload, mapping_error) = match &mapped.decision {
        Decision::Provision(attributes) => (
            "in scope",
            Some(wire::user_document(
                attributes,
                &config.target.extension_schema,
                true,
            )),
            None,
        ),
        Decision::Unchanged => ("in scope, unchanged since the last push", None, None),
        Decision::Inactive => ("not provisioned: inactive in the source", None, None),
        Decision::OutOfScope => ("not provisioned: outside [scope] when", None, None),
        Decision::Failed(error) => ("mapping failed", None, Some(error.to_string())),
    };
    let action = planned
        .plan
        .actions
        .iter()
        .find(|action| action.idp_id == user.id);
    let action_json = action.map_or_else(|| json!({"op": "none"}), |action| json!(action));
    if output == OutputFormat::Json {
        let _ = writeln!(
            out,
            "{}",
            pretty(&json!({
                "user": user.as_ref(),
                "scope": scope,
                "mapping_error": mapping_error,
                "payload": payload,
                "action": action_json,
            }))
        );
    } else {
        let _ = writeln!(
            out,
            "Source attributes of {} ({}):\n{}\n",
            user.label(),
            user.id,
            pretty(&json!(user.as_ref()))
        );
        let _ = writeln!(out, "Scope: {scope}");
        if let Some(error) = &mapping_error {
            let _ = writeln!(out, "Mapping error: {error}");
        }
        if let Some(payload) = &payload {
            let _ = writeln!(out, "\nMapped SCIM document:\n{}", pretty(payload));
        }
        match action {
            None => {
                let _ = writeln!(out, "\nAction: none (SocialTalent already matches)");
            }
            Some(action) => {
                let _ = writeln!(out, "\nAction: {:?}", action.op);
                for change in &action.changes {
                    let _ = writeln!(
                        out,
                        "  {}: {} → {}",
                        change.attribute, change.from, change.to
                    );
                }
                if let Some(reason) = action.reason.as_ref().or(action.error.as_ref()) {
                    let _ = writeln!(out, "  {reason}");
                }
            }
        }
    }
    if !apply {
        return Ok(0);
    }
    let Some(action) = action.filter(|action| action.op.writes_target()) else {
        let _ = writeln!(out, "\nNothing to apply.");
        return Ok(0);
    };
    let state =
        state.ok_or_else(|| Failure::failed("internal: the state was not opened for writing"))?;
    let client = sync::scim_client(config)?;
    let single = crate::plan::Plan {
        actions: vec![crate::plan::Action {
            wave: 0,
            ..action.clone()
        }],
        ..crate::plan::Plan::default()
    };
    let settings = crate::executor::WriteSettings {
        update_with: config.target.update_with,
        deactivate_with: config.target.deactivate_with,
        max_in_flight: 1,
        quarantine_after: config.safety.failure_quarantine_after,
    };
    let execution = crate::executor::execute(
        &client,
        state,
        settings,
        &single,
        &planned.snapshot,
        &sync::guards(config, &planned.read, &planned.snapshot),
        &tokio_util::sync::CancellationToken::new(),
        &|| {},
    )
    .await;
    state.flush()?;
    match execution.results.first() {
        Some(crate::executor::ActionResult::Failed { error }) => Err(Failure::failed(format!(
            "applying {:?} failed: {error}",
            action.op
        ))),
        _ => {
            let _ = writeln!(out, "\nApplied: {:?} {}", action.op, action.user_name);
            Ok(0)
        }
    }
}

async fn status(config: &Config, output: OutputFormat) -> Result<u8, Failure> {
    // A user who may not use the control socket can still read a loopback `/status` below.
    match served_by_daemon(config, &Request::Status { output }).await {
        Ok(Some(code)) => return Ok(code),
        Ok(None) => {}
        Err(failure) => {
            tracing::debug!(message = "The control socket did not serve status.", error = %failure.message);
        }
    }
    let report = match open_state(config, false) {
        Ok(None) => StatusReport::uninitialised(&config.state.path),
        Ok(Some(state)) => StatusReport::of(&state, config.safety.failure_quarantine_after)?,
        // A daemon holds the state but its control socket did not answer: ask its `/status`
        // (served on a loopback `listen` only).
        Err(failure) if failure.locked => match config.observability.listen {
            Some(address) => status_from_daemon(address).await.map_err(|error| {
                Failure::failed(format!(
                    "{}; asking the running daemon at {address} failed too: {error}",
                    failure.message
                ))
            })?,
            None => return Err(failure),
        },
        Err(failure) => return Err(failure),
    };
    print!("{}", render_status(&report, output));
    Ok(0)
}

/// What `status` prints.
pub fn render_status(report: &StatusReport, output: OutputFormat) -> String {
    match output {
        OutputFormat::Json => format!("{}\n", pretty(&json!(report))),
        OutputFormat::Text => report.to_text(),
    }
}

async fn status_from_daemon(address: std::net::SocketAddr) -> Result<StatusReport, String> {
    let url = format!("http://{address}/status");
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|error| error.to_string())?
        .get(&url)
        .send()
        .await
        .map_err(|error| format!("{url}: {error}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    response
        .json::<StatusReport>()
        .await
        .map_err(|error| format!("{url}: {error}"))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_progress_line_never_says_sending() {
        let dry = planned_message(Mode::DryRun, 25, 21);
        assert!(!dry.to_lowercase().contains("send"), "{dry}");
        assert!(dry.contains("25 users read"), "{dry}");
        assert!(dry.contains("dry run"), "{dry}");
        let apply = planned_message(Mode::Apply, 25, 21);
        assert_eq!(apply, "25 users read; sending 21 writes");
    }

    #[test]
    fn progress_lines_say_which_phase_runs_and_count_the_requests_of_a_read() {
        assert_eq!(
            phase_message(Phase::ReadingSource, Some(12)),
            "reading the source: 12 requests answered"
        );
        assert_eq!(
            phase_message(Phase::ReadingTarget, None),
            "reading SocialTalent's accounts back"
        );
        assert_eq!(
            phase_message(Phase::Mapping { users: 250 }, None),
            "mapping 250 users"
        );
        assert_eq!(phase_message(Phase::Planning, None), "planning");
    }
}
