//! Finding the authorization server of a protected resource (an MCP server, or an API
//! a connector with `oauth2_dcr` names), the way the MCP authorization specification
//! says a client must, so that an operator needs nothing but the server's URL:
//!
//! 1. Ask the resource without a token; a `401` names its protected-resource metadata
//!    (`resource_metadata`) and maybe the scope to ask for (RFC 6750 §3, RFC 9728 §5.1).
//! 2. Protected-resource metadata (RFC 9728) from that URL, else the path-based then the
//!    root well-known location; its `resource` must be the server's, its first
//!    `authorization_servers` entry is the issuer.
//! 3. Authorization-server metadata (RFC 8414, then OpenID Connect Discovery) at the
//!    issuer's locations, about that exact issuer.
//! 4. A server with no protected-resource metadata follows the 2025-03-26 revision: the
//!    metadata is at its own origin, and without any the default endpoints `/authorize`,
//!    `/token` and `/register` there.
//!
//! Scopes come from the challenge, else the resource's `scopes_supported`, else none
//! are asked for; `offline_access` is added where the server lists it (Portcullis keeps
//! connections alive with refresh tokens). Which client identity is used there (one
//! registered in advance, a client ID metadata document, or dynamic registration) is the
//! caller's choice ([`crate::connections`]). Every request goes through the egress
//! client, so the egress rules apply to every URL a server names.

use crate::egress::Egress;
use crate::oauth;

/// A `WWW-Authenticate: Bearer ...` challenge's parameters (RFC 6750 §3, RFC 9728 §5.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge {
    pub error: Option<String>,
    /// Space-separated scopes the resource wants.
    pub scope: Option<String>,
    pub resource_metadata: Option<String>,
}

impl Challenge {
    /// The Bearer challenge among a header's challenges, if any. Parameter names are
    /// case-insensitive; values are tokens or quoted strings with `\` escapes.
    pub fn parse(header: &str) -> Option<Challenge> {
        let mut rest = header;
        // Find the `Bearer` scheme (a header may carry several challenges).
        loop {
            let trimmed = rest.trim_start_matches([' ', ',', '\t']);
            let scheme_end = trimmed.find([' ', ',']).unwrap_or(trimmed.len());
            let scheme = &trimmed[..scheme_end];
            if scheme.is_empty() {
                return None;
            }
            let after = &trimmed[scheme_end..];
            if scheme.eq_ignore_ascii_case("bearer") && !scheme.contains('=') {
                return Some(Self::params(after));
            }
            // Skip this challenge's parameters up to the next scheme: a token not
            // followed by `=`.
            rest = skip_params(after)?;
        }
    }

    fn params(mut s: &str) -> Challenge {
        let mut c = Challenge::default();
        while let Some((name, value, next)) = param(s) {
            match name.to_ascii_lowercase().as_str() {
                "error" => c.error = Some(value),
                "scope" => c.scope = Some(value),
                "resource_metadata" => c.resource_metadata = Some(value),
                _ => {}
            }
            s = next;
        }
        c
    }

    /// The scopes the challenge names, in order.
    pub fn scopes(&self) -> Vec<String> {
        self.scope
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// RFC 6750 §3.1: the token lacks a scope the request needs.
    pub fn insufficient_scope(&self) -> bool {
        self.error.as_deref() == Some("insufficient_scope")
    }
}

/// One `name=value` parameter at the start of `s` (after separators): the name, the
/// unquoted value and what follows. `None` when `s` holds no parameter there.
fn param(s: &str) -> Option<(&str, String, &str)> {
    let s = s.trim_start_matches([' ', ',', '\t']);
    let eq = s.find('=')?;
    let name = s[..eq].trim();
    if name.is_empty() || name.contains([' ', ',', '"']) {
        return None;
    }
    let after = s[eq + 1..].trim_start();
    if let Some(quoted) = after.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => return Some((name, value, &quoted[i + 1..])),
                _ => value.push(ch),
            }
        }
        // An unterminated quote: take what there is.
        Some((name, value, ""))
    } else {
        let end = after.find([',', ' ']).unwrap_or(after.len());
        Some((name, after[..end].to_owned(), &after[end..]))
    }
}

