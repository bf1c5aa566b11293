//! The command-line tools besides `serve`: `validate`, `secret set|list|rm` and
//! `connector add`. They run the same validator and the same save path as the running
//! host (see [`crate::configure`]), against the config file, the vault and the registry
//! on this machine.
//!
//! The vault is one process's at a time: while `serve` runs, commands that change it
//! say so and point at the admin API, which does the same thing through the host.

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use zeroize::Zeroizing;

use crate::config::{self, FromTemplate, Protocol, edit};
use crate::configure::{self, ConfigFile, Edit, HostSurroundings, SaveError, VaultView};
use crate::plugins::Plugins;
use crate::vault::{self, Vault, VaultError};

/// Where a command finds the config, the data directory and the registry.
#[derive(Debug, Clone)]
pub struct Place {
    /// `--config`; `None`: the saved config in the data directory.
    pub config: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub registry: Option<PathBuf>,
    /// The PostgreSQL vault (`--database-url`); `None`: redb in the data directory.
    pub database_url: Option<vault::DatabaseUrl>,
}

impl Place {
    /// Where the config is: the file, or with `--database-url` and no `--config`, the
    /// shared vault the replicas read it from (whose key is then the environment's or
    /// the data directory's).
    fn file(&self) -> anyhow::Result<ConfigFile> {
        if self.config.is_none() && self.database_url.is_some() {
            let vault = vault::open(&self.location(), &self.data_dir.join(vault::KEY_FILE))?;
            return Ok(ConfigFile::in_store(Arc::new(vault)));
        }
        Ok(ConfigFile::new(self.config.as_deref(), &self.data_dir))
    }

    fn location(&self) -> vault::Location {
        vault::Location::new(&self.data_dir, self.database_url.clone())
    }

    fn key_file(&self, text: &str) -> PathBuf {
        config::peek::<config::Peeked>(text)
            .vault
            .key_file
            .unwrap_or_else(|| self.data_dir.join(vault::KEY_FILE))
    }

    /// The registry, loaded, when `text` names a provider (loading compiles every
    /// component, so a config without providers skips it).
    async fn plugins(&self, text: &str, always: bool) -> anyhow::Result<Option<Arc<Plugins>>> {
        if !always && !names_a_provider(text) {
            return Ok(None);
        }
        let peeked: config::Peeked = config::peek(text);
        let dir = crate::plugins::registry_dir(self.registry.clone(), peeked.registry.dir)?;
        // Reuse the host's compiled components when its data directory is here.
        let cache = self
            .data_dir
            .is_dir()
            .then(|| self.data_dir.join("plugin-cache"));
        Ok(Some(Plugins::open(dir, cache, None).await?))
    }

    /// The vault, for commands that change it.
    fn vault(&self, text: &str) -> anyhow::Result<Vault> {
        vault::open(&self.location(), &self.key_file(text)).map_err(|e| match e {
            VaultError::Locked { .. } => anyhow::anyhow!(
                "{e}; while it runs, use the admin API instead (PUT /api/secrets/NAME, POST /api/config/connectors)"
            ),
            other => other.into(),
        })
    }

