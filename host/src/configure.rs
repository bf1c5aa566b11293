//! Changes to the configuration, on one path: where the config lives, the one validator
//! run against the host's surroundings, reloads, and saves from the admin API and the
//! command line.
//!
//! A save reads the file and its hash, refuses a stale hash, applies the edit, puts
//! masked secrets back, validates strictly (warnings fail a save), refuses a config that
//! would take the saver's admin role away, moves inline secrets into the vault, writes the
//! new values into the file's text (comments and layout elsewhere stay), replaces the
//! file atomically keeping the previous version, and puts the new snapshot in force like
//! a reload: requests in flight finish on the snapshot they started with.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::config::{self, Config, Diagnostics, Provider, ProviderTemplate, Surroundings, edit};
use crate::credentials::TokenSlots;
use crate::identity::Caller;
use crate::plugins::Plugins;
use crate::policy::Policy;
use crate::state::{App, Options, Snapshot};
use crate::vault::{Table, Vault};

/// The saved config's file name in the data directory, used when `serve` is given no
/// `--config`: the embedded default until the first save, the saved config after.
pub const SAVED_CONFIG: &str = "portcullis.hujson";

/// Why a config could not become a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    // The cause is in the message and not a `source`, so `{:#}` does not say it twice.
    #[error("cannot read config {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the config has errors:\n{0}")]
    Invalid(Diagnostics),
    #[error("{0:#}")]
    Build(anyhow::Error),
}

/// Where the config lives: a file (`--config`, or the data directory's saved config),
/// or, for replicas sharing a PostgreSQL vault and given no `--config`, the vault
/// itself, so a save on one replica is read by all.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    place: ConfigPlace,
}

#[derive(Debug, Clone)]
enum ConfigPlace {
    File {
        path: PathBuf,
        /// Named with `--config`: it must exist. Otherwise it is the data directory's
        /// saved config, and the embedded default stands in until the first save.
        explicit: bool,
    },
    Store(Arc<Vault>),
}

/// The config's record in [`Table::Config`], and the one before the last save.
const STORED: &str = crate::vault::SAVED_CONFIG_RECORD;
const STORED_PREVIOUS: &str = "previous";

/// The config text in force on disk, and its hash (what a save must name).
#[derive(Debug, Clone)]
pub struct Current {
    pub text: String,
    pub hash: String,
    /// `false` while the embedded default stands in for a saved config.
    pub on_disk: bool,
}

