//! The config admin API (role `admin`): read the config with secrets masked, save it
//! whole against the hash last read, check a config without saving it, change one
//! connector without touching the rest, and add a connector from a provider template.
//! Every save goes through [`crate::configure::save`].

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::{callback_path, host_url, require_admin};
use crate::config::{FromTemplate, edit};
use crate::configure::{self, ConfigFile, Edit, SaveError};
use crate::error::ApiError;
use crate::identity::Caller;
use crate::openapi::ErrorBody;
use crate::state::{App, Snapshot};

/// `GET /api/config`: the saved config, secrets masked, with the hash a save must name.
#[utoipa::path(get, path = "/api/config", tag = "config",
    responses((status = 200, description = "`{\"hash\": ..., \"config\": {...}, \"diagnostics\": [...]}`: secrets masked as `********`", body = Object)))]
pub async fn get(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&snapshot, &caller)?;
    let file = ConfigFile::of(&app);
    let current = file.read().map_err(internal)?;
    let parsed = crate::config::parse_hujson(&current.text)
        .map_err(|e| unreadable(&file, &e).with("hash", &current.hash))?;
    Ok(Json(json!({
        "hash": current.hash,
        "path": file.describe(),
        "saved": current.on_disk,
        "in_force": current.hash == app.config_hash(),
        "config": edit::mask(&parsed),
        "diagnostics": snapshot.diagnostics,
    })))
}

/// The body of `PUT /api/config` and `POST /api/config:validate`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Whole {
    #[serde(default)]
    hash: Option<String>,
    config: Value,
}

/// A JSON request body. It must say it is JSON: a browser sends another site's form
/// or `text/plain` POST without asking first, but never `application/json`, so a page
/// an admin has open cannot change the config. Duplicate keys are refused, as in a
/// config file. Messages never quote the body (it may hold a secret).
pub(super) fn body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    bytes: &Bytes,
    shape: &str,
) -> Result<T, ApiError> {
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send the body as JSON, with Content-Type: application/json: {shape}"),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request(format!("the body is not UTF-8 JSON: {shape}")))?;
    let dupes = crate::config::duplicate_keys(text);
    if !dupes.is_empty() {
        return Err(ApiError::bad_request(format!(
            "the body has duplicate keys; JSON keeps only the last, so send each once: {shape}"
        ))
        .with("diagnostics", dupes));
    }
    serde_json::from_str(text).map_err(|e| {
        let at = if e.is_data() {
            format!(" (line {}, column {})", e.line(), e.column())
        } else {
            String::new()
        };
        ApiError::bad_request(format!(
            "the request body is not what this endpoint takes{at}; send JSON: {shape}"
        ))
    })
}

const WHOLE_SHAPE: &str = r#"{"hash": "<hash from GET /api/config>", "config": {...}}"#;

/// `PUT /api/config`: replaces the whole config, if it is still the one read.
#[utoipa::path(put, path = "/api/config", tag = "config",
    request_body(content = Object, description = "`{\"hash\": \"<from GET>\", \"config\": {...}}`: masked secrets keep their values, inline ones move into the vault"),
    responses(
        (status = 200, description = "`{\"hash\": ..., \"secrets\": [...]}`: saved and in force", body = Object),
        (status = 409, description = "`stale_config`: the config changed since it was read (the error names the current hash)", body = ErrorBody),
        (status = 422, description = "`invalid_config`: every diagnostic, with its JSON path", body = ErrorBody),
    ))]
pub async fn put(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&snapshot, &caller)?;
    let w: Whole = body(&headers, &bytes, WHOLE_SHAPE)?;
    let Some(hash) = w.hash else {
        return Err(ApiError::bad_request(
            "a save must name the hash of the config it changes: GET /api/config, edit, then PUT it back with that \"hash\"",
        ));
    };
    let saved = configure::save(&app, &caller, Some(&hash), Edit::Whole(w.config))
        .await
        .map_err(save_error)?;
    Ok(Json(json!(saved)).into_response())
}

/// `POST /api/config:validate`: what a save would say, without saving. Warnings fail
/// here as they fail a save.
#[utoipa::path(post, path = "/api/config:validate", tag = "config",
    request_body(content = Object, description = "`{\"config\": {...}}`"),
    responses((status = 200, description = "`{\"valid\": bool, \"diagnostics\": [...]}`: what a save would say", body = Object)))]
