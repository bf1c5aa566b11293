//! The audit trail: who used which connector or tool, under which grant, with what
//! outcome, and every admin change (who, what changed). One JSON object per line.
//!
//! Records go to the file named by `--audit-log` (appended, created `0600`), else to the
//! log under the `audit` target. A record never holds a secret value, a request or
//! response body, a query string or a header value: calls name the method and path,
//! admin changes name the config paths and secret names they touched.
//!
//! Writing is off the request path: records go through a bounded queue to one writer
//! thread ([`crate::telemetry::lines`]), which flushes whenever the queue is empty. When
//! the disk cannot keep up and the queue is full, a record is dropped, counted in
//! `portcullis_audit_records_dropped` and said in the log; a gateway that stalled every
//! request on its audit disk would turn a slow disk into an outage. Records that go to
//! the log take the log's own writer thread.

use std::borrow::Cow;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;

use crate::policy::{Caller, GrantRef};
use crate::telemetry::lines::{Lines, Refused};
use crate::telemetry::records::{Precision, Record, decimal};

/// Longest target (path, tool name, resource URI) recorded: they come from requests, and
/// a refused request is recorded too.
const MAX_TARGET: usize = 512;

/// Where audit records go.
#[derive(Debug)]
pub struct Audit {
    sink: Sink,
    /// Records the full queue made us drop.
    dropped: Counter,
}

#[derive(Debug)]
enum Sink {
    Log,
    File(Lines),
}

/// A grant check's verdict, carried to where a call's audit record is written.
#[derive(Debug, Default)]
pub enum Decision {
    /// Refused before the grant check (a bad path, an unknown name): not recorded as a
    /// use.
    #[default]
    Undecided,
    Denied,
    Granted(GrantRef),
}

impl Decision {
    /// An MCP call's record: the grant and `done` (how the call ended) once granted,
    /// `denied` when refused, `error` when it failed before its grant was decided.
    pub fn outcome(&self, done: &'static str) -> (Option<&GrantRef>, Outcome) {
        match self {
            Self::Denied => (None, Outcome::Denied),
            Self::Granted(g) => (Some(g), Outcome::Tool(done)),
            Self::Undecided => (None, Outcome::Tool("error")),
        }
    }
}

