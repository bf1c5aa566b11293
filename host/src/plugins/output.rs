//! The one check on plugin output. Every hook's result passes through here before it
//! leaves this module, so the host never acts on anything a plugin returned unchecked:
//!
//! - URLs stay on the connector's own origin or are https on the provider's declared
//!   hosts, with no credentials in them;
//! - headers are valid, bounded, and never a credential or framing header
//!   ([`crate::headers::refused_from_plugin`]);
//! - tool requests name a plain path below the connector, never another origin;
//! - bodies, variables, tool listings and texts are bounded.
//!
//! The checks live beside the runtime rather than in the outbound pipeline because
//! checking at the sandbox boundary is what makes "every hook" true by construction:
//! the raw hook calls are private to `plugins`, and only checked values are public.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{CallError, Plugin, types};

/// Longest URL a plugin may return.
const MAX_URL_BYTES: usize = 16 * 1024;
/// Most headers a plugin may set, and the longest value.
const MAX_SET_HEADERS: usize = 64;
const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;
/// Largest request body a plugin may have the host send (a tool call, a discovery step).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Most variables a token response or discovery may set, and their sizes.
const MAX_VARIABLES: usize = 32;
const MAX_VARIABLE_NAME: usize = 64;
const MAX_VARIABLE_VALUE: usize = 2048;
/// Most tools one plugin may list, and the size of each one's texts.
const MAX_TOOLS: usize = 256;
const MAX_TOOL_DESCRIPTION: usize = 4096;
const MAX_TOOL_SCHEMA: usize = 64 * 1024;
/// Longest text a plugin may report (a classification's reason).
const MAX_REASON: usize = 1024;
/// Most routes a plugin may declare for one context, and their total size (prefixes,
/// targets, headers, query parameters, grant values, each list entry counted at least
/// [`ROUTE_ENTRY_BYTES`]): a context's routes are kept for as long as the plugin is
/// loaded.
const MAX_ROUTES: usize = 64;
const MAX_ROUTES_BYTES: usize = 64 * 1024;
/// What a list entry of a route (a default header, one of its `unless` values, a query
/// parameter, a grant value) counts for at least, so empty strings are not free.
const ROUTE_ENTRY_BYTES: usize = 32;
/// Most entries of each of a route's lists (WIT 0.1.4): each is looked at on every
/// request the route covers.
const MAX_ROUTE_UNLESS: usize = 16;
const MAX_ROUTE_QUERY: usize = 32;
const MAX_ROUTE_GRANTS: usize = 16;
/// Most ok markers a plugin may declare (WIT 0.1.5), status ranges in each, and the
/// longest member name and value: each marker is looked at on every answer it could
/// match.
const MAX_OK_MARKERS: usize = 8;
const MAX_MARKER_STATUSES: usize = 8;
pub(super) const MAX_MARKER_TEXT: usize = 64;
/// Longest retry delay a plugin may ask for, in milliseconds.
const MAX_RETRY_MS: u32 = 2_000;

/// What a plugin's output is checked against: the connector's base URL (its origin is
/// always allowed) and the header its credential uses (never settable by the plugin).
#[derive(Debug, Clone, Copy)]
pub struct Bounds<'a> {
    pub base: &'a url::Url,
    pub credential_header: Option<&'a HeaderName>,
}

fn invalid(plugin: &Plugin, detail: String) -> CallError {
    CallError::Invalid {
        plugin: plugin.prepared.id().clone(),
        detail,
    }
}

/// A shaped request, checked.
#[derive(Debug)]
pub struct Shaped {
    pub url: url::Url,
    pub set: HeaderMap,
    pub remove: Vec<HeaderName>,
    pub grant: Option<String>,
}

impl Shaped {
    /// Applies the header changes to the outgoing headers.
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for name in self.set.keys() {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.append(name.clone(), value.clone());
        }
    }
}

pub(super) fn shaped(
    plugin: &Plugin,
    bounds: Bounds<'_>,
    shaped: types::ShapedRequest,
) -> Result<Shaped, CallError> {
    let url = url(plugin, bounds.base, &shaped.url)?;
    let set = headers(plugin, &shaped.set_headers, bounds.credential_header)?;
    Ok(Shaped {
        url,
        set,
        remove: removed(plugin, &shaped.remove_headers)?,
        grant: shaped.grant,
    })
}

/// Header names a shaped request removes, parsed.
fn removed(plugin: &Plugin, names: &[String]) -> Result<Vec<HeaderName>, CallError> {
    names.iter().map(|name| header_name(plugin, name)).collect()
}

