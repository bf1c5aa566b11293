//! Several replicas on one PostgreSQL vault (a real server from Debian's package), behind
//! a round-robin load balancer: any replica serves any user's connection, a refresh at
//! expiry happens once among all of them, `migrate-store` moves a redb vault over with
//! every token usable, `rotate-key` re-seals the database, and losing the database fails
//! closed while cached tokens keep serving.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_e2e::balancer::Balancer;
use portcullis_e2e::oidc::{CC_SECRET, Oidc};
use portcullis_e2e::postgres::{PASSWORD, Postgres};
use portcullis_e2e::upstream::Upstream;
use portcullis_e2e::{Host, HostOptions, binary, client, client_from};
use serde_json::{Value, json};

use crate::client_credentials::cc_connector;
use crate::per_user::{
    ALICE, client_for, notes_connector, start_connect, status, tailnet_config, users,
};
use crate::{admin_everything, loopback_config};

/// The master key every replica shares (32 bytes, base64).
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn on_postgres(url: &str) -> HostOptions {
    HostOptions {
        env: vec![
            ("PORTCULLIS_DATABASE_URL".into(), url.into()),
            ("PORTCULLIS_MASTER_KEY".into(), KEY.into()),
        ],
        ..Default::default()
    }
}

/// The bearer token the echo upstream received for `from`'s request to `url`.
async fn token_at(url: &str, from: &str) -> String {
    let resp = client_from(from).get(url).send().await.expect("proxy");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{url}: {text}");
    let v: Value = serde_json::from_str(&text).expect("echo");
    v["headers"]["authorization"][0]
        .as_str()
        .expect("authorization injected")
        .trim_start_matches("Bearer ")
        .to_owned()
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

/// Three replicas on one database behind a balancer, with a per-user `notes` connector
/// whose refresh tokens rotate (a second refresh with a spent one fails), and Alice
/// connected: she starts on replica 0, and the provider sends her browser back through
/// the balancer, which hands the callback to replica 1.
struct Replicated {
    _pg: Postgres,
    oidc: Oidc,
    up: Upstream,
    _whois: portcullis_e2e::whois::Whois,
    lb: Balancer,
    hosts: Vec<Host>,
    /// When Alice's first token was issued.
    connected: Instant,
}

async fn replicated_notes(access_ttl: u64, client_id: &str) -> Replicated {
    let pg = Postgres::start();
    let db = pg.url(&pg.database());
    let oidc = Oidc::start_with(access_ttl, true);
    let up = Upstream::start().await;
    let whois = users().await;
    let lb = Balancer::start(3).await;
    let mut config: Value = serde_json::from_str(&tailnet_config(
        &whois.socket,
        json!({"notes": notes_connector(&oidc, &up, client_id)}),
    ))
    .expect("config");
    config["public_url"] = json!(lb.url(""));
    let config = config.to_string();
    let hosts: Vec<Host> = (0..3)
        .map(|_| Host::start_with(&config, on_postgres(&db)))
        .collect();
    for (i, h) in hosts.iter().enumerate() {
        lb.set_backend(i, h.addr);
    }
    oidc.add_client(json!({
        "client_id": client_id,
        "client_secret": "notes-secret-0123456789",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [lb.url("/aperture/auth/notes/callback")],
        "token_endpoint_auth_method": "client_secret_basic",
        "scope": "openid offline_access read:data",
    }))
    .await;
    let auth_url = start_connect(&hosts[0], ALICE, "notes").await;
    let back = oidc.authorize(&auth_url, "alice").await;
    assert!(
        back.starts_with(&lb.url("/aperture/auth/notes/callback")),
        "{back}"
    );
    let on_replica_1 = back.replace(&lb.addr.to_string(), &hosts[1].addr.to_string());
    let page = client_from(ALICE)
        .get(&on_replica_1)
        .send()
        .await
        .expect("callback");
    let connected = Instant::now();
    assert_eq!(
        page.status(),
        200,
        "{}",
        page.text().await.unwrap_or_default()
    );
    Replicated {
        _pg: pg,
        oidc,
        up,
        _whois: whois,
        lb,
        hosts,
        connected,
    }
}

/// Sends 300 requests for Alice through the balancer at once; every one must succeed.
async fn burst(lb: &Balancer) {
    let url = Arc::new(lb.url("/v1/connectors/notes/items"));
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { token_at(&url, ALICE).await }));
    }
    for t in tasks {
        t.await.expect("every request succeeds");
    }
}