/// SHA-256 of a config's text, hex: the version a save names.
pub fn hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl ConfigFile {
    pub fn new(config: Option<&Path>, data_dir: &Path) -> Self {
        let place = match config {
            Some(p) => ConfigPlace::File {
                path: p.to_owned(),
                explicit: true,
            },
            None => ConfigPlace::File {
                path: data_dir.join(SAVED_CONFIG),
                explicit: false,
            },
        };
        Self { place }
    }

    /// The config kept in `vault` (replicas on PostgreSQL).
    pub fn in_store(vault: Arc<Vault>) -> Self {
        Self {
            place: ConfigPlace::Store(vault),
        }
    }

    /// Whether `opts` keep the config in the shared vault: a PostgreSQL vault and no
    /// `--config` file.
    pub fn stored(opts: &Options) -> bool {
        opts.config.is_none() && opts.database_url.is_some()
    }

    /// Where the config of a host started with `opts` is, before its vault is open
    /// (always the file; see [`ConfigFile::of`]).
    pub fn for_options(opts: &Options) -> Self {
        Self::new(opts.config.as_deref(), &opts.data_dir)
    }

    /// Where the running host's config is.
    pub fn of(app: &App) -> Self {
        if Self::stored(&app.options) {
            Self::in_store(app.vault.clone())
        } else {
            Self::for_options(&app.options)
        }
    }

    /// The file, when the config is one (what the reloader watches).
    pub fn path(&self) -> Option<&Path> {
        match &self.place {
            ConfigPlace::File { path, .. } => Some(path),
            ConfigPlace::Store(_) => None,
        }
    }

    /// Where the config is, for messages.
    pub fn describe(&self) -> String {
        match &self.place {
            ConfigPlace::File { path, .. } => path.display().to_string(),
            ConfigPlace::Store(v) => format!("the shared vault ({})", v.describe()),
        }
    }

    pub fn read(&self) -> Result<Current, LoadError> {
        let (path, explicit) = match &self.place {
            ConfigPlace::File { path, explicit } => (path, *explicit),
            ConfigPlace::Store(vault) => {
                let saved = vault.get(Table::Config, STORED).map_err(|e| {
                    LoadError::Build(anyhow::anyhow!("cannot read the config: {e}"))
                })?;
                let (text, on_disk) = match saved {
                    Some(bytes) => (
                        String::from_utf8(bytes.to_vec()).map_err(|_| {
                            LoadError::Build(anyhow::anyhow!(
                                "the config saved in the vault is not UTF-8"
                            ))
                        })?,
                        true,
                    ),
                    None => (config::EMBEDDED_DEFAULT.to_owned(), false),
                };
                return Ok(Current {
                    hash: hash(&text),
                    text,
                    on_disk,
                });
            }
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Current {
                hash: hash(&text),
                text,
                on_disk: true,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                let text = config::EMBEDDED_DEFAULT.to_owned();
                Ok(Current {
                    hash: hash(&text),
                    text,
                    on_disk: false,
                })
            }
            Err(cause) => Err(LoadError::Read {
                path: path.clone(),
                cause,
            }),
        }
    }

    /// Holds the config against saves on other replicas until dropped (`None` for a
    /// file: the host's own lock is enough).
    pub async fn lock(&self) -> anyhow::Result<Option<crate::vault::store::Held>> {
        match &self.place {
            ConfigPlace::File { .. } => Ok(None),
            ConfigPlace::Store(vault) => Ok(vault.lock(Table::Config, STORED).await?),
        }
    }

    /// Replaces the config, keeping `previous`. A file is replaced atomically (a
    /// temporary file in the same folder, synced, then renamed over it), with the previous
    /// text as `<name>.prev` (0600) and the file's permissions (0600 for a new one). In
    /// the vault both go in one transaction, and every replica hears of it.
    pub fn replace(&self, text: &str, previous: Option<&str>) -> anyhow::Result<()> {
        let path = match &self.place {
            ConfigPlace::File { path, .. } => path,
            ConfigPlace::Store(vault) => {
                let mut records = vec![(Table::Config, STORED, text.as_bytes())];
                if let Some(previous) = previous {
                    records.push((Table::Config, STORED_PREVIOUS, previous.as_bytes()));
                }
                vault.put_many(&records)?;
                return Ok(());
            }
        };
        // Write where a symlinked config really lives, so the link stays.
        let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        let dir = target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| SAVED_CONFIG.to_owned());
        crate::vault::private_dir(&dir)
            .with_context(|| format!("cannot create the folder {}", dir.display()))?;
        let old_mode = std::fs::metadata(&target).ok().map(|m| m.permissions());
        if let Some(previous) = previous {
            write_synced(&dir.join(format!("{name}.prev")), previous, None)?;
        }
        write_synced(&target, text, old_mode)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Writes `text` to `path` through a temporary file renamed over it, synced, with
/// `mode` (default 0600).
fn write_synced(path: &Path, text: &str, mode: Option<std::fs::Permissions>) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.saving"));
    // A temporary file left by a crash keeps its mode when reopened: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| {
            format!(
                "cannot write {} (is its folder writable by Portcullis?)",
                tmp.display()
            )
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(f);
    if let Some(perm) = mode {
        std::fs::set_permissions(&tmp, perm)
            .with_context(|| format!("cannot set the permissions of {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// What the vault looks like to the validator.
pub enum VaultView<'a> {
    Open(&'a Vault),
    /// There is no vault yet: it holds nothing.
    Empty,
    /// It cannot be read here (why); vault references are reported unchecked.
    Unavailable(String),
}

/// The host's surroundings: the process environment, the vault and the registry.
pub struct HostSurroundings<'a> {
    pub vault: VaultView<'a>,
    /// `None`: no registry is configured.
    pub plugins: Option<&'a Plugins>,
}

impl Surroundings for HostSurroundings<'_> {
    fn env(&self, name: &str) -> Option<Zeroizing<String>> {
        std::env::var(name).ok().map(Zeroizing::new)
    }

    fn vault(&self, name: &str) -> Result<Option<Zeroizing<String>>, String> {
        match &self.vault {
            VaultView::Open(v) => match v.get(Table::Secrets, name) {
                Ok(Some(bytes)) => String::from_utf8(bytes.to_vec())
                    .map(|s| Some(Zeroizing::new(s)))
                    .map_err(|_| "the stored value is not UTF-8; set it again".to_owned()),
                Ok(None) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
            VaultView::Empty => Ok(None),
            VaultView::Unavailable(why) => Err(why.clone()),
        }
    }

    fn provider(&self, id: &str) -> Provider {
        let Some(plugins) = self.plugins.filter(|p| p.dir().is_some()) else {
            return Provider::NoRegistry;
        };
        if let Some(p) = plugins.get(id) {
            return Provider::Loaded(Box::new(p.template()));
        }
        let catalog = plugins.catalog();
        if let Some(problem) = catalog
            .problems
            .iter()
            .find(|p| p.entry.eq_ignore_ascii_case(id))
        {
            return Provider::Broken(problem.message.clone());
        }
        Provider::Unknown {
            known: catalog.plugins.keys().cloned().collect(),
        }
    }
}

/// The one validator plus the grants compiled against the connectors: what `validate`,
/// `serve`, reloads and saves run.
pub fn check(text: &str, env: &dyn Surroundings) -> (Option<(Config, Policy)>, Diagnostics) {
    check_as(text, env, None)
}

/// [`check`] for a save by `saver`: whoever saves is an admin under the new config
/// (from a config grant or the tailnet policy file), so it can be managed even when no
/// config grant names an admin.
fn check_as(
    text: &str,
    env: &dyn Surroundings,
    saver: Option<&Caller>,
) -> (Option<(Config, Policy)>, Diagnostics) {
    let (config, mut diags) = config::load(text, env);
    let Some(c) = config else {
        return (None, diags);
    };
    let policy = Policy::compile(&c, &mut diags);
    let managed = policy.has_admin_grant() || saver.is_some_and(|s| policy.access(s).is_admin());
    if !managed {
        diags.warn(
            "grants",
            "no grant assigns role \"admin\": unless the tailnet policy file gives someone the role, nobody can manage this instance",
        );
    }
    (Some((c, policy)), diags)
}

/// A config that passed [`check`], with its compiled policy and warnings.
pub type Validated = (Config, Policy, Diagnostics);

/// [`check`], as a `Result`: errors become [`LoadError::Invalid`].
pub fn validated(text: &str, env: &dyn Surroundings) -> Result<Validated, LoadError> {
    validated_as(text, env, None)
}

fn validated_as(
    text: &str,
    env: &dyn Surroundings,
    saver: Option<&Caller>,
) -> Result<Validated, LoadError> {
    match check_as(text, env, saver) {
        (Some((config, policy)), diagnostics) => Ok((config, policy, diagnostics)),
        (None, diagnostics) => Err(LoadError::Invalid(diagnostics)),
    }
}

/// The host's surroundings as a running [`App`] sees them.
pub fn surroundings(app: &App) -> HostSurroundings<'_> {
    HostSurroundings {
        vault: VaultView::Open(&app.vault),
        plugins: Some(&app.plugins),
    }
}

pub fn build_snapshot(
    (config, policy, diagnostics): Validated,
    vault: &Vault,
    tokens: &TokenSlots,
) -> Result<Snapshot, LoadError> {
    Snapshot::build(config, policy, diagnostics, vault, tokens).map_err(LoadError::Build)
}

/// Why a reload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The file changed on disk: nothing to do if its text is what is in force.
    FileChanged,
    /// SIGHUP or a secret changed: rebuild from the same text too (secrets resolve anew).
    Always,
}

/// `serve-headers` trusts identity headers from loopback peers only, which only
/// `tailscale serve` on the same machine should be: a host listening anywhere else would
/// refuse everyone, so such a config is refused at start-up, at a reload and at a save
/// (one an admin made through the API would lock every caller out, them included).
pub fn identity_fits_listen(
    mode: config::IdentityMode,
    listen: std::net::SocketAddr,
) -> Result<(), String> {
    if mode == config::IdentityMode::ServeHeaders && !listen.ip().is_loopback() {
        return Err(format!(
            "identity.mode \"serve-headers\" trusts Tailscale-User-* headers from loopback peers only, so it must listen on loopback (127.0.0.1 or [::1]) behind `tailscale serve`, not on {listen}; use identity.mode \"tailscale\" to listen on the tailnet directly"
        ));
    }
    Ok(())
}

/// The running host's listen address rules for a new config ([`identity_fits_listen`]).
fn fits_host(app: &App, mode: config::IdentityMode) -> Result<(), String> {
    app.bound
        .get()
        .map_or(Ok(()), |bound| identity_fits_listen(mode, *bound))
}

/// Re-reads the config and puts the new snapshot in force, or keeps the old one.
/// Returns whether a new snapshot went in.
pub async fn reload(app: &App, trigger: Trigger) -> Result<bool, LoadError> {
    let _one_at_a_time = app.config_lock.lock().await;
    let current = ConfigFile::of(app).read()?;
    if trigger == Trigger::FileChanged && app.config_hash() == current.hash {
        return Ok(false);
    }
    let env = surroundings(app);
    let result = validated(&current.text, &env)
        .and_then(|v| {
            fits_host(app, v.0.identity.mode)
                .map_err(|m| LoadError::Build(anyhow::anyhow!(m)))
                .map(|()| v)
        })
        .and_then(|v| build_snapshot(v, &app.vault, &app.tokens));
    let outcome = if result.is_ok() {
        "applied"
    } else {
        "rejected"
    };
    app.metrics
        .config_reloads
        .get_or_create(&crate::telemetry::OutcomeLabels { outcome })
        .inc();
    let snap = result?;
    log_diagnostics(&snap.diagnostics);
    app.install(snap, current.hash);
    tracing::info!("config reloaded");
    Ok(true)
}

pub fn log_diagnostics(d: &Diagnostics) {
    for w in d.warnings().chain(d.notices()) {
        tracing::warn!(path = %w.path, "config: {}", w.message);
    }
}

/// One change to the saved config.
#[derive(Debug, Clone)]
pub enum Edit {
    /// The whole config, as JSON (secrets may be [`edit::MASK`]: kept as they are).
    Whole(Value),
    /// Adds or replaces one connector; with `create`, an existing one is a conflict.
    /// `if_match`: the [`connector_version`] the change was made against (`*`: any
    /// existing one).
    Connector {
        id: String,
        server: Value,
        create: bool,
        if_match: Option<String>,
    },
    /// Removes one connector.
    RemoveConnector {
        id: String,
        if_match: Option<String>,
    },
}

/// One saved connector's version: the hash of its masked JSON, so it reveals nothing
/// about a secret.
pub fn connector_version(id: &str, server: &Value) -> String {
    let root = serde_json::json!({"connectors": {"servers": {id: server}}});
    hash(&edit::mask(&root)["connectors"]["servers"][id].to_string())
}

/// Refuses a change to a connector that changed since the caller read it.
fn check_version(root: &Value, id: &str, want: Option<&str>) -> Result<(), SaveError> {
    let Some(want) = want.map(|w| w.trim().trim_matches('"')) else {
        return Ok(());
    };
    let now = root
        .get("connectors")
        .and_then(|c| c.get("servers"))
        .and_then(|s| s.get(id))
        .map(|s| connector_version(id, s));
    if (want == "*" && now.is_some()) || now.as_deref() == Some(want) {
        return Ok(());
    }
    Err(SaveError::StaleConnector {
        id: id.to_owned(),
        current: now,
    })
}

/// Why a save was refused. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(
        "the config changed since it was read (its hash is now {current}); read it again, reapply the change and save with the new hash"
    )]
    Stale { current: String },
    #[error(
        "connector \"{id}\" changed since it was read; read it again (GET /api/config/connectors/{id}) and reapply the change"
    )]
    StaleConnector { id: String, current: Option<String> },
    #[error("the config was not saved: it has {} problem(s); fix them all and save again", .0.errors().count() + .0.warnings().count())]
    Invalid(Diagnostics),
    #[error("{0}")]
    LockedOut(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Rejected(String),
    #[error("the config could not be saved: {0:#}")]
    Failed(anyhow::Error),
}