/// A header name a plugin gave, parsed (lower-case, as a header map keeps names).
fn header_name(plugin: &Plugin, name: &str) -> Result<HeaderName, CallError> {
    HeaderName::try_from(name)
        .map_err(|_| invalid(plugin, format!("\"{}\" is not a header name", clip(name))))
}

/// A request a route covers ([`super::routes::Routed`]), checked by the rules of a
/// `shape-request` answer: its URL by [`url`]'s (the route's target passed them when it
/// was declared, and a clean path and a query cannot change its origin, but the rule
/// stays in one place), its headers by the same policy.
pub(super) fn routed(
    plugin: &Plugin,
    bounds: Bounds<'_>,
    routed: super::routes::Routed,
) -> Result<Shaped, CallError> {
    let raw = routed.url.as_str();
    if raw.len() > MAX_URL_BYTES {
        return Err(invalid(
            plugin,
            format!("a URL of {} bytes; at most {MAX_URL_BYTES}", raw.len()),
        ));
    }
    allowed(plugin, bounds.base, &routed.url, raw)?;
    Ok(Shaped {
        set: headers(plugin, &routed.set_headers, bounds.credential_header)?,
        // Parsed when the route was checked ([`grant_header`]).
        remove: routed.remove_headers,
        url: routed.url,
        grant: routed.grant,
    })
}

/// A request a plugin asked the host to make (a discovery step), checked: the host adds
/// the credential and sends it.
#[derive(Debug)]
pub struct CheckedRequest {
    pub method: http::Method,
    pub url: url::Url,
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
    pub grant: Option<String>,
}

pub(super) fn request(
    plugin: &Plugin,
    bounds: Bounds<'_>,
    req: types::Request,
) -> Result<CheckedRequest, CallError> {
    Ok(CheckedRequest {
        method: super::method_of(req.method),
        url: url(plugin, bounds.base, &req.url)?,
        headers: headers(plugin, &req.headers, bounds.credential_header)?,
        body: body(plugin, req.body)?,
        grant: req.grant,
    })
}

/// A tool call as a request below the connector, checked.
#[derive(Debug)]
pub struct ToolCall {
    pub method: http::Method,
    /// A plain path below the connector's base URL, starting with `/`.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
}

pub(super) fn tool_call(
    plugin: &Plugin,
    bounds: Bounds<'_>,
    req: types::ToolRequest,
) -> Result<ToolCall, CallError> {
    let path = &req.path;
    if path.len() > MAX_URL_BYTES {
        return Err(invalid(
            plugin,
            format!(
                "a tool path of {} bytes; at most {MAX_URL_BYTES}",
                path.len()
            ),
        ));
    }
    // A tool request is relative to the connector: `//host/...` (a network-path
    // reference) or `scheme:...` would name another origin, `?`/`#` belong elsewhere.
    let foreign = path.starts_with("//")
        || path.starts_with("\\\\")
        || path.contains(['?', '#'])
        || path
            .split('/')
            .next()
            .is_some_and(|first| first.contains(':'));
    if foreign || !path.starts_with('/') {
        return Err(invalid(
            plugin,
            format!(
                "the tool request path \"{}\" is not a plain path below the connector (it must start with one \"/\")",
                clip(path)
            ),
        ));
    }
    if let Some(q) = &req.query
        && q.len() > MAX_URL_BYTES
    {
        return Err(invalid(
            plugin,
            format!("a tool query of {} bytes; at most {MAX_URL_BYTES}", q.len()),
        ));
    }
    Ok(ToolCall {
        method: super::method_of(req.method),
        path: req.path,
        query: req.query.filter(|q| !q.is_empty()),
        headers: headers(plugin, &req.headers, bounds.credential_header)?,
        body: body(plugin, req.body)?,
    })
}

/// A plugin tool, checked: a usable name, bounded texts, and an input schema that is a
/// JSON object.
#[derive(Debug, Clone)]
pub struct CheckedTool {
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Map<String, serde_json::Value>,
    pub read_only: bool,
}