/// Skips one challenge's parameters; returns where the next scheme starts.
fn skip_params(mut s: &str) -> Option<&str> {
    loop {
        let t = s.trim_start_matches([' ', ',', '\t']);
        if t.is_empty() {
            return None;
        }
        // A token68 or a parameter; a bare token not followed by `=` is the next scheme.
        let end = t.find([' ', ',', '=']).unwrap_or(t.len());
        if t[end..].trim_start().starts_with('=') {
            let (_, _, next) = param(t)?;
            s = next;
        } else {
            return Some(t);
        }
    }
}

/// What discovery found: where to send the user and the token requests, and what to
/// ask for.
#[derive(Debug, Clone)]
pub struct Server {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub registration_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    /// RFC 8707 resource indicator: the protected-resource metadata's `resource`.
    pub resource: Option<String>,
    /// The scopes to ask for (see the module docs).
    pub scopes: Vec<String>,
    /// The server accepts a client ID metadata document's URL as `client_id`.
    pub metadata_documents: bool,
    /// `token_endpoint_auth_methods_supported`, empty when the server does not say.
    pub auth_methods: Vec<String>,
}

/// How to ask the resource for its challenge: an MCP server gets what every client
/// sends first (`initialize`), an HTTP API a plain `GET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Mcp,
    Http,
}

/// Runs discovery for the resource at `resource_url` (see the module docs). Errors say
/// what was missing or refused, for the operator.
pub async fn discover(
    egress: &Egress,
    resource_url: &url::Url,
    probe: Probe,
) -> Result<Server, String> {
    let challenge = oauth::challenge(egress, resource_url, probe == Probe::Mcp)
        .await
        .map_err(|e| e.to_string())?
        .and_then(|h| Challenge::parse(&h))
        .unwrap_or_default();
    let mut candidates = Vec::new();
    if let Some(named) = &challenge.resource_metadata {
        let u = url::Url::parse(named).map_err(|e| {
            format!("the server's WWW-Authenticate names resource_metadata \"{named}\", which is not a URL: {e}")
        })?;
        oauth::check_issuer(&u, resource_url).map_err(|e| {
            format!("the server's WWW-Authenticate resource_metadata is unusable: {e}")
        })?;
        candidates.push(u);
    }
    for u in oauth::protected_resource_metadata_urls(resource_url) {
        if !candidates.contains(&u) {
            candidates.push(u);
        }
    }
    let mut prm = None;
    for u in &candidates {
        if let Some(doc) = oauth::metadata(egress, u)
            .await
            .map_err(|e| e.to_string())?
        {
            prm = Some(doc);
            break;
        }
    }
    match prm {
        Some(prm) => from_protected_resource(egress, resource_url, &challenge, &prm).await,
        None => legacy(egress, resource_url, &challenge).await,
    }
}

/// Discovery from protected-resource metadata (the 2025-06-18 and later revisions).
async fn from_protected_resource(
    egress: &Egress,
    resource_url: &url::Url,
    challenge: &Challenge,
    prm: &serde_json::Value,
) -> Result<Server, String> {
    let resource = prm
        .get("resource")
        .and_then(|r| r.as_str())
        .map(str::to_owned);
    if let Some(r) = &resource {
        check_resource(r, resource_url)?;
    }
    let issuer = prm
        .get("authorization_servers")
        .and_then(|a| a.get(0))
        .and_then(|s| s.as_str())
        .ok_or_else(|| {
            "the protected-resource metadata names no authorization server (authorization_servers)"
                .to_owned()
        })?;
    let issuer = url::Url::parse(issuer).map_err(|e| {
        format!("the protected-resource metadata names \"{issuer}\" as authorization server: {e}")
    })?;
    oauth::check_issuer(&issuer, resource_url)?;
    let meta = server_metadata(egress, &issuer).await?.ok_or_else(|| {
        format!(
            "no authorization server metadata found for {issuer} (RFC 8414 or OpenID Connect discovery); use oauth2_authorization_code with the endpoints set by hand"
        )
    })?;
    // RFC 8414 §3.3: the metadata must be about the issuer it was fetched for.
    let claimed = string(&meta, "issuer").unwrap_or_default();
    if claimed.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
        return Err(format!(
            "the authorization server metadata claims issuer \"{claimed}\" but was fetched for \"{issuer}\"; refusing it (RFC 8414 §3.3)"
        ));
    }
    let mut scopes = challenge.scopes();
    if scopes.is_empty() {
        scopes = strings(prm, "scopes_supported");
    }
    server(&issuer, &meta, resource, scopes)
}