/// A validated change, ready to be committed.
pub struct Prepared {
    /// The new file text (secrets already references).
    pub text: String,
    /// What the previous version is kept as: the old text, its inline secrets turned
    /// into vault references too (`None`: there was no file).
    pub previous: Option<String>,
    /// Inline secrets to move into the vault, by name.
    pub secrets: Vec<(String, Zeroizing<String>)>,
    pub policy: Policy,
    /// Notices: what deliberate settings do (never fatal).
    pub diagnostics: Diagnostics,
    /// For a one-connector change: the connector as saved, and whether it is new.
    pub connector: Option<(String, Value, bool)>,
    /// How callers will be identified under it.
    pub identity: config::IdentityMode,
    /// The config paths the change touches, for the audit trail (no values).
    pub changed: Vec<String>,
}

/// Applies `change` to `current` and validates the result strictly, without writing
/// anything: warnings fail, as do masked secrets with nothing behind them, and, when
/// `saver` is given, a config that would take their admin role away.
pub fn prepare(
    current: &Current,
    change: Edit,
    env: &dyn Surroundings,
    saver: Option<&Caller>,
) -> Result<Prepared, SaveError> {
    let parsed = config::parse_hujson(&current.text);
    let unparsable = |e: &String| {
        SaveError::Rejected(format!(
            "the config file does not parse ({e}); fix it, or save the whole config with PUT /api/config"
        ))
    };
    let mut one = None;
    let mut new = match change {
        Edit::Whole(v) => v,
        Edit::Connector {
            id,
            server,
            create,
            if_match,
        } => {
            let mut root = parsed.clone().map_err(|e| unparsable(&e))?;
            check_version(&root, &id, if_match.as_deref())?;
            let servers = servers_mut(&mut root)?;
            let exists = servers.contains_key(&id);
            if create && exists {
                return Err(SaveError::Conflict(format!(
                    "a connector \"{id}\" exists already; choose another ID, or replace it with PUT /api/config/connectors/{id}"
                )));
            }
            servers.insert(id.clone(), server);
            one = Some((id, !exists));
            root
        }
        Edit::RemoveConnector { id, if_match } => {
            let mut root = parsed.clone().map_err(|e| unparsable(&e))?;
            check_version(&root, &id, if_match.as_deref())?;
            if servers_mut(&mut root)?.remove(&id).is_none() {
                return Err(SaveError::NotFound(format!(
                    "no connector \"{id}\" is configured"
                )));
            }
            root
        }
    };
    let old = parsed.unwrap_or(Value::Null);
    edit::unmask(&mut new, &old).map_err(SaveError::Rejected)?;

    // Validate with the secrets still inline, exactly as they will resolve.
    let (checked, diags) = check_as(&edit::pretty(&new), env, saver);
    if let (Some((_, policy)), Some(saver)) = (&checked, saver)
        && !policy.access(saver).is_admin()
    {
        return Err(SaveError::LockedOut(format!(
            "this config would take the admin role away from {} (who is saving it); keep a grant that gives them {{\"role\": \"admin\"}}, or have another admin save it",
            saver.login
        )));
    }
    let Some((checked_config, policy)) = checked.filter(|_| !diags.fails_save()) else {
        return Err(SaveError::Invalid(diags));
    };
    let identity = checked_config.identity.mode;
    // Names any field refers to, before or after, are never overwritten by a moved secret.
    let mut taken: std::collections::BTreeSet<String> = edit::vault_references(&new)
        .into_iter()
        .chain(edit::vault_references(&old))
        .map(|(name, _)| name)
        .collect();
    let mut secrets = edit::take_inline(&mut new, &mut taken);
    let changed = crate::audit::changed_paths(&old, &new);
    let connector = one.map(|(id, created)| {
        let server = new["connectors"]["servers"][&id].clone();
        (id, server, created)
    });
    let (text, previous) = if current.on_disk {
        // The previous version keeps no secret in plaintext either: its inline secrets
        // go to the vault too, under names of their own.
        let mut before = old.clone();
        let previous = if before.is_object() {
            edit::share_moved(&mut before, &new, &secrets);
            secrets.extend(edit::take_inline(&mut before, &mut taken));
            edit::apply(&current.text, &before)
        } else {
            current.text.clone()
        };
        (edit::apply(&current.text, &new), Some(previous))
    } else {
        // The first save starts from the embedded default's text, comments and all.
        (edit::apply(&current.text, &new), None)
    };
    Ok(Prepared {
        text,
        previous,
        secrets,
        policy,
        diagnostics: diags,
        connector,
        identity,
        changed,
    })
}

