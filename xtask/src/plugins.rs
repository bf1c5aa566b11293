//! `cargo xtask plugins [--check]`: builds every provider plugin for `wasm32-wasip2` and
//! writes the registry (`registry/<id>/plugin.wasm` + `plugin.toml` with its hash).
//!
//! Builds are reproducible: the toolchain is pinned (`rust-toolchain.toml`), the lock
//! file is used as is, and `--remap-path-prefix` removes the checkout and cargo-home
//! paths from the output, so the same source gives the same bytes on any machine.
//! `--check` rebuilds and fails if the committed registry differs from what the source
//! builds to, which keeps registry and source in step in CI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

/// Verified providers: crate folder under `plugins/` = registry id.
pub const PROVIDERS: &[&str] = &["salesforce", "atlassian", "slack", "google"];

const TARGET: &str = "wasm32-wasip2";

/// Guest stack size in bytes (the Rust default is 1 MiB).
const GUEST_STACK: u32 = 64 * 1024;

#[derive(Debug, clap::Args)]
pub struct PluginsArgs {
    /// Do not write the registry; fail if it differs from a fresh build.
    #[arg(long)]
    check: bool,
}

pub fn run(root: &Path, args: PluginsArgs) -> Result<()> {
    ensure_target()?;
    build(root)?;
    let out = root.join("plugins/target").join(TARGET).join("release");
    let mut stale = Vec::new();
    for id in PROVIDERS {
        let wasm_file = out.join(format!("portcullis_provider_{id}.wasm"));
        let wasm = std::fs::read(&wasm_file)
            .with_context(|| format!("the build did not produce {}", wasm_file.display()))?;
        let sha = hex(&Sha256::digest(&wasm));
        let source = root.join("plugins").join(id).join("plugin.toml");
        let mut manifest = std::fs::read_to_string(&source)
            .with_context(|| format!("cannot read {}", source.display()))?;
        if !manifest.ends_with('\n') {
            manifest.push('\n');
        }
        manifest.push_str(&format!(
            "\n[component]\npath = \"plugin.wasm\"\nsha256 = \"{sha}\"\n"
        ));
        let entry = root.join("registry").join(id);
        if args.check {
            let same_wasm =
                std::fs::read(entry.join("plugin.wasm")).ok().as_deref() == Some(&wasm[..]);
            let same_manifest = std::fs::read_to_string(entry.join("plugin.toml"))
                .ok()
                .as_deref()
                == Some(manifest.as_str());
            if !(same_wasm && same_manifest) {
                stale.push(*id);
            }
            println!(
                "{id}: sha256 {sha}{}",
                if same_wasm && same_manifest {
                    ""
                } else {
                    "  (registry differs)"
                }
            );
        } else {
            std::fs::create_dir_all(&entry)?;
            std::fs::write(entry.join("plugin.wasm"), &wasm)?;
            std::fs::write(entry.join("plugin.toml"), manifest)?;
            println!("registry/{id}: {} bytes, sha256 {sha}", wasm.len());
        }
    }
    if !stale.is_empty() {
        bail!(
            "registry/ is out of date for {}: the source builds to different bytes. Run `cargo xtask plugins` and commit registry/",
            stale.join(", ")
        );
    }
    Ok(())
}

fn ensure_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the wasm32-wasip2 target; install Rust with rustup")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .context("running rustup target add")?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed; plugins cannot be built without it");
    }
    Ok(())
}

fn build(root: &Path) -> Result<()> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("cannot find the cargo home (set CARGO_HOME)")?;
    let remap = [
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/portcullis", root.display()),
        // A small shadow stack keeps the pages a call touches few and close together,
        // which is what makes resetting a pooled instance cheap (see the runtime).
        format!("-Clink-arg=-zstack-size={GUEST_STACK}"),
    ]
    .join("\u{1f}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root.join("plugins"))
        .args([
            "build",
            "--locked",
            "--release",
            "--target",
            TARGET,
            "--workspace",
        ])
        .env("CARGO_ENCODED_RUSTFLAGS", remap)
        // The plugins have their own workspace and target folder.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .status()
        .context("running cargo build for the plugins")?;
    if !status.success() {
        bail!("building the plugins failed (see the compiler output above)");
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
