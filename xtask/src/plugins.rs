//! `cargo xtask plugins [--check]`: builds every provider plugin for `wasm32-wasip2` and
//! writes the registry (`registry/<id>/plugin.wasm` + `plugin.toml` with its hash).
//!
//! Builds are reproducible: the toolchain is pinned (`rust-toolchain.toml`), the lock
//! file is used as is, `--remap-path-prefix` removes the checkout and cargo-home paths
//! from the output, and the build runs on a copy of the source files only (what git
//! tracks or would track), so build output, caches and other ignored files in a working
//! tree cannot change the bytes — they measurably did. The same source gives the same
//! bytes in any checkout.
//! `--check` rebuilds and fails if the committed registry differs from what the source
//! builds to, which keeps registry and source in step in CI.
//!
//! It also keeps `sdk/template/Cargo.lock` on the root `Cargo.lock`'s versions (the
//! template's test shares the workspace's build folder, so every crate both use builds
//! once): the plain command realigns it, `--check` fails when it has drifted.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

/// The verified providers: the plugin workspace's members outside `testing/` (crate
/// folder under `plugins/` = registry id). `plugins/Cargo.toml` is the one list.
pub fn providers(root: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        workspace: Workspace,
    }
    #[derive(serde::Deserialize)]
    struct Workspace {
        members: Vec<String>,
    }
    let path = root.join("plugins/Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: Manifest =
        toml::from_str(&text).with_context(|| format!("{} is not a workspace", path.display()))?;
    Ok(manifest
        .workspace
        .members
        .into_iter()
        .filter(|m| !m.contains('/'))
        .collect())
}

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
    for id in providers(root)? {
        let wasm_file = out.join(format!("portcullis_provider_{id}.wasm"));
        let wasm = std::fs::read(&wasm_file)
            .with_context(|| format!("the build did not produce {}", wasm_file.display()))?;
        let sha = hex(&Sha256::digest(&wasm));
        let source = root.join("plugins").join(&id).join("plugin.toml");
        let mut manifest = std::fs::read_to_string(&source)
            .with_context(|| format!("cannot read {}", source.display()))?;
        if !manifest.ends_with('\n') {
            manifest.push('\n');
        }
        manifest.push_str(&format!(
            "\n[component]\npath = \"plugin.wasm\"\nsha256 = \"{sha}\"\n"
        ));
        let entry = root.join("registry").join(&id);
        if args.check {
            let same_wasm =
                std::fs::read(entry.join("plugin.wasm")).ok().as_deref() == Some(&wasm[..]);
            let same_manifest = std::fs::read_to_string(entry.join("plugin.toml"))
                .ok()
                .as_deref()
                == Some(manifest.as_str());
            if !(same_wasm && same_manifest) {
                stale.push(id.clone());
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
    template_lock(root, args.check)
}

/// Checks (`check`) or realigns `sdk/template/Cargo.lock` against the root `Cargo.lock`:
/// every crate both use must have the root's version.
fn template_lock(root: &Path, check: bool) -> Result<()> {
    let root_lock =
        std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let path = root.join("sdk/template/Cargo.lock");
    let read =
        || std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()));
    let before = read()?;
    if check {
        let drift = lock_drift(&root_lock, &before);
        if !drift.is_empty() {
            bail!(
                "sdk/template/Cargo.lock has other versions than Cargo.lock ({}); run `cargo xtask plugins` to realign it",
                drift.join(", ")
            );
        }
        return Ok(());
    }
    // Seed it with the root's packages plus the template's own (the SDK, the wasm-side
    // crates); cargo keeps what the template uses, at those versions.
    let (head, root_packages) = lock_packages(&root_lock);
    let known: Vec<(&str, &str)> = root_packages.iter().filter_map(|p| lock_key(p)).collect();
    let own = lock_packages(&before)
        .1
        .into_iter()
        .filter(|p| lock_key(p).is_some_and(|k| !known.contains(&k)));
    let seed: Vec<&str> = root_packages.iter().copied().chain(own).collect();
    std::fs::write(
        &path,
        format!("{head}\n[[package]]\n{}\n", seed.join("\n\n[[package]]\n")),
    )?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(root.join("sdk/template/Cargo.toml"))
        .stdout(std::process::Stdio::null())
        .status()
        .context("running cargo metadata for sdk/template")?;
    let after = read()?;
    let drift = lock_drift(&root_lock, &after);
    if !status.success() || !drift.is_empty() {
        bail!(
            "could not realign sdk/template/Cargo.lock with Cargo.lock ({})",
            drift.join(", ")
        );
    }
    if after != before {
        println!("sdk/template/Cargo.lock: realigned with Cargo.lock");
    }
    Ok(())
}

/// Registry crates of `template` at another version than the root lock has, where the
/// root's version would do (semver-compatible): those are built twice for nothing.
fn lock_drift(root: &str, template: &str) -> Vec<String> {
    let root: Vec<(&str, &str)> = lock_packages(root)
        .1
        .iter()
        .filter_map(|p| lock_key(p))
        .collect();
    lock_packages(template)
        .1
        .into_iter()
        .filter(|p| p.contains("\nsource = "))
        .filter_map(lock_key)
        .filter(|(name, version)| {
            root.iter().any(|(n, v)| {
                n == name && v != version && semver_family(v) == semver_family(version)
            })
        })
        .map(|(name, version)| format!("{name} {version}"))
        .collect()
}