/// Keeps the tools that pass; each one left out is logged with why. A listing longer
/// than the bound fails whole (the plugin is broken, not one tool).
pub(super) fn tools(
    plugin: &Plugin,
    listed: Vec<types::Tool>,
) -> Result<Vec<CheckedTool>, CallError> {
    if listed.len() > MAX_TOOLS {
        return Err(invalid(
            plugin,
            format!("{} tools listed; at most {MAX_TOOLS}", listed.len()),
        ));
    }
    let mut out = Vec::with_capacity(listed.len());
    for t in listed {
        let why = if !crate::mcp::valid_tool_name(&t.name) {
            Some("not a valid tool name (1-128 of A-Z a-z 0-9 _ . -)".to_owned())
        } else if t.description.len() > MAX_TOOL_DESCRIPTION {
            Some(format!("a description over {MAX_TOOL_DESCRIPTION} bytes"))
        } else if t.input_schema.len() > MAX_TOOL_SCHEMA {
            Some(format!("an input schema over {MAX_TOOL_SCHEMA} bytes"))
        } else {
            None
        };
        let schema = match (why, serde_json::from_str(&t.input_schema)) {
            (None, Ok(serde_json::Value::Object(m))) => Ok(m),
            (None, Ok(_)) => Err("an input schema that is not a JSON object".to_owned()),
            (None, Err(e)) => Err(format!("an input schema that is not JSON ({e})")),
            (Some(why), _) => Err(why),
        };
        match schema {
            Ok(input_schema) => out.push(CheckedTool {
                name: t.name,
                description: t.description,
                input_schema,
                read_only: t.read_only,
            }),
            Err(why) => tracing::warn!(
                plugin = %plugin.id(),
                tool = %clip(&t.name),
                "plugin tool left out: {why}"
            ),
        }
    }
    Ok(out)
}

/// Variables a token response or discovery set: bounded, printable.
pub(super) fn variables(
    plugin: &Plugin,
    vars: Vec<types::Variable>,
) -> Result<Vec<types::Variable>, CallError> {
    if vars.len() > MAX_VARIABLES {
        return Err(invalid(
            plugin,
            format!("{} variables; at most {MAX_VARIABLES}", vars.len()),
        ));
    }
    for (name, value) in &vars {
        if name.is_empty() || name.len() > MAX_VARIABLE_NAME || name.chars().any(char::is_control) {
            return Err(invalid(
                plugin,
                format!(
                    "the variable name \"{}\" is empty, too long or has control characters",
                    clip(name)
                ),
            ));
        }
        if value.len() > MAX_VARIABLE_VALUE || value.chars().any(char::is_control) {
            return Err(invalid(
                plugin,
                format!(
                    "variable \"{name}\" is over {MAX_VARIABLE_VALUE} bytes or has control characters"
                ),
            ));
        }
    }
    Ok(vars)
}

/// A classification with its delay and texts bounded.
pub(super) fn classification(c: types::Classification) -> types::Classification {
    use types::Classification as C;
    match c {
        C::Retry(ms) => C::Retry(Some(ms.unwrap_or(250).min(MAX_RETRY_MS))),
        C::Reauth(why) => C::Reauth(clip_to(&why, MAX_REASON)),
        C::Failed(why) => C::Failed(clip_to(&why, MAX_REASON)),
        other => other,
    }
}

/// A context's routes (`routes`, WIT 0.1.3, or `routes-v2`, 0.1.4), checked: each
/// prefix empty or `/` and segments without a trailing `/`, `?`, `#` or `//`, and
/// declared once; each target a URL a shaped request may go to ([`url`]), without query
/// or fragment (the request's query and the route's parameters follow it); default
/// headers any header a plugin may set ([`headers`]); query parameters named, needing
/// no encoding ([`query_part`]); a grant header a valid name whose values are listed
/// once each; each list bounded, and all of it within [`MAX_ROUTES_BYTES`]. Every request
/// a route shapes is still checked by the rules of a shaped request ([`routed`]).
pub(super) fn routes(
    plugin: &Plugin,
    bounds: Bounds<'_>,
    declared: Vec<super::runtime::DeclaredRoute>,
) -> Result<super::routes::Routes, CallError> {
    use super::routes::{DefaultHeader, QueryParam, Route};
    if declared.len() > MAX_ROUTES {
        return Err(invalid(
            plugin,
            format!("{} routes declared; at most {MAX_ROUTES}", declared.len()),
        ));
    }
    let bytes: usize = declared.iter().map(route_bytes).sum();
    if bytes > MAX_ROUTES_BYTES {
        return Err(invalid(
            plugin,
            format!("routes of {bytes} bytes declared; at most {MAX_ROUTES_BYTES}"),
        ));
    }
    let mut checked: Vec<Route> = Vec::with_capacity(declared.len());
    for r in declared {
        let p = &r.prefix;
        if !route_prefix(p) {
            return Err(invalid(
                plugin,
                format!(
                    "the route prefix \"{}\" is neither empty nor \"/\" and segments without a trailing \"/\"",
                    clip(p)
                ),
            ));
        }
        if checked.iter().any(|c| c.prefix == *p) {
            return Err(invalid(
                plugin,
                format!("the route prefix \"{}\" is declared twice", clip(p)),
            ));
        }
        let target = url(plugin, bounds.base, &r.target)?;
        if target.query().is_some() || target.fragment().is_some() {
            return Err(invalid(
                plugin,
                format!(
                    "the route target \"{}\" has a query or fragment; the request's query follows the target",
                    clip(&r.target)
                ),
            ));
        }
        let defaults: Vec<types::Header> = r
            .default_headers
            .iter()
            .map(|d| (d.name.clone(), d.value.clone()))
            .collect();
        headers(plugin, &defaults, bounds.credential_header)?;
        for d in &r.default_headers {
            at_most(
                plugin,
                "values a default header replaces",
                d.unless.len(),
                MAX_ROUTE_UNLESS,
            )?;
        }
        at_most(plugin, "query parameters", r.query.len(), MAX_ROUTE_QUERY)?;
        for (name, value) in &r.query {
            if name.is_empty() || !query_part(name) || !query_part(value) {
                return Err(invalid(
                    plugin,
                    format!(
                        "the route's query parameter \"{}={}\" is not letters, digits, -._~!$()*+,;:@/? and %-escapes (or has no name)",
                        clip(name),
                        clip(value)
                    ),
                ));
            }
        }
        let grant_header = r
            .grant_header
            .map(|g| grant_header(plugin, g))
            .transpose()?;
        let mut default_headers = Vec::with_capacity(r.default_headers.len());
        for d in r.default_headers {
            default_headers.push(DefaultHeader {
                // `headers` above has refused any name that does not parse.
                name: header_name(plugin, &d.name)?,
                value: d.value,
                unless: d.unless,
            });
        }
        checked.push(Route {
            prefix: r.prefix,
            target,
            default_headers,
            query: r
                .query
                .iter()
                .map(|(name, value)| QueryParam::new(name, value))
                .collect(),
            grant_header,
        });
    }
    Ok(super::routes::Routes::new(checked))
}