/// How a connector was used.
#[derive(Debug, Clone, Copy)]
pub enum Via<'a> {
    /// `/v1/connectors/<id>/<path>`: the method and the path (no query).
    Proxy { method: &'a str, path: &'a str },
    /// `tools/call` through `/v1/mcp`: the upstream's tool name.
    Tool { name: &'a str },
    /// `resources/read` through `/v1/mcp`: the upstream's resource URI.
    Resource { uri: &'a str },
    /// `prompts/get` through `/v1/mcp`: the upstream's prompt name.
    Prompt { name: &'a str },
}

/// What came of a call.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Refused by policy: no grant covers it.
    Denied,
    /// Answered with this HTTP status.
    Status(u16),
    /// An MCP call: `ok`, `tool_error` (the tool reported failure) or `error`.
    Tool(&'static str),
}

impl Outcome {
    /// As the record's `outcome` reads: `denied`, the status (`"200"`, written into
    /// `digits`), or the MCP call's.
    fn text(self, digits: &mut [u8; 5]) -> &str {
        match self {
            Self::Denied => "denied",
            Self::Status(s) => decimal(s, digits),
            Self::Tool(o) => o,
        }
    }
}

impl Audit {
    /// Records to the log.
    pub fn to_log() -> Self {
        Self {
            sink: Sink::Log,
            dropped: Counter::default(),
        }
    }

    /// Records appended to `path`, opened now so a bad path fails start-up. `dropped`
    /// counts records lost to a full queue or a failed write.
    pub fn to_file(path: &Path, dropped: Counter) -> anyhow::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(path)
            .with_context(|| format!("cannot open the audit log {}", path.display()))?;
        let lost = dropped.clone();
        let lines = Lines::spawn("audit-writer", file, move |e| {
            lost.inc();
            tracing::error!(error = %e, "cannot write the audit log; records may be lost");
        })
        .context("cannot start the audit writer")?;
        Ok(Self {
            sink: Sink::File(lines),
            dropped,
        })
    }

    /// A connector or tool used (or refused).
    pub fn call(
        &self,
        caller: &Caller,
        connector: &str,
        via: Via<'_>,
        grant: Option<&GrantRef>,
        outcome: Outcome,
    ) {
        let (kind, target): (_, Cow<'_, str>) = match via {
            Via::Proxy { method, path } => ("proxy", [method, " /", path].concat().into()),
            Via::Tool { name } => ("tool", name.into()),
            Via::Prompt { name } => ("prompt", name.into()),
            // A URI's query and fragment may carry values: left out, as for paths.
            Via::Resource { uri } => (
                "resource",
                uri.split(['?', '#']).next().unwrap_or_default().into(),
            ),
        };
        let target = if target.len() > MAX_TARGET {
            let end = (0..=MAX_TARGET)
                .rev()
                .find(|i| target.is_char_boundary(*i))
                .unwrap_or(0);
            format!("{}…", &target[..end]).into()
        } else {
            target
        };
        let mut r = Self::start("call", caller);
        r.str("connector", connector)
            .str("via", kind)
            .str("target", &target);
        match grant {
            Some(g) => r.str("grant", g.as_str()),
            None => r.null("grant"),
        };
        r.str("outcome", outcome.text(&mut [0; 5]));
        self.write(r);
    }

    /// An admin change: `action` (`config.save`, `secret.set`, …), and what it touched
    /// (config paths, secret names; never values).
    pub fn admin(&self, caller: &Caller, action: &str, changed: &[String]) {
        let mut r = Self::start("admin", caller);
        r.str("action", action).strs("changed", changed);
        self.write(r);
    }

    /// A user's own connection to a per-user connector made or removed.
    pub fn connection(&self, caller: &Caller, connector: &str, action: &str) {
        let mut r = Self::start("connection", caller);
        r.str("connector", connector).str("action", action);
        self.write(r);
    }

    /// A record's first fields: when, the trace of the request it records (with traces
    /// on), the event, and who.
    fn start(event: &str, caller: &Caller) -> Record {
        let mut r = Record::default();
        r.time("time", SystemTime::now(), Precision::Millis);
        if let Some(trace) = crate::telemetry::otel::current_trace_id() {
            r.str("trace_id", &trace);
        }
        r.str("event", event)
            .str("caller", &caller.login)
            .opt_str("node", caller.node.as_deref());
        r
    }

    fn write(&self, record: Record) {
        let mut text = record.finish();
        match &self.sink {
            Sink::Log => {
                if let Ok(text) = std::str::from_utf8(&text) {
                    crate::telemetry::log_audit(text);
                }
            }
            Sink::File(lines) => {
                text.push(b'\n');
                let why = match lines.try_send(text) {
                    Ok(()) => return,
                    Err(Refused::Full) => "the audit log's disk is not keeping up",
                    Err(Refused::Stopped) => "the audit writer stopped",
                };
                self.dropped.inc();
                tracing::error!("audit record dropped: {why}");
            }
        }
    }
}

impl Audit {
    /// Waits (up to `within`) until every record made so far is written: at shutdown,
    /// so the last requests' records are not lost with the process. Blocking.
    pub fn flush(&self, within: std::time::Duration) {
        if let Sink::File(lines) = &self.sink
            && !lines.flush(within)
        {
            tracing::error!(
                "the audit log was not written in time at shutdown; its last records may be lost"
            );
        }
    }
}

/// The config paths a change touched, for [`Audit::admin`]: keys only, no values.
/// Objects are compared key by key; anything else that differs is named at its path.
pub fn changed_paths(before: &serde_json::Value, after: &serde_json::Value) -> Vec<String> {
    fn walk(at: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(a), Object(b)) => {
                for (k, va) in a {
                    let here = join(at, k);
                    match b.get(k) {
                        None => out.push(format!("{here} (removed)")),
                        Some(vb) => walk(&here, va, vb, out),
                    }
                }
                for k in b.keys().filter(|k| !a.contains_key(*k)) {
                    out.push(format!("{} (added)", join(at, k)));
                }
            }
            (a, b) if a != b => out.push(if at.is_empty() {
                "(whole config)".to_owned()
            } else {
                at.to_owned()
            }),
            _ => {}
        }
    }
    fn join(at: &str, key: &str) -> String {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    }
    let mut out = Vec::new();
    walk("", before, after, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_name_paths_never_values() {
        let before = json!({"connectors": {"servers": {
            "a": {"protocol": "http", "auth": {"type": "bearer_token", "secret": "old-secret"}},
            "b": {"protocol": "http"}}}, "grants": [1]});
        let after = json!({"connectors": {"servers": {
            "a": {"protocol": "http", "auth": {"type": "bearer_token", "secret": {"vault": "a_secret"}}},
            "c": {"protocol": "mcp"}}}, "grants": [1, 2]});
        let changed = changed_paths(&before, &after);
        assert_eq!(
            changed,
            [
                "connectors.servers.a.auth.secret",
                "connectors.servers.b (removed)",
                "connectors.servers.c (added)",
                "grants",
            ]
        );
        let text = changed.join(" ");
        assert!(!text.contains("old-secret") && !text.contains("a_secret"));
    }

    #[test]
    fn records_reach_the_file_one_json_object_per_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::to_file(&path, Counter::default()).expect("open");
        let caller = Caller::loopback();
        audit.call(
            &caller,
            "github",
            Via::Proxy {
                method: "GET",
                path: "repos/a/b",
            },
            None,
            Outcome::Denied,
        );
        audit.admin(&caller, "secret.set", &["github_token".into()]);
        audit.call(
            &caller,
            "notes",
            Via::Resource {
                uri: "mem://a?token=never-this",
            },
            None,
            Outcome::Denied,
        );
        let long = "x".repeat(2000);
        audit.call(
            &caller,
            "notes",
            Via::Tool { name: &long },
            None,
            Outcome::Denied,
        );
        audit.call(
            &caller,
            "notes",
            Via::Prompt { name: "brief" },
            None,
            Outcome::Tool("ok"),
        );
        // What shutdown does: everything recorded so far is on disk when it returns.
        audit.flush(std::time::Duration::from_secs(5));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .expect("audit file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(
            (&lines[4]["via"], &lines[4]["target"]),
            (&serde_json::json!("prompt"), &serde_json::json!("brief"))
        );
        assert_eq!(lines[2]["target"], "mem://a", "no query");
        let cut = lines[3]["target"].as_str().expect("target");
        assert!(
            cut.chars().count() <= MAX_TARGET + 1 && cut.ends_with('…'),
            "{cut}"
        );
        assert_eq!(lines[0]["event"], "call");
        assert_eq!(lines[0]["target"], "GET /repos/a/b");
        assert_eq!(lines[0]["outcome"], "denied");
        assert_eq!(lines[0]["grant"], serde_json::Value::Null);
        assert_eq!(lines[1]["action"], "secret.set");
        assert!(lines[1]["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