/// Discovery for a server with no protected-resource metadata (the 2025-03-26
/// revision): metadata at the server's origin, else the default endpoints there. The
/// metadata's issuer may differ from the origin it was fetched from, as that revision
/// defines the origin as the authorization base URL, but it must be on that origin:
/// nothing a server publishes sends the user or a token request to another host
/// without protected-resource metadata naming it.
async fn legacy(
    egress: &Egress,
    resource_url: &url::Url,
    challenge: &Challenge,
) -> Result<Server, String> {
    let mut origin = resource_url.clone();
    origin.set_path("/");
    origin.set_query(None);
    origin.set_fragment(None);
    let scopes = challenge.scopes();
    if let Some(meta) = server_metadata(egress, &origin).await? {
        let claimed = string(&meta, "issuer").unwrap_or_default();
        let same_origin = url::Url::parse(&claimed).is_ok_and(|c| c.origin() == origin.origin());
        if !same_origin {
            return Err(format!(
                "the authorization server metadata at {origin} claims issuer \"{claimed}\", which is on another origin; refusing it (a server without protected-resource metadata is its own authorization server)"
            ));
        }
        let issuer = url::Url::parse(&claimed).map_err(|e| e.to_string())?;
        return server(&issuer, &meta, None, scopes);
    }
    let at = |path: &str| {
        let mut u = origin.clone();
        u.set_path(path);
        u.to_string()
    };
    tracing::info!(server = %origin, "no OAuth metadata; using the 2025-03-26 default endpoints /authorize, /token and /register");
    Ok(Server {
        issuer: origin.to_string(),
        authorization_endpoint: at("/authorize"),
        token_endpoint: at("/token"),
        registration_endpoint: Some(at("/register")),
        revocation_endpoint: None,
        resource: None,
        scopes,
        metadata_documents: false,
        auth_methods: Vec::new(),
    })
}

/// The protected-resource metadata's `resource` must be the server the connector names:
/// the same origin, and a path that is the server's path or a whole-segment prefix of it
/// (a server at `/mcp` may describe itself as its origin). Anything else is metadata
/// about another resource, whose tokens must not be asked for (RFC 9728 §3.3).
fn check_resource(resource: &str, resource_url: &url::Url) -> Result<(), String> {
    let refuse = || {
        format!(
            "the protected-resource metadata is for \"{resource}\", not for {resource_url}; refusing it (RFC 9728 §3.3)"
        )
    };
    let named = url::Url::parse(resource).map_err(|_| refuse())?;
    if named.origin() != resource_url.origin() || named.query().is_some() {
        return Err(refuse());
    }
    let prefix = named.path().trim_end_matches('/');
    let path = resource_url.path();
    let fits = prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'));
    if fits { Ok(()) } else { Err(refuse()) }
}

