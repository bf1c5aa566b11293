//! What hooks take and return, with builders so plugins read as provider facts rather
//! than plumbing.
//!
//! Most types are the WIT records themselves. Five are the SDK's own, converted at the
//! component boundary, so an author works with typed values where the wire has text
//! or mixed units: [`Defaults`] (no identity or hook list: those are derived),
//! [`Tool`] and [`Args`] (JSON as `serde_json::Value`, JSON text on the wire),
//! [`Classification`] and [`TokenInfo`] (times as [`Duration`]; the wire has retry
//! delays in milliseconds, rate limits and token lifetimes in seconds).

use std::fmt::Display;
use std::ops::{Deref, RangeInclusive};
use std::time::Duration;

use serde_json::Value;

pub use crate::bindings::portcullis::provider::types::{
    Choice, ClientAuth, Context, Discovery, Header, Hook, Input, Method, OauthDefaults,
    OutgoingRequest, PkcePolicy, PluginError, RefreshPolicy, Request, Response, Selection,
    ShapedRequest, TokenError, TokenGrant, ToolRequest, Variable,
};

/// The wire types the SDK's own types convert to; plugins do not need them.
pub mod wit {
    pub use crate::bindings::portcullis::provider::types::{
        Classification, ProviderDefaults, TokenInfo, Tool,
    };
}

/// What [`crate::Provider::defaults`] returns: what the picker pre-fills and what the
/// host needs to run the provider. The id, display name and description are the
/// manifest's and the hook list is derived from the impl; the export adds them.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// API base URL, pre-filled as an HTTP connector's `url`.
    pub api_url: String,
    pub docs_url: Option<String>,
    /// The provider's remote MCP server, when it has one.
    pub mcp_url: Option<String>,
    pub oauth: Option<OauthDefaults>,
    /// Variables an operator sets in `provider_vars`.
    pub inputs: Vec<Input>,
    /// How many bytes of a response body `classify_response` sees (0: none).
    pub classify_body_bytes: u32,
    /// Statuses `classify_response` is called for; empty means every response.
    pub classify_statuses: Vec<RangeInclusive<u16>>,
    /// How the provider's OAuth endpoints want their requests (WIT `oauth-extras`).
    pub oauth_requests: OauthRequests,
    /// Products listed in the picker as entries of their own (WIT `catalog`).
    pub entries: Vec<Entry>,
    /// Where refresh grants go when not the token URL (WIT `auth-extras`).
    pub refresh_url: Option<String>,
    /// How the provider's static credential is sent (WIT `auth-extras`).
    pub static_credential: Option<StaticCredential>,
    /// Inputs that fill `{name}` in the OAuth URLs (WIT `auth-extras`).
    pub url_inputs: Vec<String>,
    /// Answers the host calls `ok` without a `classify_response` call (WIT
    /// `classify-markers`).
    pub ok_markers: Vec<OkMarker>,
}

/// An answer the host calls `ok` itself, without calling `classify_response`: its status
/// is in `statuses` and its body opens with `member` set to `value` (the first member of
/// a JSON object). Exported as `classify-markers` (WIT 0.1.5). Added with
/// [`Defaults::ok_when`].
pub use crate::bindings::exports::portcullis::provider::classify_markers::OkMarker;

/// How a token the operator pastes (a bot token, a personal access token) is sent:
/// `Authorization(scheme)`, `Header(name)` or `Query(name)`. The host injects it; the
/// plugin never sees it. Exported as `auth-extras` (WIT 0.1.2).
pub use crate::bindings::exports::portcullis::provider::auth_extras::StaticCredential;