fn servers_mut(root: &mut Value) -> Result<&mut serde_json::Map<String, Value>, SaveError> {
    let Some(obj) = root.as_object_mut() else {
        return Err(SaveError::Rejected(
            "the config is not a JSON object; save the whole config with PUT /api/config".into(),
        ));
    };
    let connectors = obj
        .entry("connectors")
        .or_insert_with(|| serde_json::json!({}));
    let Some(connectors) = connectors.as_object_mut() else {
        return Err(SaveError::Rejected(
            "\"connectors\" is not an object; fix it with PUT /api/config".into(),
        ));
    };
    connectors
        .entry("servers")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or_else(|| {
            SaveError::Rejected(
                "\"connectors.servers\" is not an object; fix it with PUT /api/config".into(),
            )
        })
}

/// Moves a prepared change's secrets into the vault.
fn store_secrets(vault: &Vault, prepared: &Prepared) -> Result<Vec<String>, SaveError> {
    let mut names = Vec::with_capacity(prepared.secrets.len());
    for (name, value) in &prepared.secrets {
        vault
            .set_secret(name, value.as_bytes())
            .map_err(|e| SaveError::Failed(anyhow::anyhow!("vault: {e}")))?;
        names.push(name.clone());
    }
    Ok(names)
}

/// Moves a prepared change's secrets into the vault and writes the file (for the
/// command line, where no host is running). Returns the new text's hash and the
/// secrets' names.
pub fn commit(
    file: &ConfigFile,
    vault: &Vault,
    prepared: &Prepared,
) -> Result<(String, Vec<String>), SaveError> {
    let names = store_secrets(vault, prepared)?;
    file.replace(&prepared.text, prepared.previous.as_deref())
        .map_err(SaveError::Failed)?;
    Ok((hash(&prepared.text), names))
}