/// The first authorization-server metadata document at `issuer`'s locations.
async fn server_metadata(
    egress: &Egress,
    issuer: &url::Url,
) -> Result<Option<serde_json::Value>, String> {
    for u in oauth::authorization_server_metadata_urls(issuer) {
        if let Some(m) = oauth::metadata(egress, &u)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// The endpoints of `meta`, checked: web URLs, https when the issuer is (no downgrade,
/// and no `javascript:` authorize URL handed to a browser), PKCE with S256.
fn server(
    issuer: &url::Url,
    meta: &serde_json::Value,
    resource: Option<String>,
    mut scopes: Vec<String>,
) -> Result<Server, String> {
    let authorization_endpoint = string(meta, "authorization_endpoint")
        .ok_or_else(|| format!("{issuer}'s metadata has no authorization_endpoint"))?;
    let token_endpoint = string(meta, "token_endpoint")
        .ok_or_else(|| format!("{issuer}'s metadata has no token_endpoint"))?;
    if let Some(methods) = meta
        .get("code_challenge_methods_supported")
        .and_then(|m| m.as_array())
        && !methods.iter().any(|m| m == "S256")
    {
        return Err(format!("{issuer} does not support PKCE with S256"));
    }
    let registration_endpoint = string(meta, "registration_endpoint");
    let revocation_endpoint = string(meta, "revocation_endpoint");
    for (name, value) in [
        ("authorization_endpoint", Some(&authorization_endpoint)),
        ("token_endpoint", Some(&token_endpoint)),
        ("registration_endpoint", registration_endpoint.as_ref()),
        ("revocation_endpoint", revocation_endpoint.as_ref()),
    ] {
        let Some(value) = value else { continue };
        let ok = url::Url::parse(value).is_ok_and(|u| {
            u.scheme() == "https" || (u.scheme() == "http" && issuer.scheme() == "http")
        });
        if !ok {
            return Err(format!(
                "{issuer}'s metadata has an unacceptable {name} \"{value}\" (it must be an https URL)"
            ));
        }
    }
    // SEP-2207: a client that wants refresh tokens asks for offline_access where the
    // server lists it, and never where it does not.
    let supported = strings(meta, "scopes_supported");
    if supported.iter().any(|s| s == "offline_access")
        && !scopes.iter().any(|s| s == "offline_access")
    {
        scopes.push("offline_access".to_owned());
    }
    Ok(Server {
        issuer: issuer.to_string(),
        authorization_endpoint,
        token_endpoint,
        registration_endpoint,
        revocation_endpoint,
        resource,
        scopes,
        metadata_documents: meta
            .get("client_id_metadata_document_supported")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        auth_methods: strings(meta, "token_endpoint_auth_methods_supported"),
    })
}

fn string(v: &serde_json::Value, name: &str) -> Option<String> {
    v.get(name).and_then(|v| v.as_str()).map(str::to_owned)
}

fn strings(v: &serde_json::Value, name: &str) -> Vec<String> {
    v.get(name)
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_read_among_others() {
        let c = Challenge::parse(
            r#"Bearer error="insufficient_scope", scope="mcp:basic mcp:write", resource_metadata="https://m.example/.well-known/oauth-protected-resource/mcp""#,
        )
        .expect("bearer");
        assert!(c.insufficient_scope());
        assert_eq!(c.scopes(), ["mcp:basic", "mcp:write"]);
        assert_eq!(
            c.resource_metadata.as_deref(),
            Some("https://m.example/.well-known/oauth-protected-resource/mcp")
        );
        let c = Challenge::parse(r#"Basic realm="x, y", bearer Scope=read, error=invalid_token"#)
            .expect("bearer after basic");
        assert_eq!(c.scope.as_deref(), Some("read"));
        assert_eq!(c.error.as_deref(), Some("invalid_token"));
        let c = Challenge::parse(r#"Bearer realm="a \"quoted\" realm",scope="s""#).expect("esc");
        assert_eq!(c.scope.as_deref(), Some("s"));
        assert_eq!(Challenge::parse("Bearer"), Some(Challenge::default()));
        for none in ["", "Basic realm=x", "Negotiate abc==", "  ,  "] {
            assert_eq!(Challenge::parse(none), None, "{none}");
        }
        // Unterminated quotes and stray text never panic.
        for odd in [
            r#"Bearer scope="x"#,
            "Bearer =x",
            "Bearer scope=",
            "Basic a=\"",
            "Bearer ,,,=",
        ] {
            let _ = Challenge::parse(odd);
        }
    }

    #[test]
    fn resource_metadata_must_describe_the_server() {
        let u = |s: &str| url::Url::parse(s).expect("url");
        let server = u("https://mcp.example/v1/mcp");
        for ok in [
            "https://mcp.example/v1/mcp",
            "https://mcp.example/v1/mcp/",
            "https://mcp.example/",
            "https://mcp.example",
            "https://mcp.example/v1",
        ] {
            assert!(check_resource(ok, &server).is_ok(), "{ok}");
        }
        for bad in [
            "https://other.example/v1/mcp",
            "http://mcp.example/v1/mcp",
            "https://mcp.example:8443/v1/mcp",
            "https://mcp.example/v1/mc",
            "https://mcp.example/v2",
            "https://mcp.example/v1/mcp/more",
            "not a url",
        ] {
            assert!(check_resource(bad, &server).is_err(), "{bad}");
        }
    }
}