/// A header a [`Route`] sends unless the agent chose its own value.
pub use crate::bindings::exports::portcullis::provider::routes_v2::DefaultHeader;
/// The header an agent picks a [`Route`]'s grant with, and each value's grant.
pub use crate::bindings::exports::portcullis::provider::routes_v2::GrantHeader;
/// A path prefix whose requests the host shapes itself (WIT 0.1.3 `routes`, widened in
/// 0.1.4 `routes-v2`): the prefix is replaced by `target`, the query follows (with the
/// route's own parameters in place of the agent's of those names), default headers are
/// sent unless the agent chose its own value, and a grant header picks the grant.
/// Returned by [`crate::Provider::request_routes`]. Build it with the methods below: its
/// fields are the WIT record's and grow with it (0.1.4 added `query` and
/// `grant_header`, and gave each default header its `unless`).
pub use crate::bindings::exports::portcullis::provider::routes_v2::Route;

impl Route {
    /// `prefix`: empty (every path) or `/segment[/segment...]` without a trailing `/`;
    /// `target`: the absolute URL that replaces it.
    pub fn new(prefix: &str, target: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            target: target.to_owned(),
            default_headers: Vec::new(),
            query: Vec::new(),
            grant_header: None,
        }
    }

    /// Sends `name: value` when the agent's request has no `name` header.
    pub fn default_header(self, name: &str, value: &str) -> Self {
        self.default_header_unless(name, value, &[])
    }

    /// Sends `name: value` when the agent's request has no `name` header, or its first
    /// one's value (trimmed) is in `unless`: GitHub's `accept` in place of `*/*`. Needs
    /// WIT 0.1.4 when `unless` is not empty.
    pub fn default_header_unless(mut self, name: &str, value: &str, unless: &[&str]) -> Self {
        self.default_headers.push(DefaultHeader {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
            unless: unless.iter().map(|u| (*u).to_owned()).collect(),
        });
        self
    }

    /// Sets `name=value` in the query of every request the route covers, dropping any
    /// parameter of that name the agent sent (compared as sent) and empty ones; set
    /// parameters follow the agent's, in order. Both parts must be letters, digits,
    /// `-._~!$()*+,;:@/?` and `%`-escapes ([`crate::percent_encode`] makes any text so):
    /// the host refuses other routes. Needs WIT 0.1.4.
    pub fn query_param(mut self, name: &str, value: &str) -> Self {
        self.query.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Lets the agent pick the grant with header `name`, which is removed from every
    /// request the route covers: each of `values` (the header's first value, trimmed)
    /// picks its grant (`None`: the first), a request without the header gets the first,
    /// and one with a value not listed is not covered, so `shape_request` decides. Needs
    /// WIT 0.1.4.
    pub fn grant_header(mut self, name: &str, values: &[(&str, Option<&str>)]) -> Self {
        self.grant_header = Some(GrantHeader {
            name: name.to_ascii_lowercase(),
            values: values
                .iter()
                .map(|(v, g)| ((*v).to_owned(), g.map(str::to_owned)))
                .collect(),
        });
        self
    }

    /// Whether 0.1.3's `routes` can say this route (a host before 0.1.4 asks only that).
    pub(crate) fn fits_v1(&self) -> bool {
        self.query.is_empty()
            && self.grant_header.is_none()
            && self.default_headers.iter().all(|d| d.unless.is_empty())
    }
}

/// A product users meet on its own (Google's Gmail, Drive, Calendar, Sheets), listed in
/// the picker as `<provider>/<key>` with its own URL and scopes. Connectors made from
/// it use this provider, so several of them with one OAuth client share a connection.
pub use crate::bindings::exports::portcullis::provider::catalog::Entry;

impl Entry {
    /// `key`: `[a-z][a-z0-9-]*`, unique within the plugin.
    pub fn new(key: &str, name: &str, description: &str, api_url: &str) -> Self {
        Self {
            key: key.to_owned(),
            display_name: name.to_owned(),
            description: description.to_owned(),
            api_url: api_url.to_owned(),
            scopes: Vec::new(),
        }
    }

    /// Its default scopes (instead of the provider's; none set: the provider's).
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
}

