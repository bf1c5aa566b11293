//! Diagnostics: every problem found in a config, with its severity and JSON path.
//!
//! Validation never stops at the first problem: an operator fixing a config wants the
//! whole list at once. Notices say what a deliberate setting does (logged, never fatal);
//! warnings let a config load (logged), but fail a save or a `validate --strict`; errors
//! always fail.

use std::fmt;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A deliberate setting worth knowing about (`egress.allow_loopback`): logged, never
    /// fatal.
    Notice,
    /// Logged at load; fatal on save and on `validate --strict`.
    Warning,
    /// Always fatal.
    Error,
}

/// One problem, located by a JSON path such as `connectors.servers.github.auth.secert`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Notice => "notice",
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        if self.path.is_empty() {
            write!(f, "{level}: {}", self.message)
        } else {
            write!(f, "{level}: {}: {}", self.path, self.message)
        }
    }
}

/// An ordered collection of diagnostics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, path, message);
    }

    pub fn notice(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Notice, path, message);
    }

    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, path, message);
    }

    pub fn push(
        &mut self,
        severity: Severity,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.0.push(Diagnostic {
            severity,
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Would a save refuse this config (an error or a warning)?
    pub fn fails_save(&self) -> bool {
        self.0.iter().any(|d| d.severity >= Severity::Warning)
    }

    pub fn notices(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Notice)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Builds dotted JSON paths (`grants[0].src`), the form diagnostics use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonPath(String);

impl JsonPath {
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Appends an object key. Keys that are not plain identifiers are quoted.
    pub fn key(&self, key: &str) -> Self {
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let mut s = self.0.clone();
        if plain {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(key);
        } else {
            s.push_str(&format!("[{}]", serde_json::Value::String(key.to_owned())));
        }
        Self(s)
    }

    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// Appends a path reported by serde (`a.b.0.c` style, relative to `self`).
    pub(crate) fn join_serde(&self, rel: &serde_ignored::Path<'_>) -> Self {
        use serde_ignored::Path;
        match rel {
            Path::Root => self.clone(),
            Path::Seq { parent, index } => self.join_serde(parent).index(*index),
            Path::Map { parent, key } => self.join_serde(parent).key(key),
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => self.join_serde(parent),
        }
    }

    /// Appends a path tracked by `serde_path_to_error`.
    pub(crate) fn join_tracked(&self, rel: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        let mut out = self.clone();
        for seg in rel.iter() {
            out = match seg {
                Segment::Seq { index } => out.index(*index),
                Segment::Map { key } => out.key(key),
                Segment::Enum { variant } => out.key(variant),
                Segment::Unknown => out,
            };
        }
        out
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<JsonPath> for String {
    fn from(p: JsonPath) -> String {
        p.0
    }
}

impl From<&JsonPath> for String {
    fn from(p: &JsonPath) -> String {
        p.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_dotted_with_indices_and_quoted_odd_keys() {
        let p = JsonPath::root().key("grants").index(0).key("src");
        assert_eq!(p.as_str(), "grants[0].src");
        let q = JsonPath::root()
            .key("app")
            .key("tailscale.com/cap/aperture");
        assert_eq!(q.as_str(), "app[\"tailscale.com/cap/aperture\"]");
    }

    #[test]
    fn severity_controls_has_errors() {
        let mut d = Diagnostics::default();
        d.warn("a", "w");
        assert!(!d.has_errors());
        d.error("b", "e");
        assert!(d.has_errors());
        assert_eq!(d.to_string(), "warning: a: w\nerror: b: e\n");
    }
}
