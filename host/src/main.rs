//! The `portcullis` command: `serve`, `validate`, `rotate-key`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use portcullis::app::{self, Options};
use portcullis::{config, telemetry, vault};

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
    about = "Connector gateway for AI agents on a tailnet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (with the embedded default config when none is given).
    Serve {
        /// Config file (HuJSON). Reloaded on SIGHUP and when it changes.
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on, overriding the config's `listen`.
        #[arg(long, env = "PORTCULLIS_LISTEN", value_name = "ADDR:PORT")]
        listen: Option<SocketAddr>,
        /// Where the vault and its key file live.
        #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Provider registry folder.
        #[arg(long, env = "PORTCULLIS_REGISTRY")]
        registry: Option<PathBuf>,
    },
    /// Check a config file and print every problem; exits 1 on errors.
    Validate {
        file: PathBuf,
        /// Treat warnings as errors too (as saving through the admin API does).
        #[arg(long)]
        strict: bool,
    },
    /// Re-seal every vault record under a new master key. Stop `serve` first.
    RotateKey {
        /// Config file, for `vault.key_file`.
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file, strict } => validate(&file, strict),
        Command::RotateKey { config, data_dir } => {
            telemetry::init_logging();
            rotate_key(config, &data_dir)
        }
        Command::Serve {
            config,
            listen,
            data_dir,
            registry,
        } => {
            telemetry::init_logging();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("portcullis: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(app::serve(Options {
                config,
                listen,
                data_dir,
                registry,
            })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn validate(file: &PathBuf, strict: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portcullis: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let (_, diags) = app::check(&text);
    for d in diags.iter() {
        println!("{}: {d}", file.display());
    }
    let errors = diags.errors().count();
    let warnings = diags.warnings().count();
    let failed = errors > 0 || (strict && warnings > 0);
    println!(
        "{}: {errors} error(s), {warnings} warning(s){}",
        file.display(),
        if failed { "" } else { " — ok" }
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn rotate_key(config_path: Option<PathBuf>, data_dir: &std::path::Path) -> ExitCode {
    let key_file = match app::read_config(config_path.as_deref()).map(|t| config::load(&t)) {
        Ok((Some(c), _)) => c
            .vault
            .key_file
            .unwrap_or_else(|| data_dir.join(vault::KEY_FILE)),
        Ok((None, diags)) => {
            eprint!("portcullis: the config has errors:\n{diags}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::FAILURE;
        }
    };
    match vault::rotate(data_dir, &key_file) {
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