/// How a provider's token and revocation endpoints want their requests, beyond RFC
/// 6749's form: a JSON body (Notion) and headers every such request carries
/// (`Notion-Version`). Exported as `oauth-extras` (WIT 0.1.1).
#[derive(Clone, Debug, Default)]
pub struct OauthRequests {
    /// A JSON object with the form's members instead of the form.
    pub json: bool,
    pub headers: Vec<Header>,
}

impl Defaults {
    /// No OAuth, no inputs, every status classified with no body.
    pub fn new(api_url: impl Into<String>) -> Self {
        Self {
            api_url: api_url.into(),
            docs_url: None,
            mcp_url: None,
            oauth: None,
            inputs: Vec::new(),
            classify_body_bytes: 0,
            classify_statuses: Vec::new(),
            oauth_requests: OauthRequests::default(),
            entries: Vec::new(),
            refresh_url: None,
            static_credential: None,
            url_inputs: Vec::new(),
            ok_markers: Vec::new(),
        }
    }

    /// Input `name` fills `{name}` in the authorization and token URLs of connectors made
    /// from the provider (Microsoft's `tenant`); it must be declared with
    /// [`Defaults::input`] and have a default. The value an operator sets must be letters,
    /// digits, `.`, `_` and `-`, so it stays one URL segment.
    pub fn oauth_url_input(mut self, name: &str) -> Self {
        self.url_inputs.push(name.to_owned());
        self
    }

    /// Refresh grants go here instead of the token URL (Figma's `/v1/oauth/refresh`);
    /// https, on the manifest's `allowed_hosts`.
    pub fn refresh_url(mut self, url: impl Into<String>) -> Self {
        self.refresh_url = Some(url.into());
        self
    }

    /// The provider issues tokens an operator pastes, sent this way (a Discord bot
    /// token: `StaticCredential::Authorization("Bot".into())`). A connector made from the
    /// provider with a token instead of an OAuth client uses it.
    pub fn static_credential(mut self, how: StaticCredential) -> Self {
        self.static_credential = Some(how);
        self
    }

    /// Lists a product as a picker entry of its own ([`Entry`]).
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    /// The token and revocation endpoints take a JSON object with the form's members
    /// instead of a form (Notion).
    pub fn json_oauth_requests(mut self) -> Self {
        self.oauth_requests.json = true;
        self
    }

    /// A header every token and revocation request carries (Notion's `Notion-Version`).
    /// Credential headers are refused by the host.
    pub fn oauth_request_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.oauth_requests
            .headers
            .push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn docs_url(mut self, url: impl Into<String>) -> Self {
        self.docs_url = Some(url.into());
        self
    }

    pub fn mcp_url(mut self, url: impl Into<String>) -> Self {
        self.mcp_url = Some(url.into());
        self
    }

    pub fn oauth(mut self, oauth: OauthDefaults) -> Self {
        self.oauth = Some(oauth);
        self
    }

    /// Adds an input (`Input::new(name, description)`).
    pub fn input(mut self, input: Input) -> Self {
        self.inputs.push(input);
        self
    }

    /// Calls `classify_response` only for these statuses (`[400..=599]` for errors
    /// only); each status skipped saves a plugin call per request.
    pub fn classify_statuses(
        mut self,
        ranges: impl IntoIterator<Item = RangeInclusive<u16>>,
    ) -> Self {
        self.classify_statuses = ranges.into_iter().collect();
        self
    }

    /// How much of a response body `classify_response` sees.
    pub fn classify_body_bytes(mut self, bytes: u32) -> Self {
        self.classify_body_bytes = bytes;
        self
    }

