//! The binary's edge: parse the command line, set up logging, load config, run a command, map
//! errors to exit codes (0 ok, 1 runtime failure, 2 config or usage error).

use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use serde_json::json;

use postmaster_bot::config::{self, Config, StateConfig};
use postmaster_bot::pipeline::case::{Case, Parent, State, Topic, Transition};
use postmaster_bot::pipeline::classify::{Kind, Origin, Verdict};
use postmaster_bot::pipeline::decide::Mode;
use postmaster_bot::pipeline::render::{self, IdentityView, MessageView};
use postmaster_bot::shell::engine::Engine;
use postmaster_bot::shell::logging;
use postmaster_bot::shell::oauth::{OAuthError, TokenProvider};
use postmaster_bot::shell::queue;
use postmaster_bot::shell::replay::{self, Format};
use postmaster_bot::shell::secret::Credential;
use postmaster_bot::shell::store::{open_state, Store};

mod cli;

use cli::{
    AuthCommand, CasesCommand, Cli, Command, LogFormat, ModeArg, QueueCommand, StateCommand,
    TemplatesCommand, WebCommand,
};

/// An error the user fixes in the config or the command line (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
    match run(cli) {
        Ok(code) => code,
        // A reader that went away (`| head`) is not an error worth reporting.
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("postmaster-bot: error: {err:#}");
            if err.downcast_ref::<UsageError>().is_some()
                || err.downcast_ref::<config::ConfigError>().is_some()
                || err
                    .downcast_ref::<postmaster_bot::shell::engine::SetupError>()
                    .is_some()
                || err
                    .downcast_ref::<postmaster_bot::pipeline::render::RenderError>()
                    .is_some()
                || err
                    .downcast_ref::<postmaster_bot::shell::instance::InstanceError>()
                    .is_some_and(|e| {
                        matches!(
                            e,
                            postmaster_bot::shell::instance::InstanceError::Held { .. }
                        )
                    })
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// What an operator looks up in the man page and clap does not know.
const MAN_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Success.
.TP
.B 1
A runtime failure (an unreachable server, a rejected login, a locked store), or some file could
not be handled (the others still ran).
.TP
.B 2
A config, rules or template error, a usage error, or another postmaster\-bot already runs on
the state store. A service manager should not restart on it.
.SH ENVIRONMENT
.TP
.B RUST_LOG
Log filter; overrides \fB\-v\fR.
.TP
.B NO_COLOR
When set to anything, no colour in the log (there is none anyway unless stderr is a terminal).
.TP
.B JOURNAL_STREAM
Set by systemd; when it names stderr, log lines carry no timestamp of their own.
.SH FILES
.TP
.I /etc/postmaster\-bot/config.toml
The configuration (\fBconfig.example.toml\fR lists every key).
.TP
.I <state path>.lock
Held by \fBrun\fR while it lives: one daemon per state store.
.SH "SEE ALSO"
Each command's \fB\-\-help\fR; the README, "Running it on a real mailbox".
"#;

fn init_logging(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let style = logging::style(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        logging::stderr_is_journal(std::env::var_os("JOURNAL_STREAM").as_deref()),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(style.ansi);
    // JSON keeps its timestamp field even in the journal: tools that read the objects want it.
    match (format, style.timestamps) {
        (LogFormat::Text, true) => builder.init(),
        (LogFormat::Text, false) => builder.without_time().init(),
        (LogFormat::Json, _) => builder.json().init(),
    }
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(config::load(p)?),
        None => Ok(Config::default()),
    }
}

/// Password files others can read get a warning: the bot reads them, nobody else should.
fn warn_readable_secrets(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let oauth2 = config.oauth2.as_ref();
        let sources = [
            config.mailbox.as_ref().and_then(|m| m.password.as_ref()),
            config.smtp.as_ref().and_then(|s| s.password.as_ref()),
            oauth2.and_then(|o| o.client_secret.as_ref()),
        ];
        let mut files: Vec<&Path> = sources
            .into_iter()
            .flatten()
            .filter_map(|s| match s {
                config::SecretSource::File(p) => Some(p.as_path()),
                _ => None,
            })
            .collect();
        if let Some(config::RefreshTokenStore::File(p)) =
            oauth2.and_then(|o| o.refresh_token.as_ref())
        {
            files.push(p);
        }
        for path in files {
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    let w = format!(
                        "secret file {} is readable by others (mode {:o}): chmod 600 it",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    );
                    tracing::warn!("{w}");
                    warnings.push(w);
                }
            }
        }
    }
    warnings
}

