//! The command line (clap). Other tools depend on these command and flag names.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use postmaster_bot::shell::replay::Format;

#[derive(Debug, Parser)]
#[command(
    name = "postmaster-bot",
    version,
    about = "Runs a mail operator's postmaster inbox: Microsoft delisting tickets, block-list bounces, JMRP and SNDS"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify message files: one line per file with kind, ticket id, IPs and evidence.
    Classify {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Message files (RFC 5322, .eml).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run message files through the whole pipeline, in the order given, as if they had arrived
    /// in that order; nothing is sent.
    Replay {
        #[arg(long)]
        config: Option<PathBuf>,
        /// State store (SQLite); a temporary one when absent.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Folder for every reply and notification produced, as .eml files.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Files or folders (a folder: its files in name order).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Inspect delisting cases in the state store.
    Cases {
        #[command(subcommand)]
        command: CasesCommand,
    },
    /// Watch the mailbox (IMAP IDLE or polling) and act on each new message; replies go out,
    /// become drafts or wait for approval according to the mode.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Catch up, act, deliver, and exit.
        #[arg(long)]
        once: bool,
        /// Override the config's `mode`.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
    },
    /// Work the approval queue (replies waiting in `approve` mode).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Validate a config file, its rules file and templates (each template is rendered).
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Teach a template: this message is of KIND, and so is every later message of the same
    /// template. The taught message is decided again if it came through the mailbox.
    Teach {
        #[arg(long)]
        config: PathBuf,
        /// A sender-support kind: ms_ack, ms_not_qualified, ms_conditionally_mitigated,
        /// ms_mitigated, ms_escalated, ms_info_requested, ms_resolved or ms_other.
        #[arg(long)]
        kind: String,
        /// Fetch the message from the watched mailbox folder by its Message-ID.
        #[arg(long, conflicts_with = "files")]
        message_id: Option<String>,
        /// Message files (.eml).
        #[arg(required_unless_present = "message_id")]
        files: Vec<PathBuf>,
    },
    /// The templates learned from the operator.
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
    /// OAuth2 for Microsoft 365, Outlook.com and Gmail (the `[oauth2]` section).
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Serve the operator's console (the `[web]` section) against the state store, beside a
    /// daemon that runs elsewhere (`run` serves it itself when `[web]` is set).
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// The console's users (the `[web]` section's `users_file`).
    Web {
        #[command(subcommand)]
        command: WebCommand,
    },
    /// The instances sharing a PostgreSQL store and the mailbox each holds (its lease).
    Instances {
        #[arg(long)]
        config: Option<PathBuf>,
        /// State store (a postgres:// URL); defaults to the config's.
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// The state store itself (`state copy`: move it between SQLite and PostgreSQL).
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), made from this command line's own definition.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Copy every row of one store (cases, timelines, messages, outbox, cursors, learned
    /// templates, audit) into another that is empty, in one transaction. Each side is a SQLite
    /// file or a postgres:// URL (`?schema=NAME` for a schema; the password from the URL or
    /// PGPASSWORD). Stop the daemon first: rows it writes meanwhile are not copied.
    Copy {
        #[arg(long, value_name = "PATH_OR_URL")]
        from: String,
        #[arg(long, value_name = "PATH_OR_URL")]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebCommand {
    /// Add a console user (or set a user's password): prompts for the password, or reads one
    /// line from standard input when it is not a terminal. Stored as an argon2 hash, mode 600.
    Adduser {
        name: String,
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Sign in once (device code, or a browser for the authorization-code flow) and store the
    /// refresh token in `refresh_token_file`, readable by the owner only.
    Login {
        #[arg(long)]
        config: PathBuf,
    },
    /// Get an access token and log in to the IMAP (and SMTP) server with it; prints no token.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Auto,
    Draft,
    Approve,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Replies waiting for approval, and held messages with the reason.
    List {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// One queued reply, in full.
    Show {
        id: i64,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Approve a waiting reply (or release a held one): the daemon sends it on its next pass,
    /// once.
    Approve {
        id: i64,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Release a held message (a reply held by a guard or a cap, a notification held by a rate
    /// limit): the daemon delivers it on its next pass, once.
    Release {
        id: i64,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Reject a waiting or held message: it is never sent.
    Reject {
        id: i64,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Every learned template: id, kind, source, date.
    List {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// One template with its masked text.
    Show {
        id: i64,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Forget a template.
    Remove {
        id: i64,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Write every learned template to a JSON file, to share with other installations.
    Export {
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Add the templates of an exported JSON file (the ones already known are skipped).
    Import {
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CasesCommand {
    /// All cases.
    List {
        #[arg(long)]
        config: Option<PathBuf>,
        /// State store; defaults to the config's `state.path`.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Only the cases of this mailbox (a `[[mailbox]]` name; "default" for `[mailbox]`).
        #[arg(long)]
        mailbox: Option<String>,
        /// Only the cases of this receiver or block list (`outlook`, `gmail`, `spamhaus` ...).
        #[arg(long)]
        provider: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// One case with its timeline and outbox.
    Show {
        id: i64,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}
