//! The `portcullis` command: `serve`, `validate`, `rotate-key`, `migrate-store`, `secret`,
//! `connector`, `completions`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use portcullis::app::{self, Options};
use portcullis::{commands, config, telemetry, vault};

/// mimalloc: the proxy path allocates many small, short-lived buffers across threads,
/// where glibc malloc showed up prominently in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Default data directory (vault and key file), relative to the working directory.
const DEFAULT_DATA_DIR: &str = "portcullis-data";

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Connector gateway for AI agents on a tailnet",
    after_help = "Environment:\n  PORTCULLIS_MASTER_KEY   The vault's master key (base64 or 64 hex digits); wins over the key file\n  PORTCULLIS_DATABASE_URL The PostgreSQL vault several replicas share (see --database-url)\n  RUST_LOG                Log filter (default: info,rmcp=off)\n  PORTCULLIS_LOG_FORMAT   \"json\" for one JSON object per log line\n  NO_COLOR                No colour in logs, even at a terminal\n\nDocs: docs/configuration.md (config, commands), docs/admin-api.md (HTTP API and dashboard)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the saved config in the data directory, else the embedded
    /// default, when no --config is given).
    Serve {
        /// Config file (HuJSON). Reloaded on SIGHUP and when it changes.
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on, overriding the config's `listen`.
        #[arg(long, env = "PORTCULLIS_LISTEN", value_name = "ADDR:PORT")]
        listen: Option<SocketAddr>,
        /// Where the vault, its key file and the saved config live.
        #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Provider registry folder.
        #[arg(long, env = "PORTCULLIS_REGISTRY")]
        registry: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
        /// Append the audit trail (who used which connector or tool under which grant,
        /// every admin change) to this file, one JSON object per line; default: the log.
        #[arg(long, env = "PORTCULLIS_AUDIT_LOG", value_name = "FILE")]
        audit_log: Option<PathBuf>,
    },
    /// Check a config file and print every problem; exits 1 on errors. Checks secret
    /// references against the environment and the vault, and providers against the
    /// registry, as `serve` does.
    Validate {
        /// The config file to check (HuJSON: JSON with comments and trailing commas).
        file: PathBuf,
        /// Treat warnings as errors too (as saving through the admin API does).
        #[arg(long)]
        strict: bool,
        /// Where the vault is, to check {"vault": NAME} references.
        #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Provider registry folder, to check connectors' providers.
        #[arg(long, env = "PORTCULLIS_REGISTRY")]
        registry: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-seal every vault record under a new master key. Stop `serve` first.
    RotateKey {
        /// Config file, for `vault.key_file`.
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Where the vault and its key file are.
        #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Copy the embedded vault (redb, in the data directory) into an empty PostgreSQL
    /// database, with the same master key, and check every copied record opens there.
    /// Stop `serve` first; then start each replica with --database-url.
    MigrateStore {
        /// Config file, for `vault.key_file`.
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Where the redb vault and its key file are.
        #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The PostgreSQL database to copy into.
        #[arg(long = "database-url", env = "PORTCULLIS_DATABASE_URL", hide_env_values = true, value_name = "URL", value_parser = DatabaseUrlParser)]
        to: vault::DatabaseUrl,
    },
    /// Named vault secrets, referred to in the config as {"vault": "NAME"}. Stop `serve`
    /// first, or use the admin API (/api/secrets) while it runs.
    Secret {
        #[command(subcommand)]
        action: SecretAction,
        #[command(flatten)]
        place: PlaceArgs,
    },
    /// Print a shell completion script, e.g. `portcullis completions bash >
    /// /etc/bash_completion.d/portcullis`.
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Connectors in the saved config.
    Connector {
        #[command(subcommand)]
        action: ConnectorAction,
        #[command(flatten)]
        place: PlaceArgs,
    },
}

#[derive(Subcommand)]
enum SecretAction {
    /// Store a secret; its value is read from standard input.
    Set {
        /// The secret's name, as the config refers to it: {"vault": "NAME"}.
        name: String,
    },
    /// List secrets: names, when they were set and what uses them (never values).
    List,
    /// Remove a secret the config no longer refers to.
    Rm {
        /// The secret's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ConnectorAction {
    /// Add a connector pre-filled from a registry provider's defaults (URLs, scopes,
    /// auth_params), validated and saved like an admin API save.
    Add {
        /// Registry provider id (`portcullis serve` lists them at /api/registry).
        #[arg(long)]
        provider: String,
        /// Connector ID (default: the provider's name, e.g. Slack); it is part of the
        /// OAuth redirect URI.
        #[arg(long)]
        id: Option<String>,
        /// `http` (the provider's API) or `mcp` (its MCP server).
        #[arg(long, value_parser = ["http", "mcp"])]
        protocol: Option<String>,
        /// The OAuth application's client ID.
        #[arg(long)]
        client_id: Option<String>,
        /// Read the client secret (or a token, for a provider without OAuth) from
        /// standard input; it goes into the vault.
        #[arg(long, conflicts_with = "token_stdin")]
        client_secret_stdin: bool,
        /// Read a token from standard input and send it the provider's own way instead
        /// of signing users in with OAuth (a Discord bot token, a Figma personal access
        /// token); it goes into the vault.
        #[arg(long, conflicts_with = "client_id")]
        token_stdin: bool,
        /// A provider input as NAME=VALUE, e.g. `--provider-var tenant=contoso.onmicrosoft.com`
        /// for Microsoft (`GET /api/registry` lists each provider's `inputs`); repeatable.
        #[arg(long = "provider-var", value_name = "NAME=VALUE", value_parser = provider_var)]
        provider_vars: Vec<(String, String)>,
        /// An OAuth scope, replacing the provider's default scopes; repeatable.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// The connector's description (default: the provider's).
        #[arg(long)]
        description: Option<String>,
    },
}

#[derive(clap::Args)]
struct PlaceArgs {
    /// Config file; default: the saved config in the data directory.
    #[arg(long, env = "PORTCULLIS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Where the vault, its key file and the saved config live.
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = DEFAULT_DATA_DIR, global = true)]
    data_dir: PathBuf,
    /// Provider registry folder, to check connectors' providers.
    #[arg(long, env = "PORTCULLIS_REGISTRY", global = true)]
    registry: Option<PathBuf>,
    /// The PostgreSQL vault several replicas share; default: the redb file in the data
    /// directory.
    #[arg(long, env = "PORTCULLIS_DATABASE_URL", hide_env_values = true, value_name = "URL", value_parser = DatabaseUrlParser, global = true)]
    database_url: Option<vault::DatabaseUrl>,
}

