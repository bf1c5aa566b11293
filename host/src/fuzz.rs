//! Fuzz targets: the parsers an attacker (or a careless operator) reaches, each a
//! `fn(&[u8])` that must never panic, with its seed corpus in `host/fuzz/<target>/`.
//!
//! The driver below mutates the corpus at random (bit flips, byte and token insertions,
//! deletions, splices of two inputs) and runs every target for a bounded time as part of
//! the unit tests: `PORTCULLIS_FUZZ_SECS` per target, 2 by default. A longer run:
//!
//! ```sh
//! PORTCULLIS_FUZZ_SECS=600 cargo test -p portcullis --lib fuzz -- --nocapture
//! ```
//!
//! A panicking input is written to `target/fuzz-crashes/<target>-<hash>` and the test
//! fails naming it; add it to the corpus once fixed, so it stays fixed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{self, Fixture};

/// Config text through the whole validator (parse, duplicate keys, every section,
/// grants compiled), then an admin-API edit of the operator's text with it.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = Fixture {
        permissive: true,
        ..Default::default()
    };
    let _ = crate::configure::check(text, &env);
    if let Ok(value) = config::parse_hujson(text) {
        let masked = config::edit::mask(&value);
        let _ = config::edit::apply(text, &masked);
    }
    let _ = config::duplicate_keys(text);
}

/// A grant pattern and a resource it is asked about (split at the first newline).
pub fn grant_pattern(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (pattern, resource) = text.split_once('\n').unwrap_or((&text, "a/proxy/x"));
    let config = serde_json::json!({
        "connectors": {"servers": {"a": {"protocol": "http", "url": "https://a.example.com"}}},
        "grants": [{"src": ["*"], "app": {"tailscale.com/cap/aperture": [{"connectors": [pattern]}]}}],
    })
    .to_string();
    let (Some(c), mut diags) = config::load_permissive(&config) else {
        return;
    };
    let policy = crate::policy::Policy::compile(&c, &mut diags);
    let caller = crate::policy::Caller::loopback();
    let mut parts = resource.splitn(3, '/');
    let (conn, cat, res) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let access = policy.access(&caller);
    let _ = access.allows(conn, cat, res);
    let _ = access.any_on(conn);
}

/// A proxied request path: when accepted, it must stay accepted and unchanged when
/// normalised again, and never climb out of the connector.
pub fn request_path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(clean) = crate::outbound::path::normalize_path(&text) {
        for p in [&clean.forward, &clean.grant] {
            assert!(
                !p.split(['/', '\\']).any(|s| s == ".." || s == "."),
                "escaped: {text:?} -> {p:?}"
            );
        }
        let again = crate::outbound::path::normalize_path(&clean.forward).unwrap_or_else(|e| {
            panic!(
                "{:?} was accepted once, then refused: {}",
                clean.forward, e.message
            )
        });
        assert_eq!(again.forward, clean.forward, "not idempotent for {text:?}");
        assert_eq!(again.grant, clean.grant, "not idempotent for {text:?}");
    }
}

/// A token endpoint's answer, read as the host reads it, and whatever text of it the
/// host might report.
pub fn token_response(data: &[u8]) {
    use crate::plugins::types::TokenGrant;
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        let grants = [
            TokenGrant {
                name: "default".into(),
                access_token: "/access_token".into(),
                refresh_token: Some("/refresh_token".into()),
                expires_in: Some("/expires_in".into()),
                scope: Some("/scope".into()),
                required: false,
            },
            TokenGrant {
                name: "user".into(),
                access_token: "/authed_user/access_token".into(),
                refresh_token: None,
                expires_in: Some("/authed_user/expires_in".into()),
                scope: None,
                required: false,
            },
        ];
        let _ = crate::plugins::extract_grants(&json, &grants);
        let mut copy = json.clone();
        crate::plugins::redact_tokens(&mut copy, &grants);
    }
    let text = String::from_utf8_lossy(data);
    let _ = crate::redact::text(&text);
    let _ = crate::redact::known(&text, Some("id"), &["s3cret"]);
}

/// A tailscaled whois answer.
pub fn whois_answer(data: &[u8]) {
    if let Ok(w) = serde_json::from_slice::<crate::identity::WhoIs>(data) {
        let _ = crate::identity::caller_from_whois(w);
    }
}

/// A JSON-RPC message a client sends to `/v1/mcp`, and the names and URIs in it the
/// gateway splits and matches.
pub fn mcp_message(data: &[u8]) {
    let _ = serde_json::from_slice::<rmcp::model::ClientJsonRpcMessage>(data);
    let text = String::from_utf8_lossy(data);
    let one = crate::mcp::Scope::One("demo".into());
    for kind in [
        crate::mcp::Kind::Tool,
        crate::mcp::Kind::Prompt,
        crate::mcp::Kind::Resource,
        crate::mcp::Kind::Template,
    ] {
        let _ = crate::mcp::split(kind, &text);
        let _ = crate::mcp::split(kind, &one.inbound(kind, &text));
        let _ = one.outbound(kind, &text);
    }
    let (template, uri) = text.split_once('\n').unwrap_or((&text, "file:///x"));
    if let Some(t) = crate::mcp::template::UriTemplate::parse(template) {
        let _ = t.matches(uri);
    }
}

