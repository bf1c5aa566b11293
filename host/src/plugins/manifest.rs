//! `registry/<id>/plugin.toml`: what a registry entry claims about its component.
//!
//! The manifest is checked before the component is touched: the id matches the folder,
//! the component path stays inside the folder, and the component's SHA-256 matches.
//! `allowed_hosts` is the provider's declared egress: every URL a plugin returns must be
//! on one of these hosts (or on the connector's own configured host).

use std::path::{Component as PathComponent, Path, PathBuf};

use serde::Deserialize;

/// Manifest format version this host reads (separate from the WIT version).
pub const SCHEMA_VERSION: u32 = 1;

/// Largest memory an operator-facing manifest may ask for; the pool's slot size.
pub const MAX_MEMORY_MB: u32 = 64;
/// Longest per-call deadline a manifest may ask for.
pub const MAX_TIMEOUT_MS: u32 = 1_000;
/// Longest picker category a manifest may name.
const MAX_CATEGORY_CHARS: usize = 32;
/// The picker's category for a manifest that names none.
pub const DEFAULT_CATEGORY: &str = "Other";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    /// `[a-z][a-z0-9-]*`; equals the folder name and `defaults().id`.
    pub id: String,
    /// Display name for logs and the picker.
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Where the picker files the provider ("Developer tools", "CRM"); "Other" when the
    /// manifest names none.
    #[serde(default)]
    pub category: Option<String>,
    pub component: ComponentRef,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub capabilities: Capabilities,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentRef {
    /// File name inside the entry's folder.
    pub path: String,
    /// Hex SHA-256 of the component file.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_memory_mb: u32,
    pub timeout_ms: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_memory_mb: 16,
            timeout_ms: 50,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Host names (`api.example.com`) or one-label wildcards (`*.example.com`, which does
    /// not match `example.com` itself).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl Manifest {
    /// Parses and checks a manifest found in folder `dir_name`.
    pub fn parse(text: &str, dir_name: &str) -> Result<Self, String> {
        let m: Manifest = toml::from_str(text).map_err(|e| format!("plugin.toml: {e}"))?;
        if m.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "plugin.toml: schema_version {} is not supported (this host reads {SCHEMA_VERSION}); upgrade Portcullis or rebuild the entry",
                m.schema_version
            ));
        }
        if !valid_id(&m.id) {
            return Err(format!(
                "plugin.toml: id \"{}\" must be lower-case letters, digits and '-', starting with a letter",
                m.id
            ));
        }
        if m.id != dir_name {
            return Err(format!(
                "plugin.toml: id \"{}\" does not match its folder \"{dir_name}\"; rename one of them",
                m.id
            ));
        }
        if m.component.sha256.len() != 64
            || !m.component.sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err("plugin.toml: component.sha256 must be 64 hex digits".to_owned());
        }
        if !(1..=MAX_MEMORY_MB).contains(&m.limits.max_memory_mb) {
            return Err(format!(
                "plugin.toml: limits.max_memory_mb must be between 1 and {MAX_MEMORY_MB}"
            ));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&m.limits.timeout_ms) {
            return Err(format!(
                "plugin.toml: limits.timeout_ms must be between 1 and {MAX_TIMEOUT_MS}"
            ));
        }
        if let Some(c) = &m.category
            && (c.trim().is_empty()
                || c.chars().count() > MAX_CATEGORY_CHARS
                || c.chars().any(char::is_control))
        {
            return Err(format!(
                "plugin.toml: category must be a short label (1 to {MAX_CATEGORY_CHARS} characters, one line), like \"Developer tools\""
            ));
        }
        for h in &m.capabilities.allowed_hosts {
            if !valid_host_pattern(h) {
                return Err(format!(
                    "plugin.toml: allowed_hosts entry \"{h}\" is not a host name or \"*.\" wildcard (no scheme, port or path)"
                ));
            }
        }
        Ok(m)
    }

    /// The component file, refusing paths that leave the entry's folder.
    pub fn component_path(&self, dir: &Path) -> Result<PathBuf, String> {
        let p = Path::new(&self.component.path);
        let plain = p.components().count() == 1
            && matches!(p.components().next(), Some(PathComponent::Normal(_)));
        if !plain {
            return Err(format!(
                "plugin.toml: component.path \"{}\" must be a file name inside the entry's folder",
                self.component.path
            ));
        }
        Ok(dir.join(p))
    }

    /// The picker's category.
    pub fn category(&self) -> &str {
        self.category
            .as_deref()
            .map(str::trim)
            .unwrap_or(DEFAULT_CATEGORY)
    }

    /// Whether `host` is one of the declared hosts.
    pub fn allows_host(&self, host: &str) -> bool {
        host_allowed(&self.capabilities.allowed_hosts, host)
    }
}