/// Where the vault is when it is not the data directory's redb file.
#[derive(clap::Args)]
struct StoreArgs {
    /// The PostgreSQL vault several replicas share
    /// (postgres://USER:PASSWORD@HOST:PORT/DATABASE); default: the redb file in the data
    /// directory. Never shown in full: its password is masked in every message.
    #[arg(long, env = "PORTCULLIS_DATABASE_URL", hide_env_values = true, value_name = "URL", value_parser = DatabaseUrlParser)]
    database_url: Option<vault::DatabaseUrl>,
}

/// Parses `--database-url` with an error of its own: clap's would quote the value, and
/// with it the database password.
#[derive(Clone)]
struct DatabaseUrlParser;

impl clap::builder::TypedValueParser for DatabaseUrlParser {
    type Value = vault::DatabaseUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        use clap::error::ErrorKind;
        let refuse = |kind, why: String| {
            clap::Error::raw(kind, format!("--database-url: {why}\n")).with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| {
            refuse(
                ErrorKind::InvalidUtf8,
                "the URL is not valid UTF-8".to_owned(),
            )
        })?;
        vault::DatabaseUrl::parse(text)
            .map_err(|e| refuse(ErrorKind::ValueValidation, e.to_string()))
    }
}

impl From<PlaceArgs> for commands::Place {
    fn from(p: PlaceArgs) -> Self {
        Self {
            config: p.config,
            data_dir: p.data_dir,
            registry: p.registry,
            database_url: p.database_url,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "portcullis",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Validate {
            file,
            strict,
            data_dir,
            registry,
            store,
        } => {
            let place = commands::Place {
                config: None,
                data_dir,
                registry,
                database_url: store.database_url,
            };
            run(async move { commands::validate(&file, strict, &place).await })
        }
        Command::RotateKey {
            config,
            data_dir,
            store,
        } => {
            if let Err(e) = telemetry::init_logging() {
                return report(Err(e));
            }
            rotate_key(config, &data_dir, store.database_url)
        }
        Command::MigrateStore {
            config,
            data_dir,
            to,
        } => report(migrate_store(config, &data_dir, to).map(|()| true)),
        Command::Secret { action, place } => {
            let place = commands::Place::from(place);
            let done = match action {
                SecretAction::Set { name } => commands::secret_set(&name, &place),
                SecretAction::List => commands::secret_list(&place),
                SecretAction::Rm { name } => commands::secret_rm(&name, &place),
            };
            report(done.map(|()| true))
        }
        Command::Connector { action, place } => {
            let place = commands::Place::from(place);
            let ConnectorAction::Add {
                provider,
                id,
                protocol,
                client_id,
                client_secret_stdin,
                token_stdin,
                provider_vars,
                scopes,
                description,
            } = action;
            let req = commands::AddConnector {
                provider,
                id,
                protocol: protocol.map(|p| {
                    if p == "mcp" {
                        config::Protocol::Mcp
                    } else {
                        config::Protocol::Http
                    }
                }),
                client_id,
                stdin: if token_stdin {
                    Some(commands::StdinSecret::Token)
                } else {
                    client_secret_stdin.then_some(commands::StdinSecret::ClientSecret)
                },
                provider_vars,
                scopes: (!scopes.is_empty()).then_some(scopes),
                description,
            };
            run(async move { commands::connector_add(req, &place).await.map(|()| true) })
        }
        Command::Serve {
            config,
            listen,
            data_dir,
            registry,
            store,
            audit_log,
        } => {
            if let Err(e) = telemetry::init_logging() {
                return report(Err(e));
            }
            let opts = Options {
                config,
                listen,
                data_dir,
                registry,
                database_url: store.database_url,
                audit_log,
            };
            run(async move { app::serve(opts).await.map(|()| true) })
        }
    }
}

/// `NAME=VALUE` of `--provider-var`.
fn provider_var(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!(
            "expected NAME=VALUE, e.g. tenant=contoso.onmicrosoft.com, not {arg:?}"
        )),
    }
}