/// A fuzz target: any input, never a panic.
pub type Target = fn(&[u8]);

/// Every target, by the folder its corpus is in.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config_text),
    ("grant_pattern", grant_pattern),
    ("request_path", request_path),
    ("token_response", token_response),
    ("whois", whois_answer),
    ("mcp_message", mcp_message),
];

/// Fragments worth inserting: what parsers treat specially.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"/*",
    b"*/",
    b"//",
    b",",
    b":",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b"%2e%2e",
    b"%2F",
    b"%",
    b"..",
    b"/",
    b"**",
    b"*",
    b"{a,b}",
    b"[!",
    b"?",
    b"\n",
    b"\r\n",
    b"\t",
    b"\xff",
    b"\xc3\x28",
    b"\xe2\x80\xae",
    b"tailscale.com/cap/aperture",
    b"\"jsonrpc\":\"2.0\"",
    b"\"method\":\"tools/call\"",
    b"\"id\":",
    b"{+var}",
    b"{?q*}",
    b"{/p*}",
];

/// A small, fast PRNG (xorshift64*): fuzzing needs variety, not cryptography.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// One random change to `input` (or a splice with `other`).
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let at = rng.below(input.len() + 1);
    match rng.below(6) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 => {
            let t = TOKENS[rng.below(TOKENS.len())];
            input.splice(at..at, t.iter().copied());
        }
        2 if !input.is_empty() => {
            let len = 1 + rng.below(8.min(input.len() - at.min(input.len() - 1)));
            let start = at.min(input.len() - 1);
            input.drain(start..(start + len).min(input.len()));
        }
        3 if !other.is_empty() => {
            let from = rng.below(other.len());
            let len = rng.below(other.len() - from + 1);
            input.splice(at..at, other[from..from + len].iter().copied());
        }
        4 => {
            // Repeat a chunk: deep nesting, long runs.
            let len = rng.below(input.len().min(16) + 1);
            let start = at.saturating_sub(len);
            let chunk: Vec<u8> = input[start..start + len.min(input.len() - start)].to_vec();
            for _ in 0..rng.below(32) {
                input.splice(at..at, chunk.iter().copied());
            }
        }
        _ => input.insert(at, (rng.next() & 0xff) as u8),
    }
    input.truncate(64 * 1024);
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

/// Runs `target` on its corpus, then on mutations of it for `budget`; returns how many
/// inputs ran, or the first input that panicked.
pub fn run(name: &str, target: Target, budget: Duration, seed: u64) -> Result<u64, Vec<u8>> {
    let seeds = corpus(name);
    let call = |input: &[u8]| catch_unwind(AssertUnwindSafe(|| target(input))).is_ok();
    for s in &seeds {
        if !call(s) {
            return Err(s.clone());
        }
    }
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut runs = seeds.len() as u64;
    while started.elapsed() < budget {
        let mut input = seeds[rng.below(seeds.len())].clone();
        let other = &seeds[rng.below(seeds.len())];
        for _ in 0..1 + rng.below(6) {
            mutate(&mut rng, &mut input, other);
        }
        if !call(&input) {
            return Err(input);
        }
        runs += 1;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local!(static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });

    /// Panics are the finding: silence the hook for fuzzing threads only, so other
    /// tests running beside these still report theirs.
    fn quiet_panics() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let inner = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(std::cell::Cell::get) {
                    inner(info);
                }
            }));
        });
    }

    #[test]
    fn the_driver_finds_a_planted_panic_and_returns_its_input() {
        fn planted(data: &[u8]) {
            assert!(!data.windows(2).any(|w| w == b"%2"), "planted");
        }
        quiet_panics();
        QUIET.with(|q| q.set(true));
        let found = run("no-such-corpus", planted, Duration::from_secs(5), 7);
        QUIET.with(|q| q.set(false));
        let input = found.expect_err("a two-byte pattern is found within seconds");
        assert!(input.windows(2).any(|w| w == b"%2"));
    }

    #[test]
    fn fuzz_every_target_for_a_bounded_time() {
        let secs = std::env::var("PORTCULLIS_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        quiet_panics();
        QUIET.with(|q| q.set(true));
        let mut failures = Vec::new();
        for (name, target) in TARGETS {
            match run(name, *target, Duration::from_secs(secs), seed) {
                Ok(n) => eprintln!("fuzz {name}: {n} inputs, no panic (seed {seed})"),
                Err(input) => {
                    let dir =
                        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-crashes");
                    let _ = std::fs::create_dir_all(&dir);
                    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&input));
                    let file = dir.join(format!("{name}-{}", &digest[..16]));
                    let _ = std::fs::write(&file, &input);
                    failures.push(format!("{name}: {} (seed {seed})", file.display()));
                }
            }
        }
        QUIET.with(|q| q.set(false));
        assert!(failures.is_empty(), "inputs that panic: {failures:?}");
    }
}