/// A route's grant header, checked: a header name, each value listed once.
fn grant_header(
    plugin: &Plugin,
    g: super::runtime::GrantHeader,
) -> Result<super::routes::GrantHeader, CallError> {
    let name = header_name(plugin, &g.name)?;
    at_most(
        plugin,
        "grant header values",
        g.values.len(),
        MAX_ROUTE_GRANTS,
    )?;
    let mut values: Vec<(String, Option<String>)> = Vec::with_capacity(g.values.len());
    for (value, grant) in g.values {
        if values.iter().any(|(v, _)| *v == value) {
            return Err(invalid(
                plugin,
                format!(
                    "the grant header \"{}\" lists the value \"{}\" twice",
                    clip(&g.name),
                    clip(&value)
                ),
            ));
        }
        values.push((value, grant));
    }
    Ok(super::routes::GrantHeader { name, values })
}

/// What a declared route keeps in memory, for [`MAX_ROUTES_BYTES`]: its strings, each
/// list entry at least [`ROUTE_ENTRY_BYTES`].
fn route_bytes(r: &super::runtime::DeclaredRoute) -> usize {
    let entry = |bytes: usize| bytes.max(ROUTE_ENTRY_BYTES);
    let pairs = |p: &[(String, String)]| {
        p.iter()
            .map(|(a, b)| entry(a.len() + b.len()))
            .sum::<usize>()
    };
    r.prefix.len()
        + r.target.len()
        + r.default_headers
            .iter()
            .map(|d| {
                entry(d.name.len() + d.value.len())
                    + d.unless.iter().map(|u| entry(u.len())).sum::<usize>()
            })
            .sum::<usize>()
        + pairs(&r.query)
        + r.grant_header.as_ref().map_or(0, |g| {
            g.name.len()
                + g.values
                    .iter()
                    .map(|(v, grant)| entry(v.len() + grant.as_ref().map_or(0, String::len)))
                    .sum::<usize>()
        })
}

/// Fails unless a route's list has at most `max` entries.
fn at_most(plugin: &Plugin, what: &str, len: usize, max: usize) -> Result<(), CallError> {
    if len > max {
        return Err(invalid(
            plugin,
            format!("a route with {len} {what}; at most {max}"),
        ));
    }
    Ok(())
}

/// Whether `s` can stand in a query as it is, neither splitting a parameter (`&`, `=`)
/// nor changed by the URL parser: letters, digits, `-._~!$()*+,;:@/?` and `%` followed by
/// two hex digits.
fn query_part(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || b"-._~!$()*+,;:@/?".contains(&c) => i += 1,
            _ => return false,
        }
    }
    true
}