pub async fn validate(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&snapshot, &caller)?;
    let w: Whole = body(&headers, &bytes, r#"{"config": {...}}"#)?;
    let current = ConfigFile::of(&app).read().map_err(internal)?;
    let env = configure::surroundings(&app);
    let (valid, diagnostics) =
        match configure::prepare(&current, Edit::Whole(w.config), &env, Some(&caller)) {
            Ok(p) => (true, p.diagnostics),
            Err(SaveError::Invalid(d)) => (false, d),
            Err(SaveError::LockedOut(why)) => {
                let mut d = crate::config::Diagnostics::default();
                d.error("grants", why);
                (false, d)
            }
            Err(e) => return Err(save_error(e)),
        };
    Ok(Json(json!({"valid": valid, "diagnostics": diagnostics})))
}

fn current_server(app: &App, id: &str) -> Result<Option<Value>, ApiError> {
    let file = ConfigFile::of(app);
    let current = file.read().map_err(internal)?;
    let root = crate::config::parse_hujson(&current.text).map_err(|e| unreadable(&file, &e))?;
    Ok(root
        .get("connectors")
        .and_then(|c| c.get("servers"))
        .and_then(|s| s.get(id))
        .cloned())
}

fn unreadable(file: &ConfigFile, e: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "config_unreadable",
        format!(
            "the config file {} does not parse ({e}); the previous config keeps serving. Fix the file, or replace it with PUT /api/config",
            file.describe()
        ),
    )
}

/// `GET /api/config/connectors/<id>`: one connector as saved, secrets masked, with its
/// version in `ETag`.
#[utoipa::path(get, path = "/api/config/connectors/{id}", tag = "config",
    params(("id" = String, Path, description = "Connector ID")),
    responses(
        (status = 200, description = "The connector as saved, secrets masked; its version in `ETag`", body = Object),
        (status = 404, description = "No such connector", body = ErrorBody),
    ))]
pub async fn get_connector(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&snapshot, &caller)?;
    let server = current_server(&app, &id)?
        .ok_or_else(|| ApiError::not_found(format!("no connector \"{id}\" is saved")))?;
    let etag = configure::connector_version(&id, &server);
    let root = edit::mask(&json!({"connectors": {"servers": {&id: server}}}));
    Ok((
        [(http::header::ETAG, format!("\"{etag}\""))],
        Json(json!({"id": id, "server": root["connectors"]["servers"][&id], "etag": etag})),
    )
        .into_response())
}

/// The `If-Match` of a per-connector change: the connector version it was made against.
fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(http::header::IF_MATCH)
        .map(|v| v.to_str().unwrap_or("\u{0}").to_owned())
}

/// `PUT /api/config/connectors/<id>`: adds or replaces one connector; the rest of the
/// config is left as it is, so edits of different connectors never collide. With
/// `If-None-Match: *` it only adds (409 `connector_exists` otherwise).
#[utoipa::path(put, path = "/api/config/connectors/{id}", tag = "config",
    params(("id" = String, Path, description = "Connector ID"),
           ("If-Match" = Option<String>, Header, description = "The `ETag` the change was made against"),
           ("If-None-Match" = Option<String>, Header, description = "`*`: add only")),
    request_body(content = Object, description = "The connector (`connectors.servers.<id>`)"),
    responses(
        (status = 200, description = "Replaced", body = Object),
        (status = 201, description = "Added", body = Object),
        (status = 409, description = "`connector_exists` (with `If-None-Match: *`)", body = ErrorBody),
        (status = 412, description = "`stale_connector`: it changed since its `ETag` was read", body = ErrorBody),
        (status = 422, description = "`invalid_config`", body = ErrorBody),
    ))]
pub async fn put_connector(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&snapshot, &caller)?;
    let server: Value = body(
        &headers,
        &bytes,
        r#"{"protocol": "http", "url": "...", "auth": {...}}"#,
    )?;
    // `If-None-Match: *`: only if no connector of that ID exists yet (a form adding a
    // connector must not replace one someone else just added under the same ID).
    let create = match headers.get(http::header::IF_NONE_MATCH) {
        None => false,
        Some(v) if v.as_bytes().trim_ascii() == b"*" => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "If-None-Match takes only \"*\" here (add the connector only if none of that ID exists); use If-Match with the connector's ETag to replace a version you read",
            ));
        }
    };
    let change = Edit::Connector {
        id: id.clone(),
        server,
        create,
        if_match: if_match(&headers),
    };
    let saved = configure::save(&app, &caller, None, change)
        .await
        .map_err(save_error)?;
    let status = if saved.connector.as_ref().is_some_and(|(_, _, new)| *new) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(saved_connector(&snapshot, &headers, &saved))).into_response())
}