    /// Answers with a status in `statuses` whose JSON body opens with `member` set to
    /// `value` are `ok`, and the host says so without calling `classify_response` (WIT
    /// 0.1.5 `classify-markers`): Slack's `.ok_when([200..=299], "ok", true)` saves a
    /// call on every successful answer. `value` is compared as the provider writes it: a
    /// boolean, null, an integer or a string without escapes (the host refuses a marker
    /// with any other value when it loads the plugin).
    ///
    /// The host reads the body's first member and nothing else: not the headers, not a
    /// later member of the same name, not whether the rest is well-formed JSON or was
    /// cut off at [`Defaults::classify_body_bytes`]. So `classify_response` must call
    /// `ok` every answer whose first member matches, whatever follows; the fixture
    /// harness checks each recorded answer a marker matches, and fails a plugin with a
    /// marker that no `classify_response` case matches. The statuses must be
    /// among those [`Defaults::classify_statuses`] sends to `classify_response`. A host
    /// before 0.1.5 calls the plugin as before.
    pub fn ok_when(
        mut self,
        statuses: impl IntoIterator<Item = RangeInclusive<u16>>,
        member: &str,
        value: impl Into<Value>,
    ) -> Self {
        self.ok_markers.push(OkMarker {
            statuses: statuses
                .into_iter()
                .map(|r| (*r.start(), *r.end()))
                .collect(),
            member: member.to_owned(),
            value: value.into().to_string(),
        });
        self
    }
}

impl OauthDefaults {
    /// Authorization code with the RFC 6749 token layout, space-separated scopes, PKCE
    /// sent, client secret in HTTP Basic, no revocation endpoint.
    pub fn new(authorization_url: &str, token_url: &str) -> Self {
        Self {
            authorization_url: authorization_url.to_owned(),
            token_url: token_url.to_owned(),
            revocation_url: None,
            scopes: Vec::new(),
            scope_separator: " ".to_owned(),
            auth_params: Vec::new(),
            user_scope_param: None,
            pkce: PkcePolicy::Supported,
            client_auth: ClientAuth::Basic,
            grants: Vec::new(),
            refresh: RefreshPolicy {
                rotates_refresh_token: false,
                keeps_refresh_token: false,
            },
            dynamic_registration: false,
        }
    }

    pub fn revocation_url(mut self, url: &str) -> Self {
        self.revocation_url = Some(url.to_owned());
        self
    }

    /// Default scopes, pre-filled as editable chips.
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// `","` for Slack; `" "` (the default) for most providers.
    pub fn scope_separator(mut self, separator: &str) -> Self {
        self.scope_separator = separator.to_owned();
        self
    }

    /// Adds an authorize-request parameter (`audience`, `access_type`, `prompt`).
    pub fn auth_param(mut self, name: &str, value: &str) -> Self {
        self.auth_params.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The parameter for user scopes (Slack `user_scope`).
    pub fn user_scope_param(mut self, name: &str) -> Self {
        self.user_scope_param = Some(name.to_owned());
        self
    }

    pub fn pkce(mut self, policy: PkcePolicy) -> Self {
        self.pkce = policy;
        self
    }

    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    /// Adds a token grant: where one token sits in a token response.
    pub fn grant(mut self, grant: TokenGrant) -> Self {
        self.grants.push(grant);
        self
    }

    /// Each refresh returns a new refresh token and invalidates the old (Atlassian).
    pub fn rotates_refresh_token(mut self) -> Self {
        self.refresh.rotates_refresh_token = true;
        self
    }

    /// A refresh response without a refresh token keeps the old one (Google).
    pub fn keeps_refresh_token(mut self) -> Self {
        self.refresh.keeps_refresh_token = true;
        self
    }
}

impl TokenGrant {
    /// A grant at the RFC 6749 top-level fields, named `name`.
    pub fn standard(name: &str) -> Self {
        Self::at(name, "")
    }

    /// A grant whose fields sit under the JSON pointer `prefix` (`/authed_user`).
    pub fn at(name: &str, prefix: &str) -> Self {
        Self {
            name: name.to_owned(),
            access_token: format!("{prefix}/access_token"),
            refresh_token: Some(format!("{prefix}/refresh_token")),
            expires_in: Some(format!("{prefix}/expires_in")),
            scope: Some(format!("{prefix}/scope")),
            required: true,
        }
    }

    /// A response may lack this grant.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// The response never says when the token expires (Salesforce): the lifetime comes
    /// from [`TokenInfo::expires_in`].
    pub fn without_expires_in(mut self) -> Self {
        self.expires_in = None;
        self
    }
}

impl Input {
    /// An input with no default.
    pub fn new(name: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            default_value: None,
        }
    }

