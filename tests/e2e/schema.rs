//! The config's JSON Schema: served at `/api/schema/config.json`, the same as the
//! checked-in `docs/config.schema.json` (so a change to the config types shows up in
//! review), and checked by an independent validator (Ajv, `tests/peers/schema/`): every
//! example, seed and the embedded default pass; the structural mistakes `validate`
//! reports are refused at the same path; what only `validate` can know is listed.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use portcullis_e2e::{Host, client, workspace};
use serde_json::{Value, json};

use crate::config::broken_corpus;
use crate::{admin_everything, loopback_config};

#[derive(Debug, serde::Deserialize)]
struct Verdict {
    name: String,
    valid: bool,
    errors: Vec<Problem>,
}

#[derive(Debug, serde::Deserialize)]
struct Problem {
    path: String,
    message: String,
}

fn schema() -> Value {
    portcullis::config::schema::config_schema()
}

/// Each document through Ajv (draft 2020-12, strict, formats checked).
fn check(schema: &Value, documents: &[(String, Value)]) -> Vec<Verdict> {
    let script = workspace().join("tests/peers/schema/validate.mjs");
    assert!(
        workspace().join("tests/peers/node_modules/ajv").exists(),
        "the npm test peers are not installed: run `npm ci --prefix tests/peers` (the README's test command does)"
    );
    let input = json!({
        "schema": schema,
        "documents": documents.iter().map(|(name, doc)| json!({"name": name, "document": doc})).collect::<Vec<_>>(),
    });
    let mut child = Command::new("node")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (the README's test command installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("validator");
    assert!(
        out.status.success(),
        "the validator failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("verdicts")
}

fn hujson(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read");
    portcullis::config::parse_hujson(&text)
        .unwrap_or_else(|e| panic!("{} is not HuJSON: {e}", path.display()))
}

fn files(dir: &str, ext: &str) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(workspace().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| {
            (
                format!(
                    "{dir}/{}",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ),
                hujson(&p),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test]
async fn the_served_schema_is_the_checked_in_one() {
    let host = Host::start(&loopback_config(json!({}), admin_everything()));
    let resp = client()
        .get(host.url("/api/schema/config.json"))
        .send()
        .await
        .expect("schema");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/schema+json",
        "editors recognise the media type"
    );
    let served: Value = resp.json().await.expect("json");
    assert_eq!(served, schema());
    assert_eq!(
        served["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );

    let file = workspace().join("docs/config.schema.json");
    let pretty = format!(
        "{}\n",
        serde_json::to_string_pretty(&served).expect("pretty")
    );
    // `PORTCULLIS_UPDATE_DOCS=1` rewrites the checked-in copy after a config change.
    if std::env::var_os("PORTCULLIS_UPDATE_DOCS").is_some() {
        std::fs::write(&file, &pretty).expect("write docs/config.schema.json");
    }
    let checked_in = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        checked_in == pretty,
        "docs/config.schema.json is not what the config types generate: run the e2e test `schema::the_served_schema_is_the_checked_in_one` with PORTCULLIS_UPDATE_DOCS=1 and review the difference"
    );
}

#[test]
fn every_example_seed_and_the_default_config_conform() {
    let mut documents = files("examples", "hujson");
    documents.extend(files("tests/fixtures/seeds", "json"));
    documents.push((
        "embedded default".into(),
        hujson(&workspace().join("host/src/config/default.hujson")),
    ));
    assert!(documents.len() >= 13, "{documents:?}");
    for verdict in check(&schema(), &documents) {
        assert!(
            verdict.valid,
            "{} does not conform: {:?}",
            verdict.name, verdict.errors
        );
    }
}

/// Mistakes a schema can see, each at the path `validate` names (the broken corpus of
/// the config tests, plus shapes editors should catch as the user types).
fn structural_mistakes() -> Vec<(&'static str, Value, &'static str)> {
    let server = |s: Value| json!({"connectors": {"servers": {"x": s}}});
    vec![
        (
            "a typo in an auth field",
            server(json!({"protocol": "http", "url": "https://a.example.com",
            "auth": {"type": "bearer_token", "secert": "s"}})),
            "connectors.servers.x.auth.secert",
        ),
        (
            "an unknown auth type",
            server(json!({"protocol": "http", "url": "https://a.example.com",
            "auth": {"type": "bearer"}})),
            "connectors.servers.x.auth.type",
        ),
        (
            "an unknown protocol",
            server(json!({"protocol": "grpc", "url": "https://a.example.com"})),
            "connectors.servers.x.protocol",
        ),
        (
            "a connector ID with a dash",
            json!({"connectors": {"servers": {"my-api": {"protocol": "http"}}}}),
            "connectors.servers.my-api",
        ),
        (
            "a reserved connector ID",
            json!({"connectors": {"servers": {"aperture": {"protocol": "http"}}}}),
            "connectors.servers.aperture",
        ),
        (
            "an unknown identity mode",
            json!({"identity": {"mode": "tailnet"}}),
            "identity.mode",
        ),
        (
            "a listen address without a port",
            json!({"listen": "127.0.0.1"}),
            "listen",
        ),
        ("a null listen address", json!({"listen": null}), "listen"),
        (
            "a grant without src",
            json!({"grants": [{"app": {}}]}),
            "grants[0].src",
        ),
        (
            "a grant whose app is null",
            json!({"grants": [{"src": ["*"], "app": null}]}),
            "grants[0].app",
        ),
        (
            "a secret reference naming two sources",
            server(json!({"protocol": "http", "url": "https://a.example.com",
            "auth": {"type": "bearer_token", "secret": {"env": "A", "vault": "b"}}})),
            "connectors.servers.x.auth.secret",
        ),
        (
            "a misspelt section key",
            json!({"egress": {"allow_loopbak": true}}),
            "egress.allow_loopbak",
        ),
    ]
}

/// Corpus entries only `validate` can judge: they need the environment, the vault, the
/// registry or the raw text.
const VALIDATE_ONLY: &[&str] = &[
    "an unset environment variable",
    "an unknown provider",
    "a vault secret that does not exist",
    "a duplicate key",
];

#[test]
fn the_schema_refuses_structural_mistakes_where_validate_does() {
    let mut cases: Vec<(String, Value, String)> = structural_mistakes()
        .into_iter()
        .map(|(what, doc, path)| (what.to_owned(), doc, path.to_owned()))
        .collect();
    let mut validate_only = Vec::new();
    for (what, text, path) in broken_corpus() {
        let doc = portcullis::config::parse_hujson(&text).expect("corpus parses");
        if VALIDATE_ONLY.contains(&what) {
            validate_only.push((what.to_owned(), doc));
        } else {
            cases.push((what.to_owned(), doc, path.to_owned()));
        }
    }
    assert_eq!(
        validate_only.len(),
        VALIDATE_ONLY.len(),
        "VALIDATE_ONLY names corpus entries"
    );

    let documents: Vec<(String, Value)> = cases
        .iter()
        .map(|(what, doc, _)| (what.clone(), doc.clone()))
        .collect();
    for (verdict, (what, _, path)) in check(&schema(), &documents).iter().zip(&cases) {
        assert!(!verdict.valid, "the schema accepts {what}");
        assert!(
            verdict.errors.iter().any(|e| e.path == *path),
            "the schema refuses {what} but not at {path}: {:?}",
            verdict.errors
        );
        assert!(
            verdict.errors.iter().all(|e| !e.message.is_empty()),
            "{what}"
        );
    }
    // Keep the list honest: these pass the schema, and validate refuses them (the
    // config tests' corpus check).
    for verdict in check(&schema(), &validate_only) {
        assert!(
            verdict.valid,
            "{} is refused by the schema now: move it out of VALIDATE_ONLY",
            verdict.name
        );
    }
}

#[test]
fn validate_reports_each_structural_mistake_at_the_same_path() {
    let dir = tempfile::tempdir().expect("tmp");
    for (what, doc, path) in structural_mistakes() {
        let file = dir.path().join("c.json");
        std::fs::write(&file, doc.to_string()).expect("write");
        let out = portcullis_e2e::portcullis()
            .arg("validate")
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .expect("validate");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!("{path}:")),
            "validate does not name {path} for {what}:\n{said}"
        );
    }
}