/// `DELETE /api/config/connectors/<id>`.
#[utoipa::path(delete, path = "/api/config/connectors/{id}", tag = "config",
    params(("id" = String, Path, description = "Connector ID"),
           ("If-Match" = Option<String>, Header, description = "The `ETag` the change was made against")),
    responses(
        (status = 200, description = "`{\"removed\": id, \"hash\": ...}`", body = Object),
        (status = 404, description = "No such connector", body = ErrorBody),
        (status = 412, description = "`stale_connector`: it changed since its `ETag` was read", body = ErrorBody),
        (status = 422, description = "`invalid_config`: e.g. a grant still names it", body = ErrorBody),
    ))]
pub async fn delete_connector(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&snapshot, &caller)?;
    let change = Edit::RemoveConnector {
        id: id.clone(),
        if_match: if_match(&headers),
    };
    let saved = configure::save(&app, &caller, None, change)
        .await
        .map_err(save_error)?;
    Ok(Json(json!({"removed": id, "hash": saved.hash})).into_response())
}

/// `POST /api/config/connectors`: a connector from a registry provider's template, with
/// the operator's client ID and secret; 201 with what was saved and the redirect URI to
/// register at the provider.
#[utoipa::path(post, path = "/api/config/connectors", tag = "config",
    request_body(content = Object, description = "`{\"provider\": ..., \"id\"?: ..., \"protocol\"?: ..., \"client_id\"?: ..., \"client_secret\"?: ..., \"secret\"?: ...}`: secrets move into the vault"),
    responses(
        (status = 201, description = "The connector as saved and the `redirect_uri` to register at the provider", body = Object),
        (status = 422, description = "`unknown_provider`, `no_mcp_server` (`protocol: mcp` for a provider without one) or `invalid_config` (also a URL variable such as Microsoft's `tenant` that is not one segment, and credentials the template would drop: `secret` with an OAuth client, `secret` for an OAuth-only provider, an OAuth client or `scopes` for one without OAuth, `scopes` with a pasted token)", body = ErrorBody),
    ))]
pub async fn add_from_template(
    State(app): State<Arc<App>>,
    Extension(snapshot): Extension<Arc<Snapshot>>,
    Extension(caller): Extension<Arc<Caller>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&snapshot, &caller)?;
    let req: FromTemplate = body(
        &headers,
        &bytes,
        r#"{"provider": "slack", "id": "Slack", "client_id": "...", "client_secret": "..."}"#,
    )?;
    let template = configure::template(&app.plugins, &req.provider)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_provider", m))?;
    let (id, server) = template
        .fill(&req)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string()))?;
    let change = Edit::Connector {
        id: id.clone(),
        server,
        create: true,
        if_match: None,
    };
    let saved = configure::save(&app, &caller, None, change)
        .await
        .map_err(save_error)?;
    Ok((
        StatusCode::CREATED,
        Json(saved_connector(&snapshot, &headers, &saved)),
    )
        .into_response())
}

/// The answer to a connector save: the connector as saved (masked), the new config hash,
/// and for per-user OAuth the redirect URI to register.
fn saved_connector(snapshot: &Snapshot, headers: &HeaderMap, saved: &configure::Saved) -> Value {
    let Some((id, server, _)) = &saved.connector else {
        return json!({"hash": saved.hash, "secrets": saved.secrets});
    };
    let id = id.as_str();
    let masked = edit::mask(&json!({"connectors": {"servers": {id: &server}}}));
    let mut out = json!({
        "id": id,
        "server": masked["connectors"]["servers"][id],
        "etag": configure::connector_version(id, server),
        "hash": saved.hash,
        "secrets": saved.secrets,
    });
    let per_user = server
        .get("auth")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t.starts_with("oauth2_authorization_code") || t == "oauth2_dcr");
    if per_user && let Ok(base) = host_url(snapshot, headers) {
        out["redirect_uri"] = json!(format!("{base}{}", callback_path(id)));
    }
    out
}

/// A refused save as the API reports it.
fn save_error(e: SaveError) -> ApiError {
    let message = e.to_string();
    match e {
        SaveError::Stale { current } => {
            ApiError::new(StatusCode::CONFLICT, "stale_config", message).with("hash", current)
        }
        SaveError::Invalid(d) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", message)
                .with("diagnostics", d)
        }
        SaveError::LockedOut(_) => ApiError::new(StatusCode::FORBIDDEN, "admin_lockout", message),
        SaveError::StaleConnector { current, .. } => {
            ApiError::new(StatusCode::PRECONDITION_FAILED, "stale_connector", message)
                .with("etag", current)
        }
        SaveError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "connector_exists", message),
        SaveError::NotFound(_) => ApiError::not_found(message),
        SaveError::Rejected(_) => ApiError::bad_request(message),
        SaveError::Failed(_) => {
            tracing::error!("config save failed: {message}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "save_failed", message)
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "config_unreadable",
        format!("the config cannot be read: {e}"),
    )
}