    pub fn default_value(mut self, value: &str) -> Self {
        self.default_value = Some(value.to_owned());
        self
    }
}

impl Context {
    /// The value of a connection variable.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.variables
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Header building for the request descriptions a plugin returns
/// ([`ShapedRequest`], [`ToolRequest`], [`Request`]). Names are lower-cased, as the
/// WIT expects.
///
/// ```ignore
/// ShapedRequest::join(&ctx.base_url, &req.path, None).header("accept", "application/json")
/// ```
pub trait WithHeaders: Sized {
    #[doc(hidden)]
    fn header_list(&mut self) -> &mut Vec<Header>;

    /// Sets header `name` to `value`.
    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.header_list()
            .push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

impl WithHeaders for ShapedRequest {
    fn header_list(&mut self) -> &mut Vec<Header> {
        &mut self.set_headers
    }
}

impl WithHeaders for ToolRequest {
    fn header_list(&mut self) -> &mut Vec<Header> {
        &mut self.headers
    }
}

impl WithHeaders for Request {
    fn header_list(&mut self) -> &mut Vec<Header> {
        &mut self.headers
    }
}

impl ShapedRequest {
    /// Send to `url` with no header changes and the first grant.
    pub fn to(url: String) -> Self {
        Self {
            url,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            grant: None,
        }
    }

    /// Send to `base` + `path` (+ `?query`); see [`crate::join_url`].
    pub fn join(base: &str, path: &str, query: Option<&str>) -> Self {
        Self::to(crate::join_url(base, path, query))
    }

    /// Do not forward the agent's header `name`.
    pub fn remove_header(mut self, name: &str) -> Self {
        self.remove_headers.push(name.to_ascii_lowercase());
        self
    }

    /// Inject the token of this grant (Slack `user`) instead of the first.
    pub fn grant(mut self, grant: &str) -> Self {
        self.grant = Some(grant.to_owned());
        self
    }
}

impl ToolRequest {
    /// A request to `path` (relative to the connector) with no query, headers or body.
    pub fn new(method: Method, path: &str) -> Self {
        Self {
            method,
            path: path.to_owned(),
            query: None,
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new(Method::Get, path)
    }

    pub fn post(path: &str) -> Self {
        Self::new(Method::Post, path)
    }

    /// Adds `name=value` to the query, percent-encoded.
    pub fn query(mut self, name: &str, value: impl Display) -> Self {
        crate::url::push_query_pair(&mut self.query, name, &value.to_string());
        self
    }

    /// Adds `name=value` when there is a value.
    pub fn query_opt(self, name: &str, value: Option<impl Display>) -> Self {
        match value {
            Some(v) => self.query(name, v),
            None => self,
        }
    }

    /// A JSON body, with its content type.
    pub fn json(mut self, body: &Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self.header("content-type", "application/json; charset=utf-8")
    }
}

impl Request {
    /// A GET asking for JSON, which the host authenticates with the connection's first
    /// grant.
    pub fn get(url: String) -> Self {
        Self {
            method: Method::Get,
            url,
            headers: Vec::new(),
            body: None,
            grant: None,
        }
        .header("accept", "application/json")
    }

    /// Authenticate with this grant instead of the first.
    pub fn grant(mut self, grant: &str) -> Self {
        self.grant = Some(grant.to_owned());
        self
    }
}

/// A tool the provider offers on top of its HTTP API, listed to agents as
/// `<connector>_<name>`.
#[derive(Clone, Debug)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub input_schema: Value,
    /// Reading only: MCP clients may run it without asking.
    pub read_only: bool,
}

impl Tool {
    /// A tool that may change things; see [`Tool::read_only`].
    pub fn new(name: &str, description: &str, input_schema: Value) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            input_schema,
            read_only: false,
        }
    }

    /// The tool only reads.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }
}