/// What a save did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Saved {
    pub hash: String,
    /// Vault secrets the save wrote (inline secrets moved there).
    pub secrets: Vec<String>,
    /// For a one-connector change: the connector as saved, and whether it is new.
    #[serde(skip)]
    pub connector: Option<(String, Value, bool)>,
}

/// Saves a change for `caller` and puts it in force. `base` is the hash the change was
/// made against (`None`: the change touches one connector and needs none). The new
/// snapshot is built before the file is written, so a file on disk is always one that
/// is in force.
pub async fn save(
    app: &App,
    caller: &Caller,
    base: Option<&str>,
    change: Edit,
) -> Result<Saved, SaveError> {
    let _one_at_a_time = app.config_lock.lock().await;
    let file = ConfigFile::of(app);
    // Replicas sharing the vault save one at a time too: the hash is checked against
    // what the last save on any of them wrote.
    let _everywhere = file.lock().await.map_err(SaveError::Failed)?;
    let current = file.read().map_err(|e| SaveError::Failed(e.into()))?;
    if let Some(base) = base
        && !base.eq_ignore_ascii_case(&current.hash)
    {
        return Err(SaveError::Stale {
            current: current.hash,
        });
    }
    let env = surroundings(app);
    let action = match &change {
        Edit::Whole(_) => "config.save",
        Edit::Connector { create: true, .. } => "connector.add",
        Edit::Connector { .. } => "connector.save",
        Edit::RemoveConnector { .. } => "connector.delete",
    };
    let prepared = prepare(&current, change, &env, Some(caller))?;
    fits_host(app, prepared.identity).map_err(SaveError::Rejected)?;
    let secrets = store_secrets(&app.vault, &prepared)?;
    let snap = validated_as(&prepared.text, &env, Some(caller))
        .and_then(|v| build_snapshot(v, &app.vault, &app.tokens))
        .map_err(|e| SaveError::Failed(anyhow::anyhow!("{e}")))?;
    file.replace(&prepared.text, prepared.previous.as_deref())
        .map_err(SaveError::Failed)?;
    let hash = hash(&prepared.text);
    app.install(snap, hash.clone());
    tracing::info!(by = %caller.login, secrets = secrets.len(), "config saved through the admin API");
    let mut changed = prepared.changed;
    changed.extend(secrets.iter().map(|s| format!("vault secret {s} (set)")));
    app.audit.admin(caller, action, &changed);
    Ok(Saved {
        hash,
        secrets,
        connector: prepared.connector,
    })
}

