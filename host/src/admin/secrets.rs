//! The write-only secrets API (role `admin`): named vault secrets that connectors refer
//! to as `{"vault": "NAME"}`. Listings give names, when each was set and what uses it;
//! no answer ever carries a value. Setting a secret the config in force uses puts it in
//! force at once (a reload that resolves secrets anew).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use http::StatusCode;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::require_admin;
use crate::config::edit;
use crate::configure::{self, ConfigFile, Trigger};
use crate::error::ApiError;
use crate::identity::Caller;
use crate::openapi::ErrorBody;
use crate::state::{App, Snapshot};

/// Where each vault secret is used: the saved config and the config in force (they
/// differ while a broken file waits to be fixed).
fn used_by(app: &App, snapshot: &Snapshot) -> Vec<(String, String)> {
    let mut uses = BTreeSet::new();
    if let Ok(current) = ConfigFile::of(app).read()
        && let Ok(v) = crate::config::parse_hujson(&current.text)
    {
        uses.extend(edit::vault_references(&v));
    }
    for c in snapshot.config.connectors.values() {
        for (field, secret, _) in c.auth.secrets() {
            if let crate::config::SecretRef::Vault(name) = secret {
                uses.insert((
                    name.clone(),
                    format!("connectors.servers.{}.auth.{field}", c.id),
                ));
            }
        }
    }
    uses.into_iter().collect()
}

fn paths_of<'a>(uses: &'a [(String, String)], name: &'a str) -> Vec<&'a str> {
    uses.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, p)| p.as_str())
        .collect()
}

fn vault_error(e: crate::vault::VaultError) -> ApiError {
    tracing::error!("vault: {e}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "vault_error",
        format!("the vault could not be used: {e}"),
    )
}

/// `GET /api/secrets`.
#[utoipa::path(get, path = "/api/secrets", tag = "secrets",
    responses((status = 200, description = "Names, when each was set and what uses it; never values", body = Object)))]
pub async fn list(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&snapshot, &caller)?;
    let uses = used_by(&app, &snapshot);
    let vault = app.vault.clone();
    let names = tokio::task::spawn_blocking(move || vault.secret_names())
        .await
        .map_err(|e| vault_error(crate::vault::VaultError::Store(e.to_string())))?
        .map_err(vault_error)?;
    let listed: BTreeSet<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    let secrets: Vec<Value> = names
        .iter()
        .map(|(name, at)| json!({"name": name, "set_at": at, "used_by": paths_of(&uses, name)}))
        .collect();
    // References to secrets the vault lacks: what to set next.
    let missing: BTreeSet<&str> = uses
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !listed.contains(n))
        .collect();
    Ok(Json(json!({"secrets": secrets, "missing": missing})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetSecret {
    value: String,
}

/// `PUT /api/secrets/<name>` with `{"value": "..."}`: sets (or rotates) a secret.
#[utoipa::path(put, path = "/api/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name")),
    request_body(content = Object, description = "`{\"value\": \"...\"}`"),
    responses((status = 200, description = "`{\"name\": ..., \"used_by\": [...], \"applied\": ...}`; the value is never returned", body = Object)))]
pub async fn put(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(name): Path<String>,
    headers: http::HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&snapshot, &caller)?;
    if !edit::valid_secret_name(&name) {
        return Err(ApiError::bad_request(format!(
            "\"{name}\" is not a valid secret name: 1 to 128 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )));
    }
    let body: SetSecret =
        super::config::body(&headers, &bytes, r#"{"value": "..."} (and nothing else)"#)?;
    let value = Zeroizing::new(body.value);
    if value.is_empty() {
        return Err(ApiError::bad_request(
            "the secret is empty; to remove it, DELETE /api/secrets/NAME",
        ));
    }
    let vault = app.vault.clone();
    let key = name.clone();
    tokio::task::spawn_blocking(move || vault.set_secret(&key, value.as_bytes()))
        .await
        .map_err(|e| vault_error(crate::vault::VaultError::Store(e.to_string())))?
        .map_err(vault_error)?;
    tracing::info!(secret = %name, by = %caller.login, "vault secret set through the admin API");
    app.audit
        .admin(&caller, "secret.set", std::slice::from_ref(&name));
    let uses = used_by(&app, &snapshot);
    let used: Vec<&str> = paths_of(&uses, &name);
    // Connectors resolve secrets when a config is built: rebuild so they use this one.
    let applied = if used.is_empty() {
        json!(null)
    } else {
        match configure::reload(&app, Trigger::Always).await {
            Ok(_) => json!(true),
            Err(e) => json!(format!(
                "stored, but the config could not be rebuilt with it: {e}"
            )),
        }
    };
    Ok(Json(
        json!({"name": name, "used_by": used, "applied": applied}),
    ))
}

/// `DELETE /api/secrets/<name>`: refused while a connector uses it.
#[utoipa::path(delete, path = "/api/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name")),
    responses(
        (status = 200, description = "Removed", body = Object),
        (status = 404, description = "No such secret", body = ErrorBody),
        (status = 409, description = "`secret_in_use`: the fields that use it are listed", body = ErrorBody),
    ))]
pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&snapshot, &caller)?;
    let uses = used_by(&app, &snapshot);
    let used = paths_of(&uses, &name);
    if !used.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "secret_in_use",
            format!(
                "secret \"{name}\" is in use by {}; change those fields first",
                used.join(", ")
            ),
        )
        .with("used_by", used));
    }
    let vault = app.vault.clone();
    let key = name.clone();
    let existed = tokio::task::spawn_blocking(move || vault.remove_secret(&key))
        .await
        .map_err(|e| vault_error(crate::vault::VaultError::Store(e.to_string())))?
        .map_err(vault_error)?;
    if !existed {
        return Err(ApiError::not_found(format!(
            "the vault has no secret named \"{name}\"; GET /api/secrets lists them"
        )));
    }
    tracing::info!(secret = %name, by = %caller.login, "vault secret removed through the admin API");
    app.audit
        .admin(&caller, "secret.delete", std::slice::from_ref(&name));
    Ok(Json(json!({"removed": name})))
}