/// The token every replica sends for Alice now: one, the same on all.
async fn shared_token(hosts: &[Host]) -> String {
    let mut seen = HashSet::new();
    for h in hosts {
        seen.insert(token_at(&h.url("/v1/connectors/notes/items"), ALICE).await);
    }
    assert_eq!(seen.len(), 1, "one connection, shared: {seen:?}");
    seen.into_iter().next().unwrap_or_default()
}

#[tokio::test]
async fn three_replicas_share_each_users_connection_and_refresh_it_once_at_expiry() {
    // (Bound whole: the database and the whois stand-in must outlive the test.)
    let notes = replicated_notes(3600, "notes-replicas").await;
    let (oidc, up, lb, hosts) = (&notes.oidc, &notes.up, &notes.lb, &notes.hosts);

    // Every replica serves her with the one token.
    for h in hosts {
        assert_eq!(status(h, ALICE, "notes").await, "Ready");
    }
    let first = shared_token(hosts).await;
    assert_eq!(oidc.grants_of("authorization_code").await, 1);

    // The token expires: the upstream refuses it from now on, so every replica that
    // sends it gets a 401 and must refresh. 300 requests through the balancer at once.
    oidc.reset().await;
    up.counters.expiry.expire_seen();
    burst(lb).await;
    assert!(
        up.counters.expiry.rejected() > 0,
        "the expired token was refused first"
    );
    assert_eq!(
        oidc.grants_of("refresh_token").await,
        1,
        "one refresh among all replicas"
    );
    assert!(
        lb.served().iter().all(|&n| n >= 90),
        "the balancer spread the requests: {:?}",
        lb.served()
    );
    // Afterwards every replica uses the refreshed token, which the provider accepts.
    let now = shared_token(hosts).await;
    assert_ne!(now, first);
    assert!(oidc.introspect(&now).await.0);

    // Disconnecting on replica 2 ends the connection on the others at once.
    let resp = client_from(ALICE)
        .delete(hosts[2].url("/api/connectors/notes/connection"))
        .send()
        .await
        .expect("disconnect");
    assert_eq!(resp.status(), 200);
    for h in &hosts[..2] {
        eventually("the disconnect reached every replica", async || {
            status(h, ALICE, "notes").await == "Needs auth"
        })
        .await;
    }
}

#[tokio::test]
async fn three_replicas_refresh_once_when_the_token_falls_due() {
    let notes = replicated_notes(15, "notes-due").await;
    let (oidc, lb, hosts, connected) = (&notes.oidc, &notes.lb, &notes.hosts, notes.connected);
    let first = shared_token(hosts).await;
    oidc.reset().await;
    // Due 12 s after it was issued (a fifth of its life early): every replica's
    // background refresher and the 300 requests arrive at about the same moment. The
    // next refresh is due 12 s later, well after the checks below.
    tokio::time::sleep(Duration::from_millis(12_050).saturating_sub(connected.elapsed())).await;
    burst(lb).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        oidc.grants_of("refresh_token").await,
        1,
        "one refresh among all replicas"
    );
    let now = shared_token(hosts).await;
    assert_ne!(now, first);
    assert!(oidc.introspect(&now).await.0);
}