fn warn_untrusted(config: &Config) {
    if config.classify.authserv_ids.is_empty() {
        tracing::warn!(
            "no [trust] authserv_ids configured: no message counts as Microsoft's, so none is answered"
        );
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Classify {
            config,
            format,
            files,
        } => {
            let config = load_config(config.as_deref())?;
            warn_untrusted(&config);
            let state = config.state.clone();
            let engine = Engine::new(config)?;
            // The daemon's learned templates count here too, when its store exists.
            match &state {
                StateConfig::Sqlite(path) if !path.exists() => {}
                state => {
                    engine.load_templates(&open_state(state)?)?;
                }
            }
            let mut failed = false;
            for file in files {
                let shown = file.display().to_string();
                let raw = match std::fs::read(&file) {
                    Ok(raw) => raw,
                    Err(e) => {
                        failed = true;
                        match format {
                            Format::Json => writeln!(
                                out,
                                "{}",
                                json!({"file": shown, "error": format!("failed to read file: {e}")})
                            )?,
                            Format::Text => {
                                writeln!(out, "{shown}: error: failed to read file: {e}")?
                            }
                        }
                        continue;
                    }
                };
                let prepared = engine.prepare(&raw);
                let v = &prepared.verdict;
                match format {
                    Format::Json => writeln!(
                        out,
                        "{}",
                        json!({
                            "file": shown,
                            "kind": v.kind,
                            "ticket_id": v.ticket_id,
                            "ips": v.ips,
                            "trusted": v.trusted,
                            "origin": v.origin,
                            "outcomes": v.outcomes,
                            "bounce": v.bounce,
                            "provider": v.provider(),
                            "block_code": v.bounce.as_ref().and_then(|b| b.block_code.as_deref()),
                            "confidence": (v.confidence * 1000.0).round() / 1000.0,
                            "runner_up": v.runner_up,
                            "uncertain": v.uncertain,
                            "evidence": v.evidence,
                            "message_id": prepared.inbound.message_id,
                            "subject": prepared.inbound.subject,
                            "truncated": prepared.inbound.truncated,
                            "damage": prepared.inbound.damage,
                        })
                    )?,
                    Format::Text => {
                        writeln!(
                            out,
                            "{shown}: {}{} ticket={} ips={} trusted={}",
                            v.kind,
                            if v.kind.is_microsoft_support() {
                                format!(
                                    " ({:.0}%{})",
                                    v.confidence * 100.0,
                                    if v.uncertain.is_some() {
                                        ", uncertain"
                                    } else {
                                        ""
                                    }
                                )
                            } else {
                                String::new()
                            },
                            v.ticket_id.as_deref().unwrap_or("-"),
                            if v.ips.is_empty() {
                                "-".to_string()
                            } else {
                                v.ips.join(",")
                            },
                            if v.trusted { "yes" } else { "no" }
                        )?;
                        for e in &v.evidence {
                            match e.weight {
                                Some(w) => {
                                    writeln!(out, "    {} [{w:+.1}]: {}", e.rule, e.matched)?
                                }
                                None => writeln!(out, "    {}: {}", e.rule, e.matched)?,
                            }
                        }
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Replay {
            config,
            state,
            out: out_dir,
            format,
            paths,
        } => {
            let config = load_config(config.as_deref())?;
            warn_untrusted(&config);
            let engine = Engine::new(config)?;
            // A temporary store unless one is named: replay must never touch the daemon's.
            let temp = tempfile::tempdir().context("failed to create a temporary folder")?;
            let state = match state {
                Some(s) => state_argument(&s)?,
                None => StateConfig::Sqlite(temp.path().join("replay.sqlite3")),
            };
            let mut store = open_state(&state)?;
            // Templates taught into that store count, as they would for the daemon.
            engine.load_templates(&store)?;
            let summary = replay::run(
                &engine,
                &mut store,
                &paths,
                out_dir.as_deref(),
                format,
                &mut out,
            )?;
            if let Some(why) = &summary.stopped {
                eprintln!("postmaster-bot: replay stopped: {why}");
                return Ok(ExitCode::from(1));
            }
            if summary.failed > 0 {
                eprintln!(
                    "postmaster-bot: {} of {} file(s) could not be handled (see the error lines)",
                    summary.failed,
                    summary.failed + summary.messages
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cases { command } => cases(command, &mut out),
        Command::Queue { command } => queue(command, &mut out),
        Command::Teach {
            config,
            kind,
            message_id,
            files,
        } => teach(&config, &kind, message_id.as_deref(), &files, &mut out),
        Command::Templates { command } => templates(command, &mut out),
        Command::Run { config, once, mode } => run_daemon(&config, once, mode),
        Command::CheckConfig { config } => check_config(&config, &mut out),
        Command::Auth { command } => auth(command, &mut out),
        Command::Serve { config } => serve(&config),
        Command::Web { command } => web(command, &mut out),
        Command::State {
            command: StateCommand::Copy { from, to },
        } => state_copy(&from, &to, &mut out),
        Command::Instances {
            config,
            state,
            format,
        } => instances(config.as_deref(), state, format, &mut out),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "postmaster-bot", &mut out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .context("failed to write the man page")?;
            out.write_all(MAN_SECTIONS.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn auth(command: AuthCommand, out: &mut impl Write) -> Result<ExitCode> {
    let path = match &command {
        AuthCommand::Login { config } | AuthCommand::Check { config } => config.clone(),
    };
    let config = config::load(&path)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let provider = || -> Result<std::sync::Arc<TokenProvider>> {
        let cfg = config.oauth2.clone().ok_or_else(|| {
            UsageError(format!(
                "config {}: no [oauth2] section; `auth` works with the OAuth2 provider",
                path.display()
            ))
        })?;
        Ok(std::sync::Arc::new(TokenProvider::new(cfg)?))
    };
    match command {
        AuthCommand::Login { .. } => {
            let provider = provider()?;
            let show = |text: &str| {
                println!("{text}");
                let _ = std::io::stdout().flush();
            };
            runtime.block_on(async {
                match provider.config().flow {
                    config::Flow::DeviceCode => provider.login_device_code(show).await,
                    config::Flow::AuthorizationCode => {
                        provider.login_authorization_code(show).await
                    }
                    config::Flow::ClientCredentials => Err(OAuthError::Login(
                        "flow = \"client_credentials\" needs no sign-in: run `auth check`".into(),
                    )),
                }
            })?;
            // The provider's first refresh proves the stored token works.
            runtime.block_on(provider.access_token(true))?;
            if let Some(config::RefreshTokenStore::File(p)) = &provider.config().refresh_token {
                writeln!(
                    out,
                    "signed in; refresh token stored in {} (mode 600)",
                    p.display()
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        AuthCommand::Check { .. } => {
            let provider = config.oauth2.as_ref().map(|_| provider()).transpose()?;
            runtime.block_on(async {
                if let Some(m) = &config.mailbox {
                    let credential =
                        Credential::pick(m.auth, m.password.as_ref(), provider.as_ref())
                            .context("[mailbox] has no credential")?;
                    let secret = credential.get(true).await?;
                    let mut imap = postmaster_bot::shell::imap::Imap::connect(m, &secret).await?;
                    writeln!(
                        out,
                        "IMAP {}:{}: logged in as {}",
                        m.host, m.port, m.username
                    )?;
                    let report = folder_report(&config, m, &mut imap).await;
                    imap.logout().await;
                    out.write_all(report?.as_bytes())?;
                }
                if let Some(s) = &config.smtp {
                    let credential =
                        Credential::pick(s.auth, s.password.as_ref(), provider.as_ref());
                    let secret = match &credential {
                        Some(c) => Some(c.get(false).await?),
                        None => None,
                    };
                    postmaster_bot::shell::smtp::Smtp::new(s, secret)?
                        .check()
                        .await?;
                    writeln!(
                        out,
                        "SMTP {}:{}: connected and authenticated",
                        s.host, s.port
                    )?;
                }
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The server's namespace and the folders the bot will use there in the configured mode,
/// each with whether it exists now.
async fn folder_report(
    config: &config::Config,
    mailbox: &config::MailboxConfig,
    imap: &mut postmaster_bot::shell::imap::Imap,
) -> Result<String> {
    use postmaster_bot::shell::daemon::Folders;
    let ns = imap.namespace().clone();
    let mut report = format!(
        "  personal namespace: prefix {:?}, hierarchy delimiter {}\n  folders in {} mode:\n",
        ns.prefix,
        ns.delimiter
            .map_or("none".to_string(), |d| format!("{:?}", d.to_string())),
        config.mode
    );
    let local = imap.localized(mailbox);
    let folders = Folders::plan(config.mode, &local, imap, config.smtp.is_some()).await?;
    let mut rows = vec![("watched", local.folder.clone())];
    rows.extend(folders.written.iter().map(|w| (w.role, w.name.clone())));
    for (role, name) in rows {
        let state = match (imap.folder_exists(&name).await?, role) {
            (true, _) => "exists",
            (false, "watched") => "missing: the bot reads mail from here, so create it",
            (false, _) => "missing: created when the bot starts",
        };
        report.push_str(&format!("    {role:<9} {name:<40} {state}\n"));
    }
    Ok(report)
}

fn run_daemon(path: &Path, once: bool, mode: Option<ModeArg>) -> Result<ExitCode> {
    let mut config = config::load(path)?;
    let mode = mode.map(|m| match m {
        ModeArg::Auto => Mode::Auto,
        ModeArg::Draft => Mode::Draft,
        ModeArg::Approve => Mode::Approve,
    });
    if let Some(mode) = mode {
        config.mode = mode;
    }
    config.check_can_send()?;
    warn_untrusted(&config);
    warn_readable_secrets(&config);
    if config.mailbox.is_none() {
        return Err(UsageError(format!(
            "config {}: a [mailbox] section is required to run",
            path.display()
        ))
        .into());
    }
    // One crypto provider for the whole process (rustls 0.23 needs it chosen).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Before the store is opened or migrated: a second daemon stops here, touching nothing.
    // On PostgreSQL several run side by side, each mailbox under a lease.
    let _instance = match &config.state {
        StateConfig::Sqlite(path) => Some(postmaster_bot::shell::instance::lock(path)?),
        StateConfig::Postgres(_) => None,
    };
    // SQLite: opened (created, migrated) once here, so a store that cannot be stops the start;
    // on PostgreSQL the lease loop's own connection is the first.
    if let StateConfig::Sqlite(_) = &config.state {
        drop(open_state(&config.state)?);
    }
    let state = config.state.clone();
    let mailbox_configs = config.mailbox_configs();
    let engine = std::sync::Arc::new(Engine::new(config)?);
    let mut mailboxes = Vec::new();
    for (name, mut mailbox_config) in mailbox_configs {
        if let Some(mode) = mode {
            mailbox_config.mode = mode;
        }
        mailbox_config.check_can_send()?;
        mailboxes.push(postmaster_bot::shell::fleet::Mailbox {
            name,
            engine: std::sync::Arc::new(Engine::with_rules(mailbox_config, engine.rules.clone())?),
        });
    }
    service_runtime()?.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tx = std::sync::Arc::new(tx);
        let signals = tokio::spawn({
            let tx = tx.clone();
            async move {
                wait_for_signal().await;
                tracing::info!("signal received: finishing the message in hand, then stopping");
                let _ = tx.send(true);
            }
        });
        // The console runs beside the daemon; if it cannot, the daemon stops too, cleanly.
        let console = engine.config.web.clone().filter(|_| !once).map(|web| {
            let engine = std::sync::Arc::clone(&engine);
            let (tx, rx) = (tx.clone(), rx.clone());
            tokio::spawn(async move {
                let served = postmaster_bot::shell::web::serve(engine, web, rx).await;
                if served.is_err() {
                    let _ = tx.send(true);
                }
                served
            })
        });
        let result = postmaster_bot::shell::fleet::run(mailboxes, &state, once, rx).await;
        let _ = tx.send(true);
        signals.abort();
        if let Some(console) = console {
            console
                .await
                .context("the console task failed")?
                .context("the operator's console")?;
        }
        anyhow::Ok(result?)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The runtime of a long-running command (the daemon, the console): two worker threads.
fn service_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

/// `serve`: the console alone, against the store a daemon elsewhere works on.
fn serve(path: &Path) -> Result<ExitCode> {
    let config = config::load(path)?;
    let Some(web) = config.web.clone() else {
        return Err(UsageError(format!(
            "config {}: serve needs a [web] section (listen = \"127.0.0.1:8025\")",
            path.display()
        ))
        .into());
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let engine = Engine::new(config)?;
    service_runtime()?.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signals = tokio::spawn(async move {
            wait_for_signal().await;
            let _ = tx.send(true);
        });
        let served = postmaster_bot::shell::web::serve(std::sync::Arc::new(engine), web, rx).await;
        signals.abort();
        served
    })?;
    Ok(ExitCode::SUCCESS)
}

fn web(command: WebCommand, out: &mut dyn Write) -> Result<ExitCode> {
    match command {
        WebCommand::Adduser { name, config } => {
            let cfg = config::load(&config)?;
            let Some(path) = cfg.web.as_ref().and_then(|w| w.users_file.clone()) else {
                return Err(UsageError(format!(
                    "config {}: web.users_file is not set; set it to where the console's users are kept",
                    config.display()
                ))
                .into());
            };
            let password = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                let first = rpassword::prompt_password(format!("password for {name}: "))?;
                let again = rpassword::prompt_password("the same again: ")?;
                if first != again {
                    return Err(UsageError("the two passwords differ".to_string()).into());
                }
                first
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_string()
            };
            postmaster_bot::shell::web::auth::add_user(&path, &name, &password).map_err(
                |e| match e {
                    postmaster_bot::shell::web::auth::UsersError::Invalid(why) => {
                        anyhow::Error::from(UsageError(why))
                    }
                    other => other.into(),
                },
            )?;
            writeln!(
                out,
                "user {name} can log in to the console ({})",
                path.display()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn queue(command: QueueCommand, out: &mut dyn Write) -> Result<ExitCode> {
    let now = postmaster_bot::clock::now();
    match command {
        QueueCommand::List { config, state } => {
            let store = open_existing(&state_path(config.as_deref(), state)?)?;
            let waiting = store.outbox_items("awaiting_approval")?;
            let held = store.outbox_items("held")?;
            if waiting.is_empty() && held.is_empty() {
                writeln!(out, "nothing waits for approval and nothing is held")?;
            }
            for (title, items) in [("waiting for approval", waiting), ("held", held)] {
                if items.is_empty() {
                    continue;
                }
                writeln!(out, "{title}:")?;
                for i in items {
                    writeln!(
                        out,
                        "#{:<4} case #{:<4} {:<22} to {} [{}]{}",
                        i.id,
                        i.case_id.unwrap_or(0),
                        i.template,
                        i.recipients.join(", "),
                        i.subject,
                        i.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    )?;
                }
            }
        }
        QueueCommand::Show { id, config, state } => {
            let store = open_existing(&state_path(config.as_deref(), state)?)?;
            let Some(item) = store.outbox_item(id)? else {
                return Err(UsageError(format!("no outbox entry #{id}")).into());
            };
            writeln!(
                out,
                "outbox #{} ({}, {}){}",
                item.id,
                item.template,
                item.status,
                item.reason.map(|r| format!(": {r}")).unwrap_or_default()
            )?;
            out.write_all(&item.bytes)?;
            writeln!(out)?;
        }
        QueueCommand::Approve { id, config, state }
        | QueueCommand::Release { id, config, state } => {
            let cfg = config.as_deref().map(config::load).transpose()?;
            let path = match state {
                Some(s) => state_argument(&s)?,
                None => cfg.clone().unwrap_or_default().state,
            };
            let mut store = open_existing(&path)?;
            let defaults = Config::default();
            let cfg = cfg.as_ref().unwrap_or(&defaults);
            queue::release(&mut store, cfg, id, &queue::Actor::command_line(), now)
                .map_err(usage_or_store)?;
            writeln!(
                out,
                "outbox #{id} released: the daemon delivers it on its next pass"
            )?;
        }
        QueueCommand::Reject { id, config, state } => {
            let mut store = open_existing(&state_path(config.as_deref(), state)?)?;
            queue::reject(&mut store, id, &queue::Actor::command_line(), now)
                .map_err(usage_or_store)?;
            writeln!(out, "outbox #{id} rejected: it will never be sent")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A refused act on the queue is the user's to fix (exit 2); a store failure is not.
fn usage_or_store(e: queue::QueueError) -> anyhow::Error {
    match e {
        queue::QueueError::Store(e) => e.into(),
        other => UsageError(other.to_string()).into(),
    }
}

fn teach(
    config: &Path,
    kind: &str,
    message_id: Option<&str>,
    files: &[PathBuf],
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let kind: Kind = serde_json::from_value(serde_json::Value::String(kind.to_string()))
        .map_err(|_| UsageError(format!("--kind {kind}: not a kind (ms_ack, ms_not_qualified, ms_conditionally_mitigated, ms_mitigated, ms_escalated, ms_info_requested, ms_resolved, ms_other)")))?;
    let cfg = config::load(config)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut store = open_state(&cfg.state)?;
    let engine = Engine::new(cfg)?;
    engine.load_templates(&store)?;
    let mut messages: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(id) = message_id {
        let id = id.trim().trim_start_matches('<').trim_end_matches('>');
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to start the async runtime")?;
        match runtime.block_on(postmaster_bot::shell::daemon::fetch_message(&engine, id))? {
            Some(raw) => messages.push((format!("<{id}>"), raw)),
            None => {
                return Err(UsageError(format!(
                    "no message with Message-ID <{id}> in the watched folder"
                ))
                .into())
            }
        }
    }
    for f in files {
        let raw = std::fs::read(f).with_context(|| format!("failed to read {}", f.display()))?;
        messages.push((f.display().to_string(), raw));
    }
    for (source, raw) in messages {
        let now = postmaster_bot::clock::now();
        let taught =
            postmaster_bot::shell::teach::teach(&engine, &mut store, kind, &raw, &source, now)
                .map_err(|e| match e {
                    postmaster_bot::shell::teach::TeachError::Store(e) => anyhow::Error::from(e),
                    postmaster_bot::shell::teach::TeachError::Handle(e) => anyhow::Error::from(e),
                    other => UsageError(other.to_string()).into(),
                })?;
        write!(
            out,
            "{source}: template #{} ({kind}); the message is now {} (was {})",
            taught.template, taught.after, taught.before
        )?;
        match &taught.redecided {
            Some(h) => writeln!(
                out,
                "; decided again: {} ({}){}",
                h.action,
                h.reason,
                if h.produced.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} message(s) in the outbox for the daemon",
                        h.produced.len()
                    )
                }
            )?,
            None => writeln!(out)?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn templates(command: TemplatesCommand, out: &mut dyn Write) -> Result<ExitCode> {
    match command {
        TemplatesCommand::List { config, state } => {
            let store = open_existing(&state_path(config.as_deref(), state)?)?;
            let all = store.templates()?;
            if all.is_empty() {
                writeln!(out, "no learned templates")?;
            }
            for t in all {
                writeln!(
                    out,
                    "#{:<4} {:<28} {}  {}",
                    t.id,
                    t.kind.as_str(),
                    render::rfc2822(t.created_at),
                    t.source
                )?;
            }
        }
        TemplatesCommand::Show { id, config, state } => {
            let store = open_existing(&state_path(config.as_deref(), state)?)?;
            let Some(t) = store.templates()?.into_iter().find(|t| t.id == id) else {
                return Err(UsageError(format!("no template #{id}")).into());
            };
            writeln!(
                out,
                "template #{} ({}) from {}, {}; {} shingles\n\n{}",
                t.id,
                t.kind,
                t.source,
                render::rfc2822(t.created_at),
                t.shingles.len(),
                t.sample
            )?;
        }
        TemplatesCommand::Remove { id, config, state } => {
            let store = open_existing(&state_path(config.as_deref(), state)?)?;
            if !store.remove_template(id)? {
                return Err(UsageError(format!("no template #{id}")).into());
            }
            writeln!(out, "template #{id} removed")?;
        }
        TemplatesCommand::Export {
            file,
            config,
            state,
        } => {
            let store = open_existing(&state_path(config.as_deref(), state)?)?;
            let all = store.templates()?;
            let text = serde_json::to_string_pretty(&all)?;
            std::fs::write(&file, text + "\n")
                .with_context(|| format!("failed to write {}", file.display()))?;
            writeln!(
                out,
                "{} template(s) written to {}",
                all.len(),
                file.display()
            )?;
        }
        TemplatesCommand::Import {
            file,
            config,
            state,
        } => {
            let store = open_existing(&state_path(config.as_deref(), state)?)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("failed to read {}", file.display()))?;
            let incoming: Vec<postmaster_bot::pipeline::learned::Learned> =
                serde_json::from_str(&text).map_err(|e| {
                    UsageError(format!(
                        "{}: line {}, column {}: {e}",
                        file.display(),
                        e.line(),
                        e.column()
                    ))
                })?;
            let known = store.templates()?;
            let mut added = 0;
            for t in incoming {
                if !t.kind.is_microsoft_support() {
                    return Err(UsageError(format!(
                        "{}: a template of kind {} cannot be imported",
                        file.display(),
                        t.kind
                    ))
                    .into());
                }
                if known
                    .iter()
                    .any(|k| k.kind == t.kind && k.shingles == t.shingles)
                {
                    continue;
                }
                store.add_template(&t)?;
                added += 1;
            }
            writeln!(out, "{added} template(s) imported from {}", file.display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn state_path(config: Option<&Path>, state: Option<PathBuf>) -> Result<StateConfig> {
    if let Some(s) = state {
        return state_argument(&s);
    }
    let config = load_config(config)?;
    Ok(config.state)
}

/// `--state`: a store file, or a `postgres://` URL (its password from `PGPASSWORD`).
fn state_argument(state: &Path) -> Result<StateConfig> {
    Ok(StateConfig::from_argument(&state.to_string_lossy())?)
}

/// `instances`: who works which mailbox on a shared store.
fn instances(
    config: Option<&Path>,
    state: Option<PathBuf>,
    format: Format,
    out: &mut dyn Write,
) -> Result<ExitCode> {
    let store = open_existing(&state_path(config, state)?)?;
    let instances = store.instances(7)?;
    let leases = store.leases()?;
    if matches!(format, Format::Json) {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "instances": instances, "leases": leases })
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if instances.is_empty() {
        writeln!(
            out,
            "no instance has run on this store with leases (SQLite: one process, no leases)"
        )?;
    }
    for i in &instances {
        let status = match i.stopped_at {
            Some(at) => format!("stopped {}", render::rfc2822(at)),
            None => format!("alive, seen {} s ago", i.seen_ago),
        };
        let held: Vec<&str> = leases
            .iter()
            .filter(|l| l.holder.as_deref() == Some(i.id.as_str()) && l.expires_in > 0)
            .map(|l| l.mailbox.as_str())
            .collect();
        writeln!(
            out,
            "{:<40} pid {:<8} {:<28} holds {}",
            i.id,
            i.pid,
            status,
            if held.is_empty() {
                "-".to_string()
            } else {
                held.join(", ")
            }
        )?;
    }
    for l in &leases {
        let state = match &l.holder {
            Some(holder) if l.expires_in > 0 => {
                format!(
                    "held by {holder}, {} s left, token {}",
                    l.expires_in, l.token
                )
            }
            Some(holder) => format!("expired ({holder}), token {}", l.token),
            None => format!("free, token {}", l.token),
        };
        writeln!(out, "mailbox {:<24} {state}", l.mailbox)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn state_copy(from: &str, to: &str, out: &mut dyn Write) -> Result<ExitCode> {
    let from = StateConfig::from_argument(from)?;
    let to = StateConfig::from_argument(to)?;
    let mut source = open_existing(&from)?;
    let mut target = open_state(&to)?;
    if source.location() == target.location() {
        return Err(UsageError("--from and --to name the same store".to_string()).into());
    }
    let report = postmaster_bot::shell::store::copy_store(&mut source, &mut target)?;
    let total: u64 = report.tables.iter().map(|(_, n)| n).sum();
    for (table, n) in &report.tables {
        writeln!(out, "{table:<14} {n:>9}")?;
    }
    writeln!(
        out,
        "{total} row(s) copied from {} to {}",
        source.location(),
        target.location()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn open_existing(state: &StateConfig) -> Result<Store> {
    if let StateConfig::Sqlite(path) = state {
        if !path.exists() {
            return Err(UsageError(format!(
                "state store {} does not exist (give --state or --config)",
                path.display()
            ))
            .into());
        }
    }
    Ok(open_state(state)?)
}

fn cases(command: CasesCommand, out: &mut dyn Write) -> Result<ExitCode> {
    match command {
        CasesCommand::List {
            config,
            state,
            mailbox,
            provider,
            format,
        } => {
            let store = open_existing(&state_path(config.as_deref(), state)?)?;
            let mut cases = store.cases_of(mailbox.as_deref())?;
            if let Some(p) = &provider {
                cases.retain(|(_, c)| c.provider.as_deref() == Some(p.as_str()));
            }
            match format {
                Format::Json => {
                    for (mailbox, c) in cases {
                        let mut line = serde_json::to_value(&c)?;
                        if let Some(fields) = line.as_object_mut() {
                            fields.insert("mailbox".to_string(), mailbox.into());
                        }
                        writeln!(out, "{line}")?;
                    }
                }
                Format::Text => {
                    if cases.is_empty() {
                        writeln!(out, "no cases")?;
                    }
                    for (mailbox, c) in cases {
                        let shown = if mailbox == postmaster_bot::shell::store::DEFAULT_MAILBOX {
                            String::new()
                        } else {
                            format!(" [{mailbox}]")
                        };
                        writeln!(
                            out,
                            "#{:<4} {:<16} {:<10} {:<15} {:<16} {:<30} updated {}{shown}",
                            c.id,
                            serde_json::to_value(c.topic)?.as_str().unwrap_or_default(),
                            c.provider.as_deref().unwrap_or("-"),
                            c.state,
                            c.ticket_id.as_deref().unwrap_or("-"),
                            if c.ips.is_empty() {
                                "-".to_string()
                            } else {
                                c.ips.join(",")
                            },
                            render::rfc2822(c.updated_at)
                        )?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CasesCommand::Show {
            id,
            config,
            state,
            format,
        } => {
            let store = open_existing(&state_path(config.as_deref(), state)?)?;
            let Some(case) = store.case(id)? else {
                return Err(UsageError(format!("no case #{id} in {}", store.location())).into());
            };
            match format {
                Format::Json => writeln!(
                    out,
                    "{}",
                    json!({"case": case, "timeline": store.timeline(id)?, "outbox": store.outbox(Some(id))?})
                )?,
                Format::Text => {
                    replay::write_case(out, &store, id)?;
                    for row in store.outbox(Some(id))? {
                        writeln!(
                            out,
                            "  outbox #{} {} {} {} to {} [{}]{}",
                            row.id,
                            row.template,
                            row.disposition,
                            row.status,
                            row.recipients.join(", "),
                            row.subject,
                            row.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                        )?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_config(path: &Path, out: &mut dyn Write) -> Result<ExitCode> {
    let config = config::load(path)?;
    config.check_can_send()?;
    let engine = Engine::new(config.clone())?;
    let sample = sample_context(&config);
    engine.templates.check_all(&sample)?;
    writeln!(out, "config {}: ok", path.display())?;
    writeln!(out, "  mode: {}", config.mode)?;
    match &config.state {
        StateConfig::Sqlite(path) => writeln!(out, "  state: {}", path.display())?,
        StateConfig::Postgres(pg) => writeln!(
            out,
            "  state: {}",
            postmaster_bot::shell::store::pg_connect(pg)
                .map(|c| c.describe())
                .unwrap_or_else(|_| "PostgreSQL (the URL does not parse)".to_string())
        )?,
    }
    writeln!(
        out,
        "  rules: {} ticket, {} phrase, {} heading, {} bounce rules{}",
        engine.rules.tickets.len(),
        engine.rules.phrases.len(),
        engine.rules.headings.len(),
        engine.rules.bounces.len(),
        config
            .rules_file
            .as_ref()
            .map(|p| format!(" (with {})", p.display()))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "  templates: rendered escalation_reply, followup, operator_notification{}",
        config
            .templates_dir
            .as_ref()
            .map(|p| format!(" (from {} where present)", p.display()))
            .unwrap_or_default()
    )?;
    if config.classify.authserv_ids.is_empty() {
        writeln!(
            out,
            "  warning: [trust] authserv_ids is empty: no message will count as Microsoft's"
        )?;
    }
    for w in warn_readable_secrets(&config) {
        writeln!(out, "  warning: {w}")?;
    }
    if let Some(advice) = config.mailbox.as_ref().and_then(|m| m.sent_mail_advice()) {
        writeln!(out, "  warning: {advice}")?;
    }
    if let Some(o) = &config.oauth2 {
        let token = match &o.refresh_token {
            Some(config::RefreshTokenStore::File(p)) if p.exists() => {
                format!("refresh token in {}", p.display())
            }
            Some(config::RefreshTokenStore::File(p)) => format!(
                "no refresh token yet in {}: run `postmaster-bot auth login --config {}`",
                p.display(),
                path.display()
            ),
            Some(config::RefreshTokenStore::Env(name)) => format!("refresh token from ${name}"),
            None => "app-only, no refresh token".to_string(),
        };
        writeln!(
            out,
            "  oauth2: {:?}, {:?} flow, {} scope(s); {token}",
            o.provider,
            o.flow,
            o.scopes.len()
        )?;
    }
    if config.identity.operator.as_deref() == Some(config.identity.address.as_str()) {
        writeln!(
            out,
            "  note: [identity] operator is not set: notifications go to {}",
            config.identity.address
        )?;
    }
    if config.classify.reporting_mtas.is_empty() {
        writeln!(
            out,
            "  note: [trust] reporting_mtas is not set: escalation replies quote no bounce"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A context with every field filled, so that `check-config` catches a template that uses a
/// variable the bot never provides.
fn sample_context(config: &Config) -> render::Context {
    let case = Case {
        id: 1,
        topic: Topic::OutlookBlock,
        state: State::Escalated,
        ticket_id: Some("SRX1234567890ID".into()),
        ips: vec!["192.0.2.10".into()],
        notice_key: None,
        opened_at: 1_700_000_000,
        updated_at: 1_700_000_000,
        closed_at: None,
        escalations: 1,
        followups: 0,
        last_escalated_at: Some(1_700_000_000),
        last_followup_at: None,
        last_microsoft_at: Some(1_700_000_000),
        last_notified_at: None,
        last_bounce: Some(
            "550 5.7.1 Unfortunately, messages from [192.0.2.10] weren't sent. ... (S3140)".into(),
        ),
        bounce_quote: Some(
            "550 5.7.1 Unfortunately, messages from [192.0.2.10] weren't sent. ... part of their network is on our block list (S3140)".into(),
        ),
        ips_omitted: 0,
        last_microsoft: Some(Parent::default()),
        thread_ids: vec![],
        provider: Some("outlook".into()),
        block_code: Some("S3140".into()),
    };
    let transition = Transition {
        case: Some(case),
        action: postmaster_bot::pipeline::case::Action::DraftEscalationReply,
        reason: "sample".into(),
        ips: vec!["192.0.2.10".into()],
    };
    let verdict = Verdict {
        kind: Kind::MsNotQualified,
        ticket_id: Some("SRX1234567890ID".into()),
        ips: vec!["192.0.2.10".into()],
        outcomes: vec![],
        trusted: true,
        origin: Origin::Microsoft,
        bounce: None,
        loop_risk: None,
        claimed_kind: None,
        own_claim: None,
        ips_omitted: 0,
        confidence: 1.0,
        runner_up: None,
        uncertain: None,
        evidence: vec![],
    };
    render::context(
        &transition,
        Some(&verdict),
        Some(MessageView {
            subject: "RE: SRX1234567890ID".into(),
            from: "Outlook.com Deliverability Support <support@microsoft.com>".into(),
            date: render::rfc2822(1_700_000_000),
            message_id: Some("sample@example.com".into()),
        }),
        IdentityView::of(&config.identity),
        Mode::Draft,
        1_700_000_000,
    )
    // A playbook with every field, so a template's use of any of them is checked.
    .with_playbook(
        postmaster_bot::pipeline::rules::Rules::builtin()
            .ok()
            .and_then(|r| r.provider("t-online").cloned())
            .as_ref(),
    )
}