fn valid_id(id: &str) -> bool {
    id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_host_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `host` (already lower-case, as `url` gives it) against the declared patterns.
pub fn host_allowed(patterns: &[String], host: &str) -> bool {
    patterns.iter().any(|p| match p.strip_prefix("*.") {
        Some(suffix) => host.strip_suffix(suffix).is_some_and(|head| {
            head.len() > 1 && head.ends_with('.') && !head[..head.len() - 1].contains('.')
        }),
        None => p.eq_ignore_ascii_case(host),
    })
}

/// A good manifest for tests here and of the checks that read one (`acme`, its hosts
/// `api.acme.example` and `*.acme.example`).
#[cfg(test)]
pub(crate) const EXAMPLE: &str = r#"
schema_version = 1
id = "acme"
name = "Acme"
version = "1.0.0"

[component]
path = "plugin.wasm"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[capabilities]
allowed_hosts = ["api.acme.example", "*.acme.example"]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = EXAMPLE;

    #[test]
    fn parses_a_good_manifest() {
        let m = Manifest::parse(GOOD, "acme").expect("good manifest");
        assert_eq!(m.limits.timeout_ms, 50);
        assert!(m.allows_host("api.acme.example"));
        assert!(m.allows_host("eu.acme.example"));
        assert!(!m.allows_host("acme.example"));
        assert!(
            !m.allows_host("a.b.acme.example"),
            "a wildcard covers one label"
        );
        assert!(!m.allows_host("evilacme.example"));
        assert!(!m.allows_host("api.acme.example.evil"));
        assert_eq!(m.category(), DEFAULT_CATEGORY);
        let filed = GOOD.replace(
            "version = \"1.0.0\"",
            "version = \"1.0.0\"\ncategory = \"CRM\"",
        );
        let m = Manifest::parse(&filed, "acme").expect("with a category");
        assert_eq!(m.category(), "CRM");
    }

    #[test]
    fn rejects_mismatches_and_bad_fields() {
        assert!(
            Manifest::parse(GOOD, "other")
                .expect_err("must be refused")
                .contains("does not match its folder")
        );
        let typo = GOOD.replace("version = \"1.0.0\"", "version = \"1.0.0\"\nversoin = 2");
        assert!(
            Manifest::parse(&typo, "acme")
                .expect_err("must be refused")
                .contains("versoin")
        );
        let bad_host = GOOD.replace("\"api.acme.example\",", "\"https://api.acme.example/\",");
        assert!(
            Manifest::parse(&bad_host, "acme")
                .expect_err("must be refused")
                .contains("allowed_hosts")
        );
        let bad_hash = GOOD.replace("sha256 = \"0000", "sha256 = \"zz00");
        assert!(
            Manifest::parse(&bad_hash, "acme")
                .expect_err("must be refused")
                .contains("sha256")
        );
        for category in ["", "  ", "two\\nlines", &"x".repeat(MAX_CATEGORY_CHARS + 1)] {
            let bad = GOOD.replace(
                "version = \"1.0.0\"",
                &format!("version = \"1.0.0\"\ncategory = \"{category}\""),
            );
            assert!(
                Manifest::parse(&bad, "acme")
                    .expect_err("must be refused")
                    .contains("category"),
                "{category:?}"
            );
        }
        let future = GOOD.replace("schema_version = 1", "schema_version = 9");
        assert!(
            Manifest::parse(&future, "acme")
                .expect_err("must be refused")
                .contains("schema_version 9")
        );
    }

    #[test]
    fn component_path_stays_inside_the_folder() {
        let mut m = Manifest::parse(GOOD, "acme").expect("good manifest");
        let dir = Path::new("/reg/acme");
        assert_eq!(
            m.component_path(dir).expect("plain name"),
            dir.join("plugin.wasm")
        );
        for bad in ["../x.wasm", "/etc/passwd", "a/b.wasm", ".."] {
            m.component.path = bad.to_owned();
            assert!(m.component_path(dir).is_err(), "{bad}");
        }
    }
}