/// A tool call's arguments: the JSON object the agent sent. Derefs to
/// [`serde_json::Value`]; the helpers return the errors a model can act on.
#[derive(Clone, Debug, PartialEq)]
pub struct Args(Value);

impl Args {
    /// Parses the arguments text the host sends.
    pub fn parse(json: &str) -> Result<Self, PluginError> {
        serde_json::from_str(json)
            .map(Self)
            .map_err(|e| PluginError::InvalidInput(format!("arguments are not JSON: {e}")))
    }

    /// A string argument.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// A string argument that must be there: `"key" is required` otherwise.
    pub fn require_str(&self, key: &str) -> Result<&str, PluginError> {
        self.str(key)
            .ok_or_else(|| PluginError::InvalidInput(format!("\"{key}\" is required")))
    }

    /// A non-negative integer argument.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.0.get(key).and_then(Value::as_u64)
    }

    /// An id made of digits (a Zoom meeting number, an Asana gid, a Discord snowflake),
    /// as a string or a JSON integer, so it stays one path segment or query value.
    /// `what` names it in the error: `"task" must be an Asana gid (digits), not "x"`.
    pub fn digits(&self, key: &str, what: &str) -> Result<String, PluginError> {
        let id = match self.0.get(key) {
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(Value::Number(n)) if n.is_u64() => n.to_string(),
            None | Some(Value::Null) => {
                return Err(PluginError::InvalidInput(format!("\"{key}\" is required")));
            }
            Some(other) => other.to_string(),
        };
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_digit()) {
            // What the agent sent, shortened: it may be a whole object.
            let shown: String = id.chars().take(64).collect();
            let more = if shown.len() < id.len() { "…" } else { "" };
            return Err(PluginError::InvalidInput(format!(
                "\"{key}\" must be {what} (digits), not \"{shown}{more}\""
            )));
        }
        Ok(id)
    }

    /// A string argument that must be one of `allowed`; `default` when it is absent
    /// (`None`: required). The errors name the allowed values.
    pub fn one_of<'a>(
        &self,
        key: &str,
        allowed: &[&'a str],
        default: Option<&'a str>,
    ) -> Result<&'a str, PluginError> {
        let value = match self.0.get(key) {
            None | Some(Value::Null) => {
                return default
                    .ok_or_else(|| PluginError::InvalidInput(format!("\"{key}\" is required")));
            }
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(PluginError::InvalidInput(format!(
                    "\"{key}\" must be one of {}",
                    allowed.join(", ")
                )));
            }
        };
        allowed
            .iter()
            .copied()
            .find(|a| *a == value)
            .ok_or_else(|| {
                PluginError::InvalidInput(format!(
                    "\"{key}\" must be one of {}, not \"{value}\"",
                    allowed.join(", ")
                ))
            })
    }
}

impl Deref for Args {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.0
    }
}

impl From<Value> for Args {
    fn from(v: Value) -> Self {
        Self(v)
    }
}

/// The error for a tool this provider does not have.
pub fn unknown_tool(name: &str) -> PluginError {
    PluginError::InvalidInput(format!("unknown tool \"{name}\""))
}

/// What an upstream response means, beyond its status.
#[derive(Clone, Debug, PartialEq)]
pub enum Classification {
    Ok,
    /// Transient failure: retry, after this long if known.
    Retry(Option<Duration>),
    /// Rate limited: retry after this long, if known.
    RateLimited(Option<Duration>),
    /// The token was rejected or revoked: refresh, or ask the user to re-connect.
    Reauth(String),
    /// The provider reported a failure inside a success status (Slack `ok:false`).
    Failed(String),
}

/// What a token response says besides the tokens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenInfo {
    /// Variables to keep (Salesforce `instance_url`, Slack `team_id`); re-read on
    /// every refresh.
    pub variables: Vec<Variable>,
    /// The token's lifetime when the response has no `expires_in` (Salesforce).
    pub expires_in: Option<Duration>,
}

