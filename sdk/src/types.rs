//! The WIT types, with constructors and helpers so plugins read as provider facts rather
//! than plumbing.

pub use crate::bindings::portcullis::provider::types::{
    Choice, Classification, ClientAuth, Context, Discovery, Header, Hook, Input, Method,
    OauthDefaults, OutgoingRequest, PkcePolicy, PluginError, ProviderDefaults, RefreshPolicy,
    Request, Response, Selection, ShapedRequest, TokenError, TokenGrant, TokenInfo, Tool,
    ToolRequest, Variable,
};

/// What [`crate::Provider::defaults`] returns.
pub type Defaults = ProviderDefaults;

impl ProviderDefaults {
    /// Defaults with no OAuth, no inputs and no hooks; fill in the rest with struct update
    /// syntax or by assigning fields.
    pub fn new(id: &str, display_name: &str, api_url: &str) -> Self {
        Self {
            id: id.to_owned(),
            display_name: display_name.to_owned(),
            description: String::new(),
            docs_url: None,
            api_url: api_url.to_owned(),
            mcp_url: None,
            oauth: None,
            inputs: Vec::new(),
            hooks: Vec::new(),
            classify_body_bytes: 0,
            classify_statuses: Vec::new(),
        }
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
}

impl ToolRequest {
    pub fn get(path: &str, query: Option<String>) -> Self {
        Self {
            method: Method::Get,
            path: path.to_owned(),
            query,
            headers: Vec::new(),
            body: None,
        }
    }

    /// A POST with a JSON body.
    pub fn post_json(path: &str, body: &serde_json::Value) -> Self {
        Self {
            method: Method::Post,
            path: path.to_owned(),
            query: None,
            headers: vec![(
                "content-type".to_owned(),
                "application/json; charset=utf-8".to_owned(),
            )],
            body: Some(body.to_string().into_bytes()),
        }
    }
}

impl Request {
    /// A GET the host authenticates with the connection's first grant.
    pub fn get(url: String) -> Self {
        Self {
            method: Method::Get,
            url,
            headers: vec![("accept".to_owned(), "application/json".to_owned())],
            body: None,
            grant: None,
        }
    }
}

/// The value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `Retry-After` in seconds, when it is a number.
pub fn retry_after_secs(headers: &[Header]) -> Option<u32> {
    header(headers, "retry-after").and_then(|v| v.trim().parse().ok())
}

/// The host's generic reading of a response: 429 rate limited, 401 re-auth, 502/503/504
/// retryable, everything else fine.
pub fn classify_by_status(status: u16, headers: &[Header]) -> Classification {
    match status {
        429 => Classification::RateLimited(retry_after_secs(headers)),
        401 => Classification::Reauth("the provider rejected the token (401)".to_owned()),
        502..=504 => Classification::Retry(retry_after_secs(headers).map(|s| s * 1000)),
        _ => Classification::Ok,
    }
}

/// The RFC 6749 §5.2 reading of a token response: an `error` member is a failure
/// (`invalid_grant` means the user must connect again); anything else carries no extra
/// variables.
pub fn standard_token_response(status: u16, body: &str) -> Result<TokenInfo, TokenError> {
    token_json(status, body)?;
    Ok(TokenInfo {
        variables: Vec::new(),
        expires_in: None,
    })
}

/// A successful token response as JSON, for plugins that read more from it; the same
/// checks as [`standard_token_response`].
pub fn token_json(status: u16, body: &str) -> Result<serde_json::Value, TokenError> {
    let json: serde_json::Value = serde_json::from_str(body).map_err(|e| {
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

/// An RFC 6749 error object (`{"error": "...", "error_description": "..."}`), if `json`
/// is one.
pub fn oauth_error(json: &serde_json::Value) -> Option<TokenError> {
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