#[tokio::test]
async fn migrate_store_moves_a_redb_vault_with_every_token_usable_and_rotate_key_reseals_it() {
    let pg = Postgres::start();
    let dbname = pg.database();
    let db = pg.url(&dbname);
    let oidc = Oidc::start(3600);
    let up = Upstream::start().await;
    let data = tempfile::tempdir().expect("data");
    // The client secret is a vault secret, set with the CLI before the first start.
    let mut set = std::process::Command::new(binary())
        .args(["secret", "set", "cc-secret", "--data-dir"])
        .arg(data.path())
        .env_remove("PORTCULLIS_MASTER_KEY")
        .env_remove("PORTCULLIS_DATABASE_URL")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("secret set");
    {
        use std::io::Write as _;
        let mut stdin = set.stdin.take().expect("stdin");
        stdin.write_all(CC_SECRET.as_bytes()).expect("write");
    }
    assert!(set.wait().expect("wait").success());
    // A client-credentials connector whose secret is in the vault, and a per-user one.
    let mut connectors = cc_connector(&up, &oidc.token_url(), CC_SECRET);
    connectors["analytics"]["auth"]["client_secret"] = json!({"vault": "cc-secret"});
    connectors["notes"] = notes_connector(&oidc, &up, "notes-migrate");
    let config = loopback_config(connectors, admin_everything());
    let token_via =
        async |host: &Host| token_at(&host.url("/v1/connectors/analytics/x"), "127.0.0.1").await;
    let user_token_via =
        async |host: &Host| token_at(&host.url("/v1/connectors/notes/items"), "127.0.0.1").await;
    let cc_requests = async || oidc.grants_of("client_credentials").await;

    let on_redb = HostOptions {
        data_dir: Some(data.path().to_path_buf()),
        env_remove: vec![
            "PORTCULLIS_MASTER_KEY".into(),
            "PORTCULLIS_DATABASE_URL".into(),
        ],
        ..Default::default()
    };
    let mut host = Host::start_with(&config, on_redb);
    let token = token_via(&host).await;
    client_for(&oidc, &host, "notes-migrate", "notes").await;
    let auth_url = start_connect(&host, "127.0.0.1", "notes").await;
    let back = oidc.authorize(&auth_url, "alice").await;
    let page = client_from("127.0.0.1")
        .get(&back)
        .send()
        .await
        .expect("callback");
    assert_eq!(page.status(), 200);
    let user_token = user_token_via(&host).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.stop();

    let migrate = |url: &str| {
        std::process::Command::new(binary())
            .args(["migrate-store", "--data-dir"])
            .arg(data.path())
            .args(["--database-url", url])
            .env_remove("PORTCULLIS_MASTER_KEY")
            .output()
            .expect("migrate-store")
    };
    let out = migrate(&db);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    // The secret and when it was set, the client-credentials token, the user's tokens.
    assert!(said.contains("Copied 4 record(s)"), "{said}");
    assert!(
        !said.contains(PASSWORD),
        "the database password is never shown: {said}"
    );
    assert_eq!(
        pg.psql(
            &dbname,
            "SELECT count(*) FROM portcullis_records WHERE tbl <> 'meta'"
        ),
        "4"
    );
    // A second copy into a database that holds records is refused.
    let again = migrate(&db);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds records"));

    // The same data directory (its key file) on PostgreSQL: the sealed tokens are used
    // as they were, the vault secret resolves, no new token request of either kind.
    let on_pg = |key: Option<&str>| HostOptions {
        data_dir: Some(data.path().to_path_buf()),
        env: [("PORTCULLIS_DATABASE_URL".to_owned(), db.clone())]
            .into_iter()
            .chain(key.map(|k| ("PORTCULLIS_MASTER_KEY".to_owned(), k.to_owned())))
            .collect(),
        env_remove: if key.is_none() {
            vec!["PORTCULLIS_MASTER_KEY".into()]
        } else {
            vec![]
        },
        ..Default::default()
    };
    let mut host = Host::start_with(&config, on_pg(None));
    assert_eq!(token_via(&host).await, token);
    assert_eq!(user_token_via(&host).await, user_token);
    assert_eq!(cc_requests().await, 1);
    assert_eq!(oidc.grants_of("authorization_code").await, 1);
    assert_eq!(oidc.grants_of("refresh_token").await, 0);
    assert!(
        !host.logs().contains(PASSWORD),
        "the database password is never logged"
    );
    host.stop();

    // Rotation re-seals the database's records under a new key.
    let old_key = std::fs::read_to_string(data.path().join("master.key")).expect("key");
    let out = std::process::Command::new(binary())
        .args(["rotate-key", "--data-dir"])
        .arg(data.path())
        .args(["--database-url", &db])
        .env_remove("PORTCULLIS_MASTER_KEY")
        .output()
        .expect("rotate-key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut host = Host::start_with(&config, on_pg(None));
    assert_eq!(token_via(&host).await, token);
    assert_eq!(user_token_via(&host).await, user_token);
    assert_eq!(cc_requests().await, 1);
    host.stop();
    let err = Host::try_start(&config, on_pg(Some(old_key.trim())))
        .err()
        .expect("the old key no longer opens the vault");
    assert!(err.contains("does not open this vault"), "{err}");

    // A sealed value copied to another row does not open there: the host fetches a
    // new token rather than use it.
    pg.psql(
        &dbname,
        "UPDATE portcullis_records SET value = (SELECT value FROM portcullis_records WHERE tbl = 'secrets' AND key = 'cc-secret') WHERE tbl = 'client_tokens'",
    );
    let host = Host::start_with(&config, on_pg(None));
    assert_ne!(token_via(&host).await, token);
    assert_eq!(cc_requests().await, 2);
}

/// A replica waiting for a lock another replica holds (a token refresh running there)
/// keeps none of its own lock slots while it waits: its locks on other keys are taken
/// meanwhile, even with more waiters than slots, and every waiter gets the lock once the
/// holder lets go.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_another_replicas_lock_holds_up_no_other_lock() {
    use portcullis::vault::{DatabaseUrl, Location, MasterKey, Table, Vault};
    let pg = Postgres::start();
    let url = DatabaseUrl::parse(&pg.url(&pg.database())).expect("the test database's URL");
    let key = MasterKey::generate();
    let open = || Arc::new(Vault::open(&Location::Postgres(url.clone()), &key).expect("opens"));
    let (here, there) = (open(), open());
    let held = there
        .lock(Table::UserTokens, "alice/notes")
        .await
        .expect("locks")
        .expect("a shared store locks across replicas");
    // More waiters than a replica may hold locks at once (three).
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let here = here.clone();
            tokio::spawn(async move {
                here.lock(Table::UserTokens, "alice/notes")
                    .await
                    .map(|held| held.is_some())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "nobody gets a lock another replica holds"
    );
    let other = tokio::time::timeout(
        Duration::from_secs(10),
        here.lock(Table::UserTokens, "bob/notes"),
    )
    .await
    .expect("a lock on another key is not held up by the waiters")
    .expect("locks");
    assert!(other.is_some());
    drop(other);
    drop(held);
    for w in waiters {
        let got = tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("each waiter gets the lock once it is let go")
            .expect("the waiter did not panic")
            .expect("the lock is taken, not failed");
        assert!(got);
    }
}

#[tokio::test]
async fn losing_the_database_fails_closed_and_keeps_serving_cached_tokens() {
    let mut pg = Postgres::start();
    let db = pg.url(&pg.database());
    let oidc = Oidc::start(3600);
    let up = Upstream::start().await;
    let config = loopback_config(
        cc_connector(&up, &oidc.token_url(), CC_SECRET),
        admin_everything(),
    );
    let host = Host::start_with(&config, on_postgres(&db));
    let url = host.url("/v1/connectors/analytics/x");
    let token = token_at(&url, "127.0.0.1").await;
    assert_eq!(
        client()
            .get(host.url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );

    pg.stop();
    let health = client()
        .get(host.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 503);
    let v: Value = health.json().await.expect("json");
    assert_eq!(v["error"]["code"], "store_unavailable", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains(PASSWORD), "{message}");
    // Probes are unauthenticated: the answer names no database; the log says why.
    let name = db.rsplit('/').next().unwrap_or_default();
    assert!(
        !name.is_empty() && !message.contains(name) && !message.contains('@'),
        "{message}"
    );
    host.wait_for_log("not ready: ").await;
    // The token held in memory still serves.
    assert_eq!(token_at(&url, "127.0.0.1").await, token);
    // A secret cannot be stored: a JSON error, nothing half-done.
    let resp = client()
        .put(host.url("/api/secrets/new-secret"))
        .json(&json!({"value": "s3cret-value"}))
        .send()
        .await
        .expect("put secret");
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let body = resp.text().await.unwrap_or_default();
    assert!(serde_json::from_str::<Value>(&body).is_ok(), "{body}");
    assert!(
        !body.contains(PASSWORD) && !body.contains("s3cret-value"),
        "{body}"
    );

    // The database back: ready again, and writes work.
    pg.run();
    eventually("ready once the database answers", async || {
        client()
            .get(host.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let resp = client()
        .put(host.url("/api/secrets/new-secret"))
        .json(&json!({"value": "s3cret-value"}))
        .send()
        .await
        .expect("put secret");
    assert!(resp.status().is_success(), "{}", resp.status());
    // One line for the outage, however often it was probed, and one for its end.
    host.wait_for_log("the store answers again").await;
    assert_eq!(
        host.logs().matches("not ready: ").count(),
        1,
        "{}",
        host.logs()
    );
    assert!(!host.logs().contains(PASSWORD));
}

#[tokio::test]
async fn a_config_saved_on_one_replica_is_served_by_all_and_a_rolling_restart_fails_no_request() {
    let pg = Postgres::start();
    let db = pg.url(&pg.database());
    let up = Upstream::start().await;
    let lb = Balancer::start(3).await;
    // No --config: the replicas read the config saved in the database (the embedded
    // default until the first save).
    let replica = || {
        Host::start_with(
            "",
            HostOptions {
                saved_config: true,
                ..on_postgres(&db)
            },
        )
    };
    let mut hosts: Vec<Host> = (0..3).map(|_| replica()).collect();
    for (i, h) in hosts.iter().enumerate() {
        lb.set_backend(i, h.addr);
    }
    let config_of = async |h: &Host| -> Value {
        client()
            .get(h.url("/api/config"))
            .send()
            .await
            .expect("get config")
            .json()
            .await
            .expect("json")
    };
    let before = config_of(&hosts[0]).await;
    assert_eq!(before["saved"], false, "{before}");
    let old_hash = before["hash"].as_str().expect("hash").to_owned();

    // Saved through replica 0's admin API: every replica serves it.
    let config: Value = serde_json::from_str(&loopback_config(
        json!({"echo": {"protocol": "http", "url": up.url(), "description": "Echo"}}),
        admin_everything(),
    ))
    .expect("config");
    let save = async |h: &Host| {
        client()
            .put(h.url("/api/config"))
            .json(&json!({"hash": old_hash, "config": config}))
            .send()
            .await
            .expect("save")
    };
    let saved = save(&hosts[0]).await;
    assert_eq!(
        saved.status(),
        200,
        "{}",
        saved.text().await.unwrap_or_default()
    );
    let new_hash = config_of(&hosts[0]).await["hash"].clone();
    for h in &hosts {
        eventually("every replica applied the saved config", async || {
            portcullis_e2e::status_of(&h.url("/v1/connectors/echo/x")).await == 200
        })
        .await;
        let seen = config_of(h).await;
        assert_eq!(seen["hash"], new_hash, "{seen}");
        assert_eq!(seen["in_force"], true, "{seen}");
    }
    // A save made against the old version on another replica is refused, not merged.
    assert_eq!(save(&hosts[1]).await.status(), 409);

    // A rolling restart under load: each replica in turn is drained, stopped, started
    // again (it reads the config from the database) and put back. Not one request fails.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = Arc::new(lb.url("/v1/connectors/echo/x"));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, url) = (stop.clone(), url.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            // Bounded: at most 20,000 requests per worker, each with a timeout.
            for _ in 0..20_000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let sent = client()
                    .get(url.as_str())
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    for (i, host) in hosts.iter_mut().enumerate() {
        lb.set_in_rotation(i, false);
        tokio::time::sleep(Duration::from_millis(200)).await;
        host.stop();
        *host = replica();
        lb.set_backend(i, host.addr);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for l in load {
        let (o, f) = l.await.expect("load worker");
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 100, "the load ran: {ok}");
    for h in &hosts {
        assert_eq!(config_of(h).await["hash"], new_hash);
    }
}

/// One JSON-RPC message to `/v1/mcp` of `host` as `from`, in `session`; the answer to
/// it (from JSON or from the event stream it came on) and the session header.
async fn mcp_rpc(
    host: &Host,
    from: &str,
    session: Option<&str>,
    body: Value,
) -> (u16, Option<String>, Option<Value>) {
    let mut req = client_from(from)
        .post(host.url("/v1/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(20));
    if let Some(s) = session {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-06-18");
    }
    let resp = req.body(body.to_string()).send().await.expect("mcp post");
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.unwrap_or_default();
    let answer = serde_json::from_str::<Value>(&text).ok().or_else(|| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id") == body.get("id"))
    });
    (status, id, answer)
}

/// Opens an MCP session on `host` as the SDKs do, and returns its id.
async fn open_session(host: &Host, from: &str) -> String {
    let (status, session, _) = mcp_rpc(
        host,
        from,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "replica-test", "version": "1"}}}),
    )
    .await;
    assert_eq!(status, 200);
    let session = session.expect("a session id");
    let (status, _, _) = mcp_rpc(
        host,
        from,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);
    session
}

/// Ends MCP session `session` on `host` (DELETE), as `from`.
async fn end_session(host: &Host, from: &str, session: &str) -> reqwest::StatusCode {
    client_from(from)
        .delete(host.url("/v1/mcp"))
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .expect("delete")
        .status()
}

fn tool_names(answer: &Option<Value>) -> Vec<String> {
    answer
        .as_ref()
        .and_then(|a| a["result"]["tools"].as_array())
        .map(|t| {
            t.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_mcp_session_moves_between_replicas_keeps_its_owner_and_hears_list_changed() {
    use portcullis_e2e::mcp_server::{Expect, McpServer};
    let pg = Postgres::start();
    let db = pg.url(&pg.database());
    let up = McpServer::start(Expect::Nothing).await;
    let whois = users().await;
    let config = tailnet_config(
        &whois.socket,
        json!({"notes": {"protocol": "mcp", "url": up.url()}}),
    );
    let hosts: Vec<Host> = (0..3)
        .map(|_| Host::start_with(&config, on_postgres(&db)))
        .collect();
    let (a, b, c) = (&hosts[0], &hosts[1], &hosts[2]);

    // Opened on replica A.
    let session = open_session(a, ALICE).await;

    // Used on replica B, which never saw it: no new handshake from the client.
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    eventually(
        "replica B serves the session with the upstream's tools",
        async || {
            let (status, _, answer) = mcp_rpc(b, ALICE, Some(&session), list.clone()).await;
            status == 200 && tool_names(&answer).contains(&"notes_echo".to_owned())
        },
    )
    .await;
    // Not Bob's to use, on any replica.
    for h in [a, b, c] {
        let (status, _, _) = mcp_rpc(h, crate::per_user::BOB, Some(&session), list.clone()).await;
        assert_eq!(status, 404, "another caller's session is unknown to them");
    }

    // Its event stream on replica C hears list_changed after a call on replica B adds a
    // tool upstream.
    let mut stream = client_from(ALICE)
        .get(c.url("/v1/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    let (status, _, answer) = mcp_rpc(
        b,
        ALICE,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "notes_add_tool", "arguments": {"name": "fresh"}}}),
    )
    .await;
    assert_eq!(status, 200, "{answer:?}");
    let heard = tokio::time::timeout(Duration::from_secs(15), async {
        let mut seen = String::new();
        while let Ok(Some(chunk)) = stream.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("notifications/tools/list_changed") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        heard,
        Ok(true),
        "list_changed reached the stream on replica C"
    );
    let (status, _, answer) = mcp_rpc(
        a,
        ALICE,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
               "params": {"name": "notes_fresh", "arguments": {}}}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(answer.is_some_and(|a| a.to_string().contains("fresh ran")));

    // Ended on replica C, it is gone everywhere.
    let ended = end_session(c, ALICE, &session).await;
    assert!(ended.is_success(), "{ended}");
    for h in [a, b] {
        eventually(
            "the ended session is unknown on every replica",
            async || mcp_rpc(h, ALICE, Some(&session), list.clone()).await.0 == 404,
        )
        .await;
    }
}

#[tokio::test]
async fn a_replica_that_cannot_check_a_sessions_owner_refuses_it_until_the_database_returns() {
    use portcullis_e2e::mcp_server::{Expect, McpServer};
    let mut pg = Postgres::start();
    let db = pg.url(&pg.database());
    let up = McpServer::start(Expect::Nothing).await;
    let whois = users().await;
    let config = tailnet_config(
        &whois.socket,
        json!({"notes": {"protocol": "mcp", "url": up.url()}}),
    );
    let a = Host::start_with(&config, on_postgres(&db));
    let b = Host::start_with(&config, on_postgres(&db));
    let session = open_session(&a, ALICE).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});

    // B never saw the session and cannot read its owner: refused, never served
    // unchecked, to its owner and anyone else alike.
    pg.stop();
    for who in [ALICE, crate::per_user::BOB] {
        let (status, _, answer) = mcp_rpc(&b, who, Some(&session), list.clone()).await;
        assert_eq!(status, 503, "{who}: {answer:?}");
        assert_eq!(
            answer.as_ref().map(|a| a["error"]["code"].clone()),
            Some(json!("store_unavailable")),
            "{answer:?}"
        );
    }

    // The database back: the session moves to B for its owner only, and ending it on A
    // ends it on B (whose change feed was reconnected).
    pg.run();
    eventually(
        "replica B serves the session once it can check it",
        async || {
            let (status, _, answer) = mcp_rpc(&b, ALICE, Some(&session), list.clone()).await;
            status == 200 && tool_names(&answer).contains(&"notes_echo".to_owned())
        },
    )
    .await;
    let (status, _, _) = mcp_rpc(&b, crate::per_user::BOB, Some(&session), list.clone()).await;
    assert_eq!(status, 404);
    let ended = end_session(&a, ALICE, &session).await;
    assert!(ended.is_success(), "{ended}");
    eventually("the ended session is unknown on B", async || {
        mcp_rpc(&b, ALICE, Some(&session), list.clone()).await.0 == 404
    })
    .await;
}