/// Whether `p` can be a route prefix: empty (every path), or `/` and segments, without a
/// trailing `/`, an empty segment, a query or fragment, or control characters.
fn route_prefix(p: &str) -> bool {
    p.is_empty()
        || (p.starts_with('/')
            && !p.ends_with('/')
            && !p.contains("//")
            && !p.contains(['?', '#'])
            && !p.chars().any(char::is_control)
            && p.len() <= MAX_URL_BYTES)
}

/// A URL is acceptable when it is on the connector's own configured origin (the
/// operator chose it) or is https on one of the provider's declared hosts.
pub(super) fn url(plugin: &Plugin, base: &url::Url, raw: &str) -> Result<url::Url, CallError> {
    if raw.len() > MAX_URL_BYTES {
        return Err(invalid(
            plugin,
            format!("a URL of {} bytes; at most {MAX_URL_BYTES}", raw.len()),
        ));
    }
    let url = url::Url::parse(raw)
        .map_err(|e| invalid(plugin, format!("\"{}\" is not a URL: {e}", clip(raw))))?;
    allowed(plugin, base, &url, raw)?;
    Ok(url)
}

/// The rules of [`url`] for a URL already parsed (`raw` as the plugin wrote it, for
/// messages).
fn allowed(plugin: &Plugin, base: &url::Url, url: &url::Url, raw: &str) -> Result<(), CallError> {
    match refusal(&plugin.manifest, base, url, raw) {
        Some(detail) => Err(invalid(plugin, detail)),
        None => Ok(()),
    }
}

/// Why [`allowed`] refuses `url`, if it does: credentials in it, or neither the
/// connector's own origin nor https on a host the manifest declares.
fn refusal(
    manifest: &super::manifest::Manifest,
    base: &url::Url,
    url: &url::Url,
    raw: &str,
) -> Option<String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Some("a URL with credentials in it".to_owned());
    }
    let same_origin = url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default();
    if same_origin {
        return None;
    }
    if url.scheme() != "https" {
        return Some(format!("\"{}\" is not https", clip(raw)));
    }
    if !manifest.allows_host(url.host_str().unwrap_or_default()) {
        return Some(format!(
            "\"{}\" is outside the provider's declared hosts ({}) and the connector's URL",
            clip(raw),
            manifest.capabilities.allowed_hosts.join(", ")
        ));
    }
    None
}

/// What a provider's OAuth endpoints need (`oauth-extras`), checked: its headers pass
/// the same policy as every header a plugin sets (never a credential).
pub(super) fn oauth_style(
    plugin: &Plugin,
    options: &super::runtime::oauth_extras::OauthOptions,
) -> Result<crate::oauth::RequestStyle, CallError> {
    use super::runtime::oauth_extras::TokenBody;
    Ok(crate::oauth::RequestStyle {
        json: matches!(options.token_body, TokenBody::Json),
        headers: headers(plugin, &options.token_headers, None)?,
    })
}

/// A reshaped tool answer (`tool-results`): no bigger than the answers the host relays.
pub(super) fn tool_result(plugin: &Plugin, text: String) -> Result<String, CallError> {
    if text.len() > MAX_BODY_BYTES {
        return Err(invalid(
            plugin,
            format!(
                "a tool answer of {} bytes; at most {MAX_BODY_BYTES}",
                text.len()
            ),
        ));
    }
    Ok(text)
}

/// How a provider's static credential is sent (`auth-extras`), checked: a scheme that is
/// an HTTP token, a header the header policy lets carry a credential, a query name that
/// needs no encoding. (An operator's own `api_key` header is the operator's choice: the
/// config validator asks only for a valid name.)
pub(super) fn static_credential(
    c: &super::runtime::auth_extras::StaticCredential,
) -> Result<crate::config::StaticCredential, String> {
    use super::runtime::auth_extras::StaticCredential as Wit;
    let short = |name: &str| !name.is_empty() && name.len() <= 64;
    Ok(match c {
        Wit::Authorization(scheme) => {
            if !crate::config::is_auth_scheme(scheme) {
                return Err(format!(
                    "\"{}\" is not an authorization scheme (letters, digits and !#$%&'*+-.^_`|~)",
                    clip(scheme)
                ));
            }
            crate::config::StaticCredential::Authorization(scheme.clone())
        }
        Wit::Header(name) => {
            let header = HeaderName::try_from(name.as_str())
                .ok()
                .filter(|_| short(name))
                .ok_or_else(|| format!("\"{}\" is not a header name", clip(name)))?;
            if let Some(why) = crate::headers::refused_as_credential(&header) {
                return Err(why);
            }
            crate::config::StaticCredential::Header(header.as_str().to_owned())
        }
        Wit::Query(name) => {
            if !(short(name)
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)))
            {
                return Err(format!(
                    "\"{}\" is not a query parameter name (letters, digits, '_', '.', '-')",
                    clip(name)
                ));
            }
            crate::config::StaticCredential::Query(name.clone())
        }
    })
}