/// The part of a version that semver-compatible versions share: `1` of `1.2.3`, `0.4` of
/// `0.4.1`, `0.0.3` of `0.0.3`.
fn semver_family(version: &str) -> &str {
    let core = version.split(['+', '-']).next().unwrap_or(version);
    let parts: Vec<&str> = core.splitn(3, '.').collect();
    let keep = match parts.as_slice() {
        ["0", "0", _] => 3,
        ["0", ..] => 2,
        _ => 1,
    };
    let len = parts.iter().take(keep).map(|p| p.len()).sum::<usize>() + keep - 1;
    &core[..len.min(core.len())]
}

/// A lock file's header and its `[[package]]` entries.
fn lock_packages(lock: &str) -> (&str, Vec<&str>) {
    let mut parts = lock.split("\n[[package]]\n");
    let head = parts.next().unwrap_or_default();
    (head, parts.map(str::trim_end).collect())
}

/// An entry's name and version.
fn lock_key(package: &str) -> Option<(&str, &str)> {
    let field = |key: &str| {
        package.lines().find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(" = \"")?
                .strip_suffix('"')
        })
    };
    Some((field("name")?, field("version")?))
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

/// Copies the source files (tracked, or untracked but not ignored) into a fresh staging
/// folder and returns it. Outside a git checkout, builds in place.
fn stage(root: &Path) -> Result<PathBuf> {
    let listed = Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output();
    let listed = match listed {
        Ok(o) if o.status.success() => o.stdout,
        _ => {
            eprintln!(
                "xtask: not a git checkout; building the plugins in place (the output may not match CI byte for byte)"
            );
            return Ok(root.to_owned());
        }
    };
    // Outside the checkout, at a fixed place: builds from inside this working tree came
    // out different from builds of fresh clones elsewhere.
    let staging = std::env::temp_dir().join("portcullis-plugin-source");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    for rel in listed.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).context("a non-UTF-8 file name")?);
        let from = root.join(rel);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let to = staging.join(rel);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(staging)
}

/// Builds into a fresh folder, then copies the components to `plugins/target` (where
/// the tests look for the test-only plugins).
fn build(root: &Path) -> Result<()> {
    let source = stage(root)?;
    let target = std::env::temp_dir().join("portcullis-plugin-target");
    if target.exists() {
        std::fs::remove_dir_all(&target)
            .with_context(|| format!("cannot clear {}", target.display()))?;
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("cannot find the cargo home (set CARGO_HOME)")?;
    let remap = [
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/portcullis", source.display()),
        // A small shadow stack keeps the pages a call touches few and close together,
        // which is what makes resetting a pooled instance cheap (see the runtime).
        format!("-Clink-arg=-zstack-size={GUEST_STACK}"),
    ]
    .join("\u{1f}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(source.join("plugins"))
        .args([
            "build",
            "--locked",
            "--release",
            "--target",
            TARGET,
            "--workspace",
        ])
        .env("CARGO_ENCODED_RUSTFLAGS", remap)
        // A fresh target folder every time: reusing one across builds changed the
        // bytes of the linked components.
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .status()
        .context("running cargo build for the plugins")?;
    if !status.success() {
        bail!("building the plugins failed (see the compiler output above)");
    }
    let built = target.join(TARGET).join("release");
    let out = root.join("plugins/target").join(TARGET).join("release");
    std::fs::create_dir_all(&out)?;
    for entry in std::fs::read_dir(&built)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm")
            && let Some(name) = path.file_name()
        {
            std::fs::copy(&path, out.join(name))?;
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "source = \"registry+https://github.com/rust-lang/crates.io-index\"";

    fn lock(packages: &[(&str, &str)]) -> String {
        let mut s = String::from("version = 4\n");
        for (name, version) in packages {
            s.push_str(&format!(
                "\n[[package]]\nname = \"{name}\"\nversion = \"{version}\"\n{REG}\n"
            ));
        }
        s
    }

    #[test]
    fn only_a_version_the_root_could_have_shared_is_drift() {
        let root = lock(&[
            ("serde", "1.0.229"),
            ("wasmparser", "0.254.2"),
            ("toml", "1.2.1+spec-1.1.0"),
        ]);
        let template = lock(&[
            ("serde", "1.0.228"),         // the root's 1.0.229 would do
            ("wasmparser", "0.262.0"),    // another 0.x series: needed as it is
            ("toml", "1.2.1+spec-1.1.0"), // the same
            ("wit-bindgen", "0.63.0"),    // the root has none
        ]);
        assert_eq!(lock_drift(&root, &template), ["serde 1.0.228"]);
        assert_eq!(semver_family("0.262.0"), "0.262");
        assert_eq!(semver_family("0.0.3"), "0.0.3");
        assert_eq!(semver_family("1.2.1+spec-1.1.0"), "1");
    }
}