    /// The vault as the validator may see it, without creating anything. A data
    /// directory with no vault is more likely the wrong one than an empty vault, so its
    /// references are reported unchecked rather than missing.
    fn vault_view(&self, text: &str) -> Result<Vault, String> {
        let location = self.location();
        if !location.exists() {
            return Err(format!(
                "there is no vault in {}; give the data directory `serve` uses with --data-dir",
                self.data_dir.display()
            ));
        }
        let key_file = self.key_file(text);
        if std::env::var_os(vault::MASTER_KEY_ENV).is_none() && !key_file.exists() {
            return Err(format!(
                "the vault's key ({} or {}) is not available to this command",
                vault::MASTER_KEY_ENV,
                key_file.display()
            ));
        }
        match vault::open(&location, &key_file) {
            Ok(v) => Ok(v),
            Err(VaultError::Locked { .. }) => Err(
                "the vault is in use by a running `portcullis serve`; POST /api/config:validate checks vault references against it".to_owned(),
            ),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn names_a_provider(text: &str) -> bool {
    config::parse_hujson(text)
        .ok()
        .and_then(|v| {
            let servers = v.get("connectors")?.get("servers")?.as_object()?.clone();
            Some(servers.values().any(|s| {
                s.get("provider")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|p| !p.eq_ignore_ascii_case("custom"))
            }))
        })
        .unwrap_or(false)
}

/// `portcullis validate FILE`: prints every problem; `Ok(false)` when it fails.
pub async fn validate(file: &Path, strict: bool, place: &Place) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let plugins = place.plugins(&text, false).await?;
    let vault = place.vault_view(&text);
    let env = HostSurroundings {
        vault: match &vault {
            Ok(v) => VaultView::Open(v),
            Err(why) => VaultView::Unavailable(why.clone()),
        },
        plugins: plugins.as_deref(),
    };
    let (_, diags) = configure::check(&text, &env);
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
    Ok(!failed)
}

/// `portcullis secret set NAME`: the value comes from standard input, never from the
/// command line (where `ps` and shell history would see it).
pub fn secret_set(name: &str, place: &Place) -> anyhow::Result<()> {
    if !edit::valid_secret_name(name) {
        bail!(
            "\"{name}\" is not a valid secret name: 1 to 128 letters, digits, '_', '-' or '.', starting with a letter or digit"
        );
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!(
            "Paste the value of {name} and press Enter, then Ctrl-D (it is not echoed back by Portcullis, but your terminal shows what you type):"
        );
    }
    let mut raw = Zeroizing::new(String::new());
    stdin
        .lock()
        .read_to_string(&mut raw)
        .context("cannot read the secret from standard input")?;
    let value = raw.strip_suffix('\n').unwrap_or(&raw);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        bail!(
            "the secret is empty: pipe its value in, e.g. `printf %s \"$TOKEN\" | portcullis secret set {name}`"
        );
    }
    let text = place.file()?.read()?.text;
    let vault = place.vault(&text)?;
    vault.set_secret(name, value.as_bytes())?;
    eprintln!(
        "Stored {name} in the vault ({}). Refer to it as {{\"vault\": \"{name}\"}}.",
        vault.describe()
    );
    Ok(())
}

/// `portcullis secret list`: names and when they were set, never values.
pub fn secret_list(place: &Place) -> anyhow::Result<()> {
    let current = place.file()?.read()?;
    let vault = place.vault(&current.text)?;
    let used = references(&current.text);
    for (name, at) in vault.secret_names()? {
        let when = at.map_or_else(|| "unknown".to_owned(), |t| format!("{t}"));
        let by: Vec<&str> = used
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, p)| p.as_str())
            .collect();
        println!(
            "{name}\tset_at={when}\tused_by={}",
            if by.is_empty() {
                "-".to_owned()
            } else {
                by.join(",")
            }
        );
    }
    Ok(())
}

/// `portcullis secret rm NAME`: refused while the config refers to it.
pub fn secret_rm(name: &str, place: &Place) -> anyhow::Result<()> {
    let current = place.file()?.read()?;
    let used: Vec<String> = references(&current.text)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, p)| p)
        .collect();
    if !used.is_empty() {
        bail!(
            "secret {name} is in use by {}; change those fields first",
            used.join(", ")
        );
    }
    let vault = place.vault(&current.text)?;
    if !vault.remove_secret(name)? {
        bail!("the vault has no secret named {name} (`portcullis secret list` shows them)");
    }
    eprintln!("Removed {name} from the vault.");
    Ok(())
}

/// The vault secrets a config text refers to, with where.
fn references(text: &str) -> Vec<(String, String)> {
    config::parse_hujson(text)
        .map(|v| edit::vault_references(&v))
        .unwrap_or_default()
}

/// What `connector add` was given.
pub struct AddConnector {
    pub provider: String,
    pub id: Option<String>,
    pub protocol: Option<Protocol>,
    pub client_id: Option<String>,
    /// What standard input holds, if anything.
    pub stdin: Option<StdinSecret>,
    /// `--provider-var NAME=VALUE`, in order given.
    pub provider_vars: Vec<(String, String)>,
    /// Replaces the provider's default scopes.
    pub scopes: Option<Vec<String>>,
    pub description: Option<String>,
}