impl TokenInfo {
    /// Keeps a variable.
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.variables.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Keeps each `(name, JSON pointer)` of `json` that is a string, as a variable
    /// (Slack's `("team_id", "/team/id")`); missing or non-string values are skipped.
    pub fn vars_at(self, json: &Value, pointers: &[(&str, &str)]) -> Self {
        pointers.iter().fold(self, |info, (name, pointer)| {
            match json.pointer(pointer).and_then(Value::as_str) {
                Some(v) => info.var(name, v),
                None => info,
            }
        })
    }

    pub fn expires_in(mut self, lifetime: Duration) -> Self {
        self.expires_in = Some(lifetime);
        self
    }
}

/// `value` with only the members `fields` name (`"id"`, or `"author.username"` for a
/// nested one), element by element for an array: a tool answer trimmed to what a model
/// needs. Members that are absent stay absent; anything not an object passes as it is.
pub fn pick(value: &Value, fields: &[&str]) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(|v| pick(v, fields)).collect()),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (i, field) in fields.iter().enumerate() {
                let head = field.split_once('.').map_or(*field, |(head, _)| head);
                // A member is taken once, at its first mention, with all its parts.
                if out.contains_key(head) {
                    continue;
                }
                let Some(v) = map.get(head) else { continue };
                let later = &fields[i..];
                let whole = later.contains(&head);
                let parts: Vec<&str> = later
                    .iter()
                    .filter_map(|f| f.split_once('.').filter(|(h, _)| *h == head))
                    .map(|(_, rest)| rest)
                    .collect();
                let picked = if whole { v.clone() } else { pick(v, &parts) };
                out.insert(head.to_owned(), picked);
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// The value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `Retry-After`, when it is a number of seconds.
pub fn retry_after(headers: &[Header]) -> Option<Duration> {
    header(headers, "retry-after")
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs)
}

/// The host's generic reading of a response: 429 rate limited, 401 re-auth, 502/503/504
/// retryable, everything else fine.
pub fn classify_by_status(status: u16, headers: &[Header]) -> Classification {
    match status {
        429 => Classification::RateLimited(retry_after(headers)),
        401 => Classification::Reauth("the provider rejected the token (401)".to_owned()),
        502..=504 => Classification::Retry(retry_after(headers)),
        _ => Classification::Ok,
    }
}

/// The RFC 6749 §5.2 reading of a token response: an `error` member is a failure
/// (`invalid_grant` means the user must connect again); anything else carries no extra
/// variables.
pub fn standard_token_response(status: u16, body: &str) -> Result<TokenInfo, TokenError> {
    token_json(status, body)?;
    Ok(TokenInfo::default())
}

/// A successful token response as JSON, for plugins that read more from it; the same
/// checks as [`standard_token_response`].
pub fn token_json(status: u16, body: &str) -> Result<Value, TokenError> {
    let json: Value = serde_json::from_str(body).map_err(|e| {
        TokenError::Provider(format!(
            "the token response (HTTP {status}) is not JSON: {e}"
        ))
    })?;
    if let Some(err) = oauth_error(&json) {
        return Err(err);
    }
    if !(200..300).contains(&status) {
        return Err(TokenError::Provider(format!(
            "the token endpoint answered HTTP {status}"
        )));
    }
    Ok(json)
}

/// A provider's token-endpoint error in its own words, as `"<provider>: <code>: <detail>"`:
/// a dead grant (`dead`: a used, revoked or expired refresh token or code; the user must
/// connect again) or any other failure (the operator's to fix, or worth retrying).
pub fn token_error(provider: &str, code: &str, detail: Option<&str>, dead: bool) -> TokenError {
    let text = match detail {
        Some(d) => format!("{provider}: {code}: {d}"),
        None => format!("{provider}: {code}"),
    };
    if dead {
        TokenError::InvalidGrant(text)
    } else {
        TokenError::Provider(text)
    }
}