/// The answers the plugin calls `ok` by their first member (`classify-markers`),
/// checked: the plugin classifies answers and sees some of their body, each marker's
/// statuses are ranges within 100-599, its member a plain name and its value a JSON
/// scalar written without escapes, all bounded.
pub(super) fn ok_markers(
    defaults: &types::ProviderDefaults,
    declared: &[super::runtime::DeclaredOkMarker],
) -> Result<Vec<super::markers::OkMarker>, String> {
    if declared.is_empty() {
        return Ok(Vec::new());
    }
    if !defaults.hooks.contains(&types::Hook::ClassifyResponse) || defaults.classify_body_bytes == 0
    {
        return Err(
            "ok markers need the classify-response hook and a classify-body-bytes above 0: a marker reads the body the plugin would be given"
                .to_owned(),
        );
    }
    if declared.len() > MAX_OK_MARKERS {
        return Err(format!(
            "{} ok markers; at most {MAX_OK_MARKERS}",
            declared.len()
        ));
    }
    declared.iter().map(|m| ok_marker(defaults, m)).collect()
}

fn ok_marker(
    defaults: &types::ProviderDefaults,
    m: &super::runtime::DeclaredOkMarker,
) -> Result<super::markers::OkMarker, String> {
    let what = format!("the ok marker for \"{}\"", clip(&m.member));
    if m.statuses.is_empty() || m.statuses.len() > MAX_MARKER_STATUSES {
        return Err(format!(
            "{what} has {} status ranges; 1 to {MAX_MARKER_STATUSES}",
            m.statuses.len()
        ));
    }
    if let Some((lo, hi)) = m
        .statuses
        .iter()
        .find(|(lo, hi)| !(100 <= *lo && lo <= hi && *hi <= 599))
    {
        return Err(format!(
            "{what} has the status range {lo}-{hi}; ranges run from low to high within 100-599"
        ));
    }
    // A marker for a status `classify-statuses` keeps from the plugin would never be
    // looked at: a mistake the author should hear of.
    let classified = &defaults.classify_statuses;
    if let Some(status) = (!classified.is_empty())
        .then(|| {
            m.statuses
                .iter()
                .flat_map(|&(lo, hi)| lo..=hi)
                .find(|s| !super::markers::in_ranges(classified, *s))
        })
        .flatten()
    {
        return Err(format!(
            "{what} covers status {status}, which classify-statuses does not send to classify-response"
        ));
    }
    let plain = |c: char| c != '"' && c != '\\' && !c.is_control();
    if m.member.is_empty() || m.member.len() > MAX_MARKER_TEXT || !m.member.chars().all(plain) {
        return Err(format!(
            "{what}: a member name is 1 to {MAX_MARKER_TEXT} bytes without '\"', '\\' or control characters"
        ));
    }
    let scalar = match serde_json::from_str::<serde_json::Value>(&m.value) {
        Ok(serde_json::Value::String(_)) => !m.value.contains('\\'),
        Ok(v) => !v.is_object() && !v.is_array(),
        Err(_) => false,
    };
    // The body is compared with the text byte for byte, so the text must be as compact
    // as a value in a body can be.
    if !scalar || m.value.len() > MAX_MARKER_TEXT || m.value.trim() != m.value {
        return Err(format!(
            "{what}: the value \"{}\" is not a JSON scalar as a provider writes it (true, false, null, a number, or a string without escapes; at most {MAX_MARKER_TEXT} bytes)",
            clip(&m.value)
        ));
    }
    // The shortest body that opens with the marker: `{"member":value}`.
    let shortest = m.member.len() + m.value.len() + 5;
    if (defaults.classify_body_bytes as usize) < shortest {
        return Err(format!(
            "{what} needs at least {shortest} bytes of the body; classify-body-bytes is {}",
            defaults.classify_body_bytes
        ));
    }
    Ok(super::markers::OkMarker {
        statuses: m.statuses.clone(),
        member: m.member.as_str().into(),
        value: m.value.as_bytes().into(),
    })
}