/// The secret `connector add` reads from standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinSecret {
    /// The OAuth application's client secret; for a provider without OAuth, its token.
    ClientSecret,
    /// A token sent the provider's own way instead of OAuth (a Discord bot token).
    Token,
}

/// `message`, which names the admin API's fields, with the options that set them here.
fn in_cli_terms(message: &str) -> String {
    [
        ("`secret`", "--token-stdin"),
        ("`client_id`", "--client-id"),
        ("`client_secret`", "--client-secret-stdin"),
        ("`scopes`", "--scope"),
        ("provider_vars.", "--provider-var "),
    ]
    .iter()
    .fold(message.to_owned(), |m, (field, option)| {
        m.replace(field, option)
    })
}

/// `portcullis connector add --provider P`: the provider's template, with the client ID
/// and secret given, saved into the config through the same validator and save path as
/// the admin API.
pub async fn connector_add(req: AddConnector, place: &Place) -> anyhow::Result<()> {
    let file = place.file()?;
    // Replicas saving through the admin API meanwhile wait, and are told of this save.
    let _held = file.lock().await?;
    let current = file.read()?;
    let Some(plugins) = place.plugins(&current.text, true).await? else {
        bail!("no provider registry");
    };
    let template = configure::template(&plugins, &req.provider).map_err(anyhow::Error::msg)?;
    let secret = if req.stdin.is_some() {
        let mut raw = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_to_string(&mut raw)
            .context("cannot read the secret from standard input")?;
        Some(raw.trim_end_matches(['\r', '\n']).to_owned())
    } else {
        None
    };
    let mut provider_vars = std::collections::BTreeMap::new();
    for (name, value) in req.provider_vars {
        if provider_vars.insert(name.clone(), value).is_some() {
            bail!("--provider-var {name} is given twice; give each provider input once");
        }
    }
    // `--client-secret-stdin` is the token for a provider without OAuth.
    let token = req.stdin == Some(StdinSecret::Token) || template.oauth.is_none();
    let from = FromTemplate {
        provider: req.provider.clone(),
        id: req.id,
        protocol: req.protocol,
        client_id: req.client_id,
        client_secret: secret.clone().filter(|_| !token),
        secret: secret.filter(|_| token),
        scopes: req.scopes,
        provider_vars,
        description: req.description,
    };
    let (id, server) = template
        .fill(&from)
        .map_err(|e| anyhow::anyhow!("{}", in_cli_terms(&e.to_string())))?;
    let oauth = server["auth"]["type"] == "oauth2_authorization_code";
    let vault = place.vault(&current.text)?;
    let env = HostSurroundings {
        vault: VaultView::Open(&vault),
        plugins: Some(&plugins),
    };
    let change = Edit::Connector {
        id: id.clone(),
        server,
        create: true,
        if_match: None,
    };
    let prepared = match configure::prepare(&current, change, &env, None) {
        Ok(p) => p,
        Err(SaveError::Invalid(diags)) => {
            eprint!("{diags}");
            bail!(
                "connector {id} was not added: the config would have the problems above{}",
                if oauth {
                    " (give --client-id, and --client-secret-stdin unless the OAuth app uses PKCE only)"
                } else {
                    " (give the token on standard input with --token-stdin)"
                }
            );
        }
        Err(e) => return Err(e.into()),
    };
    let (_, secrets) = configure::commit(&file, &vault, &prepared)?;
    eprintln!(
        "Added connector {id} ({}) to {}{}.",
        template.name,
        file.describe(),
        if secrets.is_empty() {
            String::new()
        } else {
            format!("; its secret is in the vault as {}", secrets.join(", "))
        }
    );
    if oauth {
        eprintln!(
            "Register <host URL>/aperture/auth/{id}/callback as the OAuth application's redirect URI (the host URL is public_url, or http://<host:port> without it), then grant users access, e.g. {{\"connectors\": [\"{id}/**\"]}}."
        );
    }
    Ok(())
}