/// An RFC 6749 error object (`{"error": "...", "error_description": "..."}`), if `json`
/// is one.
pub fn oauth_error(json: &Value) -> Option<TokenError> {
    let code = json.get("error")?.as_str()?;
    let text = match json.get("error_description").and_then(|d| d.as_str()) {
        Some(d) => format!("{code}: {d}"),
        None => code.to_owned(),
    };
    Some(if code == "invalid_grant" {
        TokenError::InvalidGrant(text)
    } else {
        TokenError::Provider(text)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refusal(r: Result<impl std::fmt::Debug, PluginError>) -> String {
        match r {
            Err(PluginError::InvalidInput(m)) => m,
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    /// A marker's value goes to the host as the JSON text a provider writes, which the
    /// host compares byte for byte.
    #[test]
    fn ok_markers_carry_their_value_as_json_text() {
        let d = Defaults::new("https://api.example.com")
            .ok_when([200..=299], "ok", true)
            .ok_when([200..=200, 204..=204], "status", "success")
            .ok_when([200..=200], "code", 0);
        let written: Vec<_> = d
            .ok_markers
            .iter()
            .map(|m| (m.statuses.clone(), m.member.as_str(), m.value.as_str()))
            .collect();
        assert_eq!(
            written,
            [
                (vec![(200, 299)], "ok", "true"),
                (vec![(200, 200), (204, 204)], "status", "\"success\""),
                (vec![(200, 200)], "code", "0"),
            ]
        );
    }

    #[test]
    fn digits_take_strings_and_integers_and_refuse_anything_that_could_leave_a_segment() {
        let args = Args::from(json!({
            "s": " 1204 ", "n": 93123456789u64, "neg": -1, "path": "12/../x",
            "empty": "", "long": "1".repeat(33), "float": 1.5,
        }));
        assert_eq!(args.digits("s", "an id").ok().as_deref(), Some("1204"));
        assert_eq!(
            args.digits("n", "an id").ok().as_deref(),
            Some("93123456789")
        );
        for key in ["neg", "path", "empty", "long", "float"] {
            let m = refusal(args.digits(key, "an Asana gid"));
            assert!(
                m.starts_with(&format!("\"{key}\" must be an Asana gid (digits)")),
                "{m}"
            );
        }
        assert_eq!(
            refusal(args.digits("absent", "an id")),
            "\"absent\" is required"
        );
    }

    #[test]
    fn pick_keeps_the_named_members_nested_and_per_element() {
        let messages = json!([
            {"id": "1", "content": "hi", "author": {"id": "9", "username": "nelly", "avatar": "x"}, "embeds": []},
            {"id": "2", "content": "yo", "author": {"id": "8", "username": "ada"}, "flags": 0},
            "not an object"
        ]);
        assert_eq!(
            pick(
                &messages,
                &["id", "author.username", "author.id", "content", "missing"]
            ),
            json!([
                {"id": "1", "author": {"username": "nelly", "id": "9"}, "content": "hi"},
                {"id": "2", "author": {"username": "ada", "id": "8"}, "content": "yo"},
                "not an object"
            ])
        );
        assert_eq!(
            pick(&json!({"a": [{"b": 1, "c": 2}]}), &["a.b"]),
            json!({"a": [{"b": 1}]})
        );
    }

    #[test]
    fn one_of_names_the_allowed_values_and_applies_the_default() {
        let args = Args::from(json!({"kind": "doc", "bad": "x", "num": 3}));
        let allowed = ["doc", "email"];
        assert_eq!(args.one_of("kind", &allowed, None).ok(), Some("doc"));
        assert_eq!(
            args.one_of("absent", &allowed, Some("email")).ok(),
            Some("email")
        );
        assert_eq!(
            refusal(args.one_of("bad", &allowed, None)),
            "\"bad\" must be one of doc, email, not \"x\""
        );
        assert!(refusal(args.one_of("num", &allowed, None)).contains("must be one of"));
        assert_eq!(
            refusal(args.one_of("absent", &allowed, None)),
            "\"absent\" is required"
        );
    }
}