/// Headers a plugin wants sent: valid, bounded, and allowed by the header policy.
pub(super) fn headers(
    plugin: &Plugin,
    headers: &[types::Header],
    credential_header: Option<&HeaderName>,
) -> Result<HeaderMap, CallError> {
    if headers.len() > MAX_SET_HEADERS {
        return Err(invalid(
            plugin,
            format!("{} headers set; at most {MAX_SET_HEADERS}", headers.len()),
        ));
    }
    let mut set = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name = header_name(plugin, name)?;
        if let Some(why) = crate::headers::refused_from_plugin(&name, credential_header) {
            return Err(invalid(plugin, why));
        }
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(invalid(
                plugin,
                format!(
                    "header \"{name}\" is {} bytes; at most {MAX_HEADER_VALUE_BYTES}",
                    value.len()
                ),
            ));
        }
        let value = HeaderValue::try_from(value.as_str()).map_err(|_| {
            invalid(
                plugin,
                format!("header \"{name}\" has a value not allowed in HTTP"),
            )
        })?;
        set.append(name, value);
    }
    Ok(set)
}

fn body(plugin: &Plugin, body: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, CallError> {
    match body {
        Some(b) if b.len() > MAX_BODY_BYTES => Err(invalid(
            plugin,
            format!(
                "a request body of {} bytes; at most {MAX_BODY_BYTES}",
                b.len()
            ),
        )),
        other => Ok(other),
    }
}

fn clip_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

pub(super) fn clip(s: &str) -> String {
    clip_to(s, 120)
}

#[cfg(test)]
mod tests {
    use super::super::runtime::auth_extras::StaticCredential as Wit;
    use super::{route_prefix, static_credential};

    #[test]
    fn route_prefixes_are_empty_or_whole_segments() {
        for good in ["", "/gmail", "/ex/jira", "/v1/users"] {
            assert!(route_prefix(good), "{good:?}");
        }
        for bad in [
            "gmail", "/gmail/", "/", "//gmail", "/a//b", "/a?b", "/a#b", "/a\nb",
        ] {
            assert!(!route_prefix(bad), "{bad:?}");
        }
        assert!(!route_prefix(&format!(
            "/{}",
            "a".repeat(super::MAX_URL_BYTES)
        )));
    }
    /// A route's query parameters are written into the query as they are, so each part
    /// must neither split a parameter nor be changed by the URL parser.
    #[test]
    fn route_query_parts_need_no_encoding() {
        for good in ["", "key", "a1B2", "-._~!$()*+,;:@/?", "%2F%c3%A9", "v%20"] {
            assert!(super::query_part(good), "{good:?}");
        }
        for bad in [
            "a&b", "a=b", "a b", "a#b", "%", "%2", "%zz", "é", "a'b", "a\"b", "<", "\n",
        ] {
            assert!(!super::query_part(bad), "{bad:?}");
        }
    }

    /// What a marker may say (WIT 0.1.5), and that a plugin that cannot honour one is
    /// told why at load.
    #[test]
    fn ok_markers_are_plain_names_scalar_values_and_bounded_status_ranges() {
        use super::super::runtime::{DeclaredOkMarker, types};
        let defaults = |hooks: Vec<types::Hook>, bytes: u32| types::ProviderDefaults {
            hooks,
            classify_body_bytes: bytes,
            ..super::super::registry::example_defaults()
        };
        let classifies = defaults(vec![types::Hook::ClassifyResponse], 1024);
        let marker = |statuses: &[(u16, u16)], member: &str, value: &str| DeclaredOkMarker {
            statuses: statuses.to_vec(),
            member: member.into(),
            value: value.into(),
        };
        for value in [
            "true",
            "false",
            "null",
            "0",
            "-1.5e3",
            "\"success\"",
            "\"\"",
        ] {
            let m = marker(&[(200, 299), (304, 304)], "ok", value);
            let checked = super::ok_markers(&classifies, std::slice::from_ref(&m));
            assert!(checked.is_ok(), "{value}: {checked:?}");
        }
        assert_eq!(
            super::ok_markers(&defaults(Vec::new(), 0), &[]),
            Ok(Vec::new())
        );
        let refused = |d: &types::ProviderDefaults, markers: &[DeclaredOkMarker], why: &str| {
            let err = super::ok_markers(d, markers).expect_err(why);
            assert!(err.contains(why), "{err:?} should say {why:?}");
        };
        let ok = marker(&[(200, 299)], "ok", "true");
        refused(
            &defaults(Vec::new(), 1024),
            std::slice::from_ref(&ok),
            "classify-response hook",
        );
        refused(
            &defaults(vec![types::Hook::ClassifyResponse], 0),
            std::slice::from_ref(&ok),
            "above 0",
        );
        refused(&classifies, &vec![ok; 9], "at most 8");
        for statuses in [&[][..], &[(200, 299); 9]] {
            refused(
                &classifies,
                &[marker(statuses, "ok", "true")],
                "status ranges; 1 to 8",
            );
        }
        let errors_only = types::ProviderDefaults {
            classify_statuses: vec![(400, 599)],
            ..classifies.clone()
        };
        refused(
            &errors_only,
            &[marker(&[(200, 299)], "ok", "true")],
            "covers status 200, which classify-statuses does not send",
        );
        assert!(super::ok_markers(&errors_only, &[marker(&[(404, 404)], "ok", "true")]).is_ok());
        let short = types::ProviderDefaults {
            classify_body_bytes: 10,
            ..classifies.clone()
        };
        refused(
            &short,
            &[marker(&[(200, 200)], "ok", "true")],
            "needs at least 11 bytes of the body; classify-body-bytes is 10",
        );
        for range in [(99, 200), (200, 600), (300, 200)] {
            refused(
                &classifies,
                &[marker(&[range], "ok", "true")],
                "within 100-599",
            );
        }
        for member in ["", "o\"k", "o\\k", "o\nk", &"m".repeat(65)] {
            refused(
                &classifies,
                &[marker(&[(200, 200)], member, "true")],
                "a member name",
            );
        }
        for value in [
            "",
            "True",
            " true",
            "true ",
            "{}",
            "[true]",
            "\"a\\\"b\"",
            "\"\\u0041\"",
            "tru",
            &format!("\"{}\"", "v".repeat(63)),
        ] {
            refused(
                &classifies,
                &[marker(&[(200, 200)], "ok", value)],
                "not a JSON scalar",
            );
        }
    }

    use crate::config::StaticCredential;

    /// The URL rule of `shape-request` answers and of requests a route covers.
    #[test]
    fn a_url_goes_to_the_connectors_origin_or_https_on_a_declared_host_never_with_credentials() {
        let manifest =
            crate::plugins::manifest::Manifest::parse(crate::plugins::manifest::EXAMPLE, "acme")
                .expect("manifest");
        let base = url::Url::parse("http://proxy.internal:8443/acme/").expect("base");
        let check = |raw: &str| {
            let url = url::Url::parse(raw).expect("url");
            super::refusal(&manifest, &base, &url, raw)
        };
        for ok in [
            "http://proxy.internal:8443/acme/v1/x?q=1",
            "http://proxy.internal:8443/elsewhere",
            "https://api.acme.example/v2/items",
            "https://eu.acme.example/f/1",
        ] {
            assert_eq!(check(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("https://user:pw@api.acme.example/", "credentials"),
            ("http://user@proxy.internal:8443/acme/", "credentials"),
            ("http://api.acme.example/v2", "not https"),
            ("http://proxy.internal/acme/", "not https"),
            (
                "https://proxy.internal:8443/acme/",
                "outside the provider's declared hosts",
            ),
            (
                "https://evil.example/",
                "outside the provider's declared hosts",
            ),
            (
                "https://a.b.files.acme.example/",
                "outside the provider's declared hosts",
            ),
            (
                "https://api.acme.example.evil/",
                "outside the provider's declared hosts",
            ),
        ] {
            let refused = check(bad).unwrap_or_else(|| panic!("{bad} must be refused"));
            assert!(refused.contains(why), "{bad}: {refused}");
        }
    }

    #[test]
    fn a_static_credential_goes_only_where_a_credential_can() {
        assert_eq!(
            static_credential(&Wit::Authorization("Bot".into())),
            Ok(StaticCredential::Authorization("Bot".into()))
        );
        assert_eq!(
            static_credential(&Wit::Header("X-Figma-Token".into())),
            Ok(StaticCredential::Header("x-figma-token".into()))
        );
        assert_eq!(
            static_credential(&Wit::Query("token".into())),
            Ok(StaticCredential::Query("token".into()))
        );
        for (bad, why) in [
            (
                Wit::Authorization("Bot x".into()),
                "not an authorization scheme",
            ),
            (
                Wit::Authorization(String::new()),
                "not an authorization scheme",
            ),
            (
                Wit::Header("authorization".into()),
                "cannot carry a credential",
            ),
            (Wit::Header("cookie".into()), "cannot carry a credential"),
            (
                Wit::Header("content-length".into()),
                "cannot carry a credential",
            ),
            (Wit::Header("x bad".into()), "not a header name"),
            (Wit::Header("x".repeat(65)), "not a header name"),
            (Wit::Query("a&b=c".into()), "not a query parameter name"),
            (Wit::Query(String::new()), "not a query parameter name"),
        ] {
            let got = static_credential(&bad);
            assert!(
                got.as_ref().is_err_and(|e| e.contains(why)),
                "{bad:?}: {got:?}"
            );
        }
    }
}