/// Runs `work` on a multi-threaded runtime and turns its outcome into an exit code.
fn run(work: impl std::future::Future<Output = anyhow::Result<bool>>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let outcome = rt.block_on(work);
            // Tasks still running log as they end; the log is flushed after them.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            report(outcome)
        }
        Err(e) => {
            eprintln!("portcullis: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(outcome: anyhow::Result<bool>) -> ExitCode {
    // Log lines are written by a thread of their own: out before the last words.
    telemetry::flush_log(std::time::Duration::from_secs(2));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The vault's key file: the config's `vault.key_file`, else the data directory's.
fn key_file(
    config_path: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> anyhow::Result<PathBuf> {
    let current = portcullis::configure::ConfigFile::new(config_path, data_dir).read()?;
    Ok(config::peek::<config::Peeked>(&current.text)
        .vault
        .key_file
        .unwrap_or_else(|| data_dir.join(vault::KEY_FILE)))
}

fn migrate_store(
    config_path: Option<PathBuf>,
    data_dir: &std::path::Path,
    to: vault::DatabaseUrl,
) -> anyhow::Result<()> {
    let key_file = key_file(config_path.as_deref(), data_dir)?;
    let from = vault::Location::Redb {
        data_dir: data_dir.to_owned(),
    };
    if !from.exists() {
        anyhow::bail!(
            "there is no vault in {} to copy; give the data directory `serve` used with --data-dir",
            data_dir.display()
        );
    }
    vault::recover_interrupted_rotation(&from, &key_file)?;
    let (key, _) = vault::MasterKey::load(&key_file)?;
    // The saved config goes along (replicas read it from the database); a --config file
    // stays where it is.
    let saved = portcullis::configure::ConfigFile::new(None, data_dir).read()?;
    let config = (config_path.is_none() && saved.on_disk).then_some(saved.text);
    let copied = vault::copy_store(
        &from,
        &vault::Location::Postgres(to),
        &key,
        config.as_deref(),
    )?;
    eprintln!(
        "Copied {} record(s){} from {} to {}; each opens there with the same master key. \
         Start every replica with that database URL and this master key ({} or the key file).",
        copied.records,
        if config.is_some() {
            " and the saved config"
        } else {
            ""
        },
        copied.from,
        copied.to,
        vault::MASTER_KEY_ENV
    );
    Ok(())
}

fn rotate_key(
    config_path: Option<PathBuf>,
    data_dir: &std::path::Path,
    database_url: Option<vault::DatabaseUrl>,
) -> ExitCode {
    let key_file = match key_file(config_path.as_deref(), data_dir) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let location = vault::Location::new(data_dir, database_url);
    let rotated = vault::rotate(&location, data_dir, &key_file);
    // What the rotation logged comes before its last words.
    telemetry::flush_log(std::time::Duration::from_secs(2));
    match rotated {
        Ok(r) => {
            match r.new_env_key {
                Some(k) => {
                    let file = r
                        .pending_key_file
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    eprintln!(
                        "Re-sealed {} record(s). The old key came from {}: set it to the new key below \
                         (also saved, mode 0600, in {file}) before the next start, or the vault will not \
                         open; then delete that file.",
                        r.records,
                        vault::MASTER_KEY_ENV
                    );
                    println!("{}", k.as_str());
                }
                None => eprintln!(
                    "Re-sealed {} record(s) under a new key in {}.",
                    r.records,
                    key_file.display()
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis: key rotation failed, nothing changed: {e}");
            ExitCode::FAILURE
        }
    }
}