/// The provider template for `provider` from the registry, or why there is none.
/// `<provider>/<entry>` (`google/gmail`) is one of a provider's picker entries.
pub fn template(plugins: &Plugins, provider: &str) -> Result<ProviderTemplate, String> {
    if let Some((id, key)) = provider.split_once('/') {
        let plugin = plugins
            .get(id)
            .ok_or_else(|| format!("unknown provider \"{id}\" (in \"{provider}\")"))?;
        return plugin.entry_template(key).ok_or_else(|| {
            let keys: Vec<String> = plugin
                .entries
                .iter()
                .map(|e| format!("{id}/{}", e.key))
                .collect();
            format!(
                "provider \"{id}\" has no entry \"{key}\"; its entries: {}",
                if keys.is_empty() {
                    "none".to_owned()
                } else {
                    keys.join(", ")
                }
            )
        });
    }
    let env = HostSurroundings {
        vault: VaultView::Empty,
        plugins: Some(plugins),
    };
    match env.provider(provider) {
        Provider::Loaded(t) => Ok(*t),
        Provider::Broken(why) => Err(format!(
            "provider \"{provider}\" is in the registry but did not load: {why}"
        )),
        Provider::Unknown { known } => Err(format!(
            "unknown provider \"{provider}\"; the registry has: {}",
            if known.is_empty() {
                "nothing".to_owned()
            } else {
                known.join(", ")
            }
        )),
        Provider::NoRegistry => Err(format!(
            "provider \"{provider}\": no provider registry is loaded (set --registry or registry.dir)"
        )),
    }
}
