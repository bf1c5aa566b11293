//! The HTTP API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and served at [`PATH`]. The router takes each route's path from the same
//! annotation ([`path_of`]), so a documented path and a served one cannot drift apart
//! (the proxy's and `/v1/mcp`, which the front stages route themselves, are checked by
//! the e2e test that asks for them);
//! the e2e tests check the methods by asking the running host, and that
//! `docs/openapi.json` is what the code generates.
//!
//! Identity is not an OpenAPI security scheme: the caller is whoever tailscaled says the
//! connecting peer is. Every identified route can therefore answer 401
//! `unauthenticated`, 403 `forbidden` and 503 `identity_unavailable`; [`CommonErrors`]
//! adds those to each operation, and the browser defence's 403 `cross_site_request` too.

use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// Where the document is served (any identified caller may read it).
pub const PATH: &str = "/api/openapi.json";

/// The path a handler's annotation names, for the router.
pub fn path_of<P: utoipa::Path>() -> String {
    P::path()
}

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

/// The host's error body, `{"error": {"code": ..., "message": ...}}` ([`crate::error`]).
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the JSON `ApiError` writes.
pub struct ErrorBody {
    error: ErrorObject,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct ErrorObject {
    /// Stable: what a program branches on (`forbidden`, `invalid_config`, …).
    code: String,
    /// What went wrong and what to do; may improve between versions.
    message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis",
        description = "Connector gateway for AI agents on a tailnet. Callers are identified by their tailnet identity (no tokens); what they may do is decided by grants. Errors are `{\"error\": {\"code\", \"message\"}}`. See docs/admin-api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::proxy::handle,
        crate::mcp::handle,
        crate::mcp::handle_one,
        crate::admin::whoami,
        crate::admin::registry,
        crate::admin::list,
        crate::admin::capabilities,
        crate::admin::connect,
        crate::admin::disconnect,
        crate::admin::callback,
        crate::admin::config::get,
        crate::admin::config::put,
        crate::admin::config::validate,
        crate::admin::config::add_from_template,
        crate::admin::config::get_connector,
        crate::admin::config::put_connector,
        crate::admin::config::delete_connector,
        crate::admin::secrets::list,
        crate::admin::secrets::put,
        crate::admin::secrets::delete,
        crate::admin::config_schema,
        serve,
        crate::admin::metrics,
        crate::admin::healthz,
        crate::admin::client_metadata,
        crate::ui::index,
        crate::ui::asset,
        crate::ui::to_root,
    ),
    components(schemas(ErrorBody)),
    modifiers(&CommonErrors),
    tags(
        (name = "agents", description = "What agents call: HTTP APIs and the aggregated MCP server"),
        (name = "connectors", description = "Connectors as each caller sees them, and per-user connections"),
        (name = "config", description = "The config, for admins"),
        (name = "secrets", description = "Vault secrets, for admins (never returned)"),
        (name = "operations", description = "Health and metrics"),
        (name = "dashboard", description = "The dashboard's page and assets"),
    ),
)]
struct ApiDoc;

/// `GET /api/openapi.json`.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object)))]
pub async fn serve() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    static DOCUMENT: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| document().to_string());
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// Routes served without identity (probes, the dashboard's files): no identity errors.
const UNIDENTIFIED: &[&str] = &["/healthz", "/ui/", "/ui/{asset}", "/ui"];

/// Adds the answers every identified route can give.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                "ErrorBody",
                            ))))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if UNIDENTIFIED.contains(&path.as_str()) {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut op.responses.responses;
                responses.entry("401".into()).or_insert_with(|| {
                    error("`unauthenticated`: the caller could not be identified")
                });
                responses.entry("403".into()).or_insert_with(|| {
                    error(
                        "`forbidden`: no grant allows it, or `cross_site_request` from a web page",
                    )
                });
                responses.entry("503".into()).or_insert_with(|| {
                    error("`identity_unavailable`: the identity source cannot be reached")
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_a_summary_and_a_success_or_default() {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.len() >= 22, "{}", paths.len());
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("item") {
                if !matches!(
                    method.as_str(),
                    "get" | "put" | "post" | "delete" | "options" | "head" | "patch"
                ) {
                    continue;
                }
                assert!(
                    op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                    "{method} {path} has no summary"
                );
                let responses = op["responses"].as_object().expect("responses");
                assert!(
                    responses
                        .keys()
                        .any(|k| k.starts_with('2') || k.starts_with('3') || k == "default"),
                    "{method} {path} documents no success"
                );
            }
        }
    }
}
