//! OAuth 2.0 endpoint calls over the host's egress client: the client-credentials grant
//! (with the `oauth2` crate), and the raw token, revocation (RFC 7009), registration
//! (RFC 7591) and metadata (RFC 8414, RFC 9728) requests of per-user connections, whose
//! token responses a provider plugin may read in its own layout. An endpoint that
//! answers with a redirect is refused outright: following it would hand the client
//! secret (or a token) to wherever the redirect points.

use std::time::Duration;

use http_body_util::BodyExt;
use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};

use crate::egress::{Egress, EgressError};

/// Longest token endpoint answer read; real ones are well under a kilobyte or two.
const TOKEN_RESPONSE_MAX: usize = 256 * 1024;
/// A token endpoint gets this long to answer before the request fails.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a token could not be obtained. Messages never contain secrets or token bodies.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error(
        "the token endpoint {url} answered with a redirect{to}; Portcullis never follows redirects \
         from token endpoints (they would carry the client secret): set token_url to the \
         provider's canonical token endpoint"
    )]
    Redirect { url: String, to: String },
    #[error("the token endpoint {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the token endpoint {url} refused the request: {error}{description}")]
    Refused {
        url: String,
        error: String,
        description: String,
    },
    #[error("the token endpoint {url} sent an unreadable answer ({detail})")]
    BadResponse { url: String, detail: String },
    #[error(
        "no token endpoint could be discovered for {resource}: {detail}; set the connector's token_url"
    )]
    Undiscovered { resource: String, detail: String },
}

impl TokenError {
    /// This error with every spelling of the client's secret removed from its text.
    pub fn without(self, client_id: &str, secret: &str) -> Self {
        let clean = |s: String| crate::redact::known(&s, Some(client_id), &[secret]);
        match self {
            Self::Redirect { url, to } => Self::Redirect { url, to: clean(to) },
            Self::Unreachable { url, detail } => Self::Unreachable {
                url,
                detail: clean(detail),
            },
            Self::Refused {
                url,
                error,
                description,
            } => Self::Refused {
                url,
                error: clean(error),
                description: clean(description),
            },
            Self::BadResponse { url, detail } => Self::BadResponse {
                url,
                detail: clean(detail),
            },
            Self::Undiscovered { resource, detail } => Self::Undiscovered {
                resource,
                detail: clean(detail),
            },
        }
    }
}

/// A freshly minted access token.
pub struct Token {
    pub access_token: zeroize::Zeroizing<String>,
    pub expires_in: Option<Duration>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` (RFC 6749 §2.3.1's recommended method).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// The transport error the `oauth2` crate sees.
#[derive(Debug, thiserror::Error)]
enum Transport {
    #[error("redirect")]
    Redirect(String),
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error("{0}")]
    Body(String),
}

async fn send(
    egress: &Egress,
    req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, Transport> {
    let (parts, body) = req.into_parts();
    let url = url::Url::parse(&parts.uri.to_string())
        .map_err(|e| Transport::Body(format!("token URL: {e}")))?;
    exchange(egress, parts.method, &url, parts.headers, body).await
}

/// One request to an OAuth endpoint: redirects refused, the answer read whole (bounded
/// in size and time).
async fn exchange(
    egress: &Egress,
    method: http::Method,
    url: &url::Url,
    headers: http::HeaderMap,
    body: Vec<u8>,
) -> Result<oauth2::HttpResponse, Transport> {
    let resp = egress
        .send(method, url, headers, axum::body::Body::from(body))
        .await?;
    let status = resp.status();
    if status.is_redirection() {
        let to = resp
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| l.split('?').next().unwrap_or_default().to_owned())
            .unwrap_or_default();
        return Err(Transport::Redirect(to));
    }
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(
        TOKEN_TIMEOUT,
        http_body_util::Limited::new(body, TOKEN_RESPONSE_MAX).collect(),
    )
    .await
    .map_err(|_| Transport::Body("the answer did not arrive in time".into()))?
    .map_err(|e| Transport::Body(format!("reading the answer: {e}")))?
    .to_bytes();
    let mut out = http::Response::new(body.to_vec());
    *out.status_mut() = parts.status;
    *out.headers_mut() = parts.headers;
    Ok(out)
}

/// The `oauth2` crate's view of the egress client.
struct Http<'a>(&'a Egress);

impl<'c> oauth2::AsyncHttpClient<'c> for Http<'_> {
    type Error = Transport;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, Transport>> + Send + 'c>,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(send(self.0, request))
    }
}

/// Runs the client-credentials grant against `token_url`.
pub async fn client_credentials(
    egress: &Egress,
    token_url: &url::Url,
    client_id: &str,
    proof: ClientProof<'_>,
    scopes: &[String],
) -> Result<Token, TokenError> {
    let url = token_url.as_str().to_owned();
    let client = BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_token_uri(TokenUrl::from_url(token_url.clone()));
    let (client, secret, assertion) = match proof {
        ClientProof::Secret(secret, auth) => (
            client
                .set_client_secret(ClientSecret::new(secret.to_owned()))
                .set_auth_type(match auth {
                    ClientAuth::Basic => AuthType::BasicAuth,
                    ClientAuth::Body => AuthType::RequestBody,
                }),
            secret,
            None,
        ),
        // RFC 7523 §2.2: the client is named in the body, proven by the assertion.
        ClientProof::Assertion(jwt) => (client.set_auth_type(AuthType::RequestBody), "", Some(jwt)),
    };
    let http = Http(egress);
    let mut exchange = client
        .exchange_client_credentials()
        .add_scopes(scopes.iter().cloned().map(Scope::new));
    if let Some(jwt) = assertion {
        exchange = exchange
            .add_extra_param("client_assertion_type", JWT_BEARER_ASSERTION)
            .add_extra_param("client_assertion", jwt);
    }
    let request = exchange.request_async(&http);
    let result = tokio::time::timeout(TOKEN_TIMEOUT, request)
        .await
        .map_err(|_| TokenError::Unreachable {
            url: url.clone(),
            detail: format!("no answer within {}s", TOKEN_TIMEOUT.as_secs()),
        })?;
    match result {
        Ok(resp) => Ok(Token {
            access_token: zeroize::Zeroizing::new(resp.access_token().secret().clone()),
            expires_in: resp.expires_in(),
        }),
        // An endpoint that echoes the request would hand back the client's secret.
        Err(e) if secret.is_empty() => Err(token_error(&url, e)),
        Err(e) => Err(token_error(&url, e).without(client_id, secret)),
    }
}

/// RFC 7523 §2.2's `client_assertion_type`.
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long a signed client assertion is good for: one token request.
const ASSERTION_LIFETIME_SECS: u64 = 120;

/// How a client proves itself at the token endpoint.
pub enum ClientProof<'a> {
    /// Its secret, sent as the server takes it.
    Secret(&'a str, ClientAuth),
    /// A signed assertion (RFC 7523 `private_key_jwt`), from [`AssertionKey::sign`].
    Assertion(String),
}

/// A client's private key for signed client assertions (RFC 7523 `private_key_jwt`):
/// P-256 (ES256) or RSA (RS256), from a PKCS#8 PEM document.
pub struct AssertionKey {
    key: Signer,
}

enum Signer {
    Es256(ring::signature::EcdsaKeyPair),
    Rs256(ring::signature::RsaKeyPair),
}

impl AssertionKey {
    /// Reads a `-----BEGIN PRIVATE KEY-----` document. The error says what the key
    /// should be, never anything of the key.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let body: String = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .collect();
        let wrong = "the private key must be a PKCS#8 PEM document (-----BEGIN PRIVATE KEY-----) holding a P-256 or RSA key";
        if !pem.contains("BEGIN PRIVATE KEY") {
            return Err(wrong.to_owned());
        }
        let der = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|_| wrong.to_owned())?,
        );
        let rng = ring::rand::SystemRandom::new();
        let key = match ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &rng,
        ) {
            Ok(k) => Signer::Es256(k),
            Err(_) => Signer::Rs256(
                ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|_| wrong.to_owned())?,
            ),
        };
        Ok(Self { key })
    }

    /// The JWS algorithm the key signs with.
    pub fn algorithm(&self) -> &'static str {
        match self.key {
            Signer::Es256(_) => "ES256",
            Signer::Rs256(_) => "RS256",
        }
    }

    /// A fresh assertion for `client_id` at the authorization server `audience` (its
    /// issuer, else its token endpoint: RFC 7523 §3): `iss` and `sub` the client, a
    /// random `jti`, good for two minutes.
    pub fn sign(&self, client_id: &str, audience: &str) -> Result<String, String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let header = serde_json::json!({"alg": self.algorithm(), "typ": "JWT"});
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
            "jti": crate::connections::random_token(),
        });
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let signature = match &self.key {
            Signer::Es256(k) => k
                .sign(&rng, input.as_bytes())
                .map_err(|_| "signing the client assertion failed".to_owned())?
                .as_ref()
                .to_vec(),
            Signer::Rs256(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| "signing the client assertion failed".to_owned())?;
                sig
            }
        };
        Ok(format!("{input}.{}", b64.encode(signature)))
    }
}

fn token_error(
    url: &str,
    e: oauth2::RequestTokenError<
        Transport,
        oauth2::StandardErrorResponse<oauth2::basic::BasicErrorResponseType>,
    >,
) -> TokenError {
    use oauth2::RequestTokenError as E;
    let url = url.to_owned();
    match e {
        E::Request(Transport::Redirect(to)) => TokenError::Redirect {
            url,
            to: if to.is_empty() {
                String::new()
            } else {
                format!(" to {to}")
            },
        },
        E::Request(Transport::Egress(err)) => TokenError::Unreachable {
            url,
            detail: err.to_string(),
        },
        E::Request(Transport::Body(detail)) => TokenError::BadResponse { url, detail },
        E::ServerResponse(r) => TokenError::Refused {
            url,
            error: crate::redact::text(r.error().as_ref()),
            description: r
                .error_description()
                .map(|d| format!(" ({})", crate::redact::text(d)))
                .unwrap_or_default(),
        },
        // The body may hold a token: report only what was wrong with it.
        E::Parse(err, _body) => TokenError::BadResponse {
            url,
            detail: err.path().to_string() + ": " + &err.inner().to_string(),
        },
        E::Other(detail) => TokenError::BadResponse { url, detail },
    }
}

/// A per-user connection's OAuth client, as its provider's endpoints see it.
#[derive(Clone)]
pub struct Client {
    pub id: String,
    /// `None` for a public (PKCE-only) client: the id then goes in the form body.
    pub secret: Option<std::sync::Arc<zeroize::Zeroizing<String>>>,
    pub auth: ClientAuth,
    /// How the provider's token and revocation endpoints want their requests.
    pub style: RequestStyle,
}

/// How a provider's token and revocation endpoints want a request: RFC 6749's form, or
/// the same members as a JSON object (Notion), with headers the provider requires on
/// them (`Notion-Version`). A provider plugin says so (WIT `oauth-extras`, checked by
/// `plugins::output`); everything else uses the form.
#[derive(Clone, Debug, Default)]
pub struct RequestStyle {
    pub json: bool,
    pub headers: http::HeaderMap,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("secret", &self.secret.as_ref().map(|_| "********"))
            .field("auth", &self.auth)
            .field("style", &self.style)
            .finish()
    }
}

impl Client {
    /// Adds the client's authentication to a form request (RFC 6749 §2.3.1).
    fn authenticate(&self, headers: &mut http::HeaderMap, form: &mut Vec<(String, String)>) {
        use base64::Engine as _;
        match (&self.secret, self.auth) {
            (Some(secret), ClientAuth::Basic) => {
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let raw = zeroize::Zeroizing::new(format!("{}:{}", enc(&self.id), enc(secret)));
                let b64 = zeroize::Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()),
                );
                if let Ok(mut v) = http::HeaderValue::try_from(format!("Basic {}", b64.as_str())) {
                    v.set_sensitive(true);
                    headers.insert(http::header::AUTHORIZATION, v);
                }
            }
            (Some(secret), ClientAuth::Body) => {
                form.push(("client_id".into(), self.id.clone()));
                form.push(("client_secret".into(), secret.as_str().to_owned()));
            }
            (None, _) => form.push(("client_id".into(), self.id.clone())),
        }
    }
}

/// A token endpoint's answer: its status and its body as JSON (a form-encoded body,
/// as some older providers send, converted to an object of strings).
pub struct TokenAnswer {
    pub status: u16,
    pub json: serde_json::Value,
}

impl TokenAnswer {
    /// The RFC 6749 §5.2 error code and description, if the answer is an error, with
    /// anything credential-like removed ([`crate::redact`]).
    pub fn error(&self) -> Option<(String, Option<String>)> {
        let code = self.json.get("error")?.as_str()?;
        Some((
            crate::redact::text(code),
            self.json
                .get("error_description")
                .and_then(|d| d.as_str())
                .map(crate::redact::text),
        ))
    }
}

fn form_body(form: &[(String, String)]) -> zeroize::Zeroizing<Vec<u8>> {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        ser.append_pair(k, v);
    }
    zeroize::Zeroizing::new(ser.finish().into_bytes())
}

/// The same members as a JSON object of strings. Written into a buffer sized for the
/// worst case (every byte escaped), so no reallocation leaves a copy of a secret behind.
fn json_body(form: &[(String, String)]) -> zeroize::Zeroizing<Vec<u8>> {
    let worst: usize = form.iter().map(|(k, v)| 6 * (k.len() + v.len()) + 8).sum();
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(worst + 2));
    out.push(b'{');
    for (i, (k, v)) in form.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Strings only: serializing them cannot fail.
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, v);
    }
    out.push(b'}');
    out
}

fn transport_error(url: &url::Url, e: Transport) -> TokenError {
    let url = url.as_str().to_owned();
    match e {
        Transport::Redirect(to) => TokenError::Redirect {
            url,
            to: if to.is_empty() {
                String::new()
            } else {
                format!(" to {to}")
            },
        },
        Transport::Egress(err) => TokenError::Unreachable {
            url,
            detail: err.to_string(),
        },
        Transport::Body(detail) => TokenError::BadResponse { url, detail },
    }
}

/// POSTs a form (or, in the client's [`RequestStyle`], a JSON object) to an OAuth
/// endpoint with the client's authentication.
async fn post_form(
    egress: &Egress,
    url: &url::Url,
    client: &Client,
    mut form: Vec<(String, String)>,
) -> Result<oauth2::HttpResponse, TokenError> {
    let mut headers = client.style.headers.clone();
    let content_type = if client.style.json {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    client.authenticate(&mut headers, &mut form);
    let body = if client.style.json {
        json_body(&form)
    } else {
        form_body(&form)
    };
    timed_exchange(egress, http::Method::POST, url, headers, body.to_vec())
        .await?
        .map_err(|e| transport_error(url, e))
}

/// [`exchange`] within [`TOKEN_TIMEOUT`]; the outer error is the timeout.
async fn timed_exchange(
    egress: &Egress,
    method: http::Method,
    url: &url::Url,
    headers: http::HeaderMap,
    body: Vec<u8>,
) -> Result<Result<oauth2::HttpResponse, Transport>, TokenError> {
    tokio::time::timeout(TOKEN_TIMEOUT, exchange(egress, method, url, headers, body))
        .await
        .map_err(|_| TokenError::Unreachable {
            url: url.to_string(),
            detail: format!("no answer within {}s", TOKEN_TIMEOUT.as_secs()),
        })
}

/// Sends a token request (`authorization_code` or `refresh_token` grant) and returns the
/// answer whatever its status: reading it is the provider's business (a plugin may).
/// Only an unreadable answer is an error here.
pub async fn token_request(
    egress: &Egress,
    token_url: &url::Url,
    client: &Client,
    params: Vec<(String, String)>,
) -> Result<TokenAnswer, TokenError> {
    let resp = post_form(egress, token_url, client, params).await?;
    let status = resp.status().as_u16();
    let form = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let json = if form {
        serde_json::Value::Object(
            url::form_urlencoded::parse(resp.body())
                .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
                .collect(),
        )
    } else {
        serde_json::from_slice(resp.body()).map_err(|e| TokenError::BadResponse {
            url: token_url.to_string(),
            // Never the body: it may hold a token.
            detail: format!("HTTP {status}, not JSON ({e})"),
        })?
    };
    Ok(TokenAnswer { status, json })
}

/// Revokes a token (RFC 7009). Servers answer 200 even for tokens already dead.
pub async fn revoke(
    egress: &Egress,
    revocation_url: &url::Url,
    client: &Client,
    token: &str,
    hint: &str,
) -> Result<(), TokenError> {
    let mut params = vec![("token".into(), token.to_owned())];
    // RFC 7009's hint is a form member; a JSON endpoint (Notion) documents only `token`.
    if !client.style.json {
        params.push(("token_type_hint".into(), hint.to_owned()));
    }
    let resp = post_form(egress, revocation_url, client, params).await?;
    if resp.status().is_success() {
        return Ok(());
    }
    let json: serde_json::Value = serde_json::from_slice(resp.body()).unwrap_or_default();
    Err(refused(revocation_url, resp.status().as_u16(), &json))
}

/// An endpoint's RFC 6749 §5.2 style error answer (or just its status).
fn refused(url: &url::Url, status: u16, json: &serde_json::Value) -> TokenError {
    TokenError::Refused {
        url: url.to_string(),
        error: json
            .get("error")
            .and_then(|e| e.as_str())
            .map_or_else(|| format!("HTTP {status}"), crate::redact::text),
        description: json
            .get("error_description")
            .and_then(|d| d.as_str())
            .map(|d| format!(" ({})", crate::redact::text(d)))
            .unwrap_or_default(),
    }
}

/// Registers a client (RFC 7591) and returns the server's client information.
pub async fn register(
    egress: &Egress,
    registration_url: &url::Url,
    metadata: &serde_json::Value,
) -> Result<serde_json::Value, TokenError> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(metadata).unwrap_or_default();
    let resp = timed_exchange(egress, http::Method::POST, registration_url, headers, body)
        .await?
        .map_err(|e| transport_error(registration_url, e))?;
    let status = resp.status().as_u16();
    let json: serde_json::Value =
        serde_json::from_slice(resp.body()).map_err(|e| TokenError::BadResponse {
            url: registration_url.to_string(),
            detail: format!("HTTP {status}, not JSON ({e})"),
        })?;
    if !resp.status().is_success() {
        return Err(refused(registration_url, status, &json));
    }
    Ok(json)
}

/// Asks a protected resource without a token and returns its `WWW-Authenticate`
/// challenge when it answers 401. An MCP server is sent `initialize` (what any client
/// sends first; a server that opens a session for it is sent `DELETE` right after), an
/// API a `GET`. Only the head of the answer is read.
pub async fn challenge(
    egress: &Egress,
    url: &url::Url,
    mcp: bool,
) -> Result<Option<String>, TokenError> {
    let mut headers = http::HeaderMap::new();
    let (method, body) = if mcp {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json, text/event-stream"),
        );
        let initialize = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "portcullis", "version": env!("CARGO_PKG_VERSION")},
            },
        });
        (http::Method::POST, initialize.to_string().into_bytes())
    } else {
        (http::Method::GET, Vec::new())
    };
    let send = egress.send(method, url, headers, axum::body::Body::from(body));
    let resp = tokio::time::timeout(TOKEN_TIMEOUT, send)
        .await
        .map_err(|_| TokenError::Unreachable {
            url: url.to_string(),
            detail: format!("no answer within {}s", TOKEN_TIMEOUT.as_secs()),
        })?
        .map_err(|e| transport_error(url, Transport::Egress(e)))?;
    if resp.status() == http::StatusCode::UNAUTHORIZED {
        return Ok(resp
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned));
    }
    if let Some(session) = resp.headers().get("mcp-session-id").cloned() {
        let mut h = http::HeaderMap::new();
        h.insert("mcp-session-id", session);
        let end = egress.send(http::Method::DELETE, url, h, axum::body::Body::empty());
        let _ = tokio::time::timeout(TOKEN_TIMEOUT, end).await;
    }
    Ok(None)
}

/// GETs a metadata document. `Ok(None)` when the server has none there (4xx).
pub async fn metadata(
    egress: &Egress,
    url: &url::Url,
) -> Result<Option<serde_json::Value>, TokenError> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    let resp = match timed_exchange(egress, http::Method::GET, url, headers, Vec::new()).await? {
        Ok(r) => r,
        // A metadata location that redirects is treated as absent.
        Err(Transport::Redirect(_)) => return Ok(None),
        Err(e) => return Err(transport_error(url, e)),
    };
    if resp.status().is_client_error() {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(TokenError::BadResponse {
            url: url.to_string(),
            detail: format!("HTTP {}", resp.status().as_u16()),
        });
    }
    serde_json::from_slice(resp.body())
        .map(Some)
        .map_err(|e| TokenError::BadResponse {
            url: url.to_string(),
            detail: format!("not JSON ({e})"),
        })
}

/// Whether an authorization server a resource names may be used (RFC 8414 §2, and the
/// MCP authorization spec's rule that discovery never downgrades): an `https` URL (`http`
/// only for an `http` resource, as in local development) with no query, fragment or
/// credentials. The metadata and registration requests go where it says, with the
/// user's browser following, so a resource must not be able to downgrade them to plain
/// HTTP or hide credentials in the URL. (Which hosts it may name is the egress rule's.)
pub fn check_issuer(issuer: &url::Url, resource: &url::Url) -> Result<(), String> {
    let scheme_ok =
        issuer.scheme() == "https" || (issuer.scheme() == "http" && resource.scheme() == "http");
    if !scheme_ok {
        return Err(format!(
            "the protected-resource metadata names \"{}\" as authorization server; it must be an https URL{}",
            issuer.origin().ascii_serialization(),
            if resource.scheme() == "https" {
                " (the resource is https, so no plain-http server may stand in for it)"
            } else {
                ""
            }
        ));
    }
    if issuer.query().is_some()
        || issuer.fragment().is_some()
        || !issuer.username().is_empty()
        || issuer.password().is_some()
        || issuer.host().is_none()
    {
        return Err(format!(
            "the protected-resource metadata names an authorization server with a query, fragment or credentials ({}); an issuer is a plain https URL",
            issuer.origin().ascii_serialization()
        ));
    }
    Ok(())
}

/// Where RFC 8414 (and OpenID Connect Discovery) put an issuer's metadata, in the order
/// to try them.
pub fn authorization_server_metadata_urls(issuer: &url::Url) -> Vec<url::Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut out = Vec::new();
    let mut at = |p: String| {
        let mut u = issuer.clone();
        u.set_path(&p);
        u.set_query(None);
        u.set_fragment(None);
        out.push(u);
    };
    at(format!("/.well-known/oauth-authorization-server{path}"));
    at(format!("/.well-known/openid-configuration{path}"));
    if !path.is_empty() {
        at(format!("{path}/.well-known/openid-configuration"));
    }
    out
}

/// Where RFC 9728 puts a resource's protected-resource metadata, in the order to try.
pub fn protected_resource_metadata_urls(resource: &url::Url) -> Vec<url::Url> {
    let path = resource.path().trim_end_matches('/');
    let mut out = Vec::new();
    for p in [
        format!("/.well-known/oauth-protected-resource{path}"),
        "/.well-known/oauth-protected-resource".to_owned(),
    ] {
        let mut u = resource.clone();
        u.set_path(&p);
        u.set_query(None);
        u.set_fragment(None);
        if !out.contains(&u) {
            out.push(u);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PKCS#8 PEM document for `der`.
    fn pem(der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn client_assertions_are_signed_jwts_the_public_key_verifies() {
        use base64::Engine as _;
        use ring::signature::KeyPair as _;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .expect("generate");
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .expect("pair");
        let key = AssertionKey::from_pem(&pem(pkcs8.as_ref())).expect("key");
        assert_eq!(key.algorithm(), "ES256");
        let jwt = key.sign("agent-1", "https://as.example").expect("sign");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signature = b64.decode(parts[2]).expect("signature");
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            pair.public_key().as_ref(),
        )
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("the public key verifies the assertion");
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).expect("header")).expect("json");
        assert_eq!(header["alg"], "ES256");
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).expect("claims")).expect("json");
        assert_eq!(claims["iss"], "agent-1");
        assert_eq!(claims["sub"], "agent-1");
        assert_eq!(claims["aud"], "https://as.example");
        let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
        assert_eq!(
            exp.zip(iat).map(|(e, i)| e - i),
            Some(ASSERTION_LIFETIME_SECS)
        );
        let again = key.sign("agent-1", "https://as.example").expect("sign");
        assert_ne!(again, jwt, "a fresh jti each time");
        // Not a PKCS#8 key: refused, without echoing any of it.
        for bad in [
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIN0t\n-----END EC PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\n%%%%\n-----END PRIVATE KEY-----",
            "",
        ] {
            let e = AssertionKey::from_pem(bad).err().expect("refused");
            assert!(
                e.contains("PKCS#8") && !e.contains("MHcC") && !e.contains("bm90"),
                "{e}"
            );
        }
    }

    #[test]
    fn issuers_are_plain_https_urls_and_never_a_downgrade() {
        let u = |s: &str| url::Url::parse(s).expect("url");
        let https_resource = u("https://mcp.example.com/v1/mcp");
        assert!(check_issuer(&u("https://auth.example.com"), &https_resource).is_ok());
        assert!(check_issuer(&u("https://auth.example.com/tenant"), &https_resource).is_ok());
        for bad in [
            "http://auth.example.com",
            "ftp://auth.example.com",
            "https://auth.example.com/?x=1",
            "https://auth.example.com/#f",
            "https://user:pw@auth.example.com",
        ] {
            let e = check_issuer(&u(bad), &https_resource).expect_err(bad);
            assert!(!e.contains("pw"), "{e}");
        }
        // Local development: an http resource may name an http server.
        assert!(check_issuer(&u("http://127.0.0.1:9000"), &u("http://127.0.0.1:8000/v1")).is_ok());
    }

    #[test]
    fn metadata_locations_follow_the_rfcs() {
        let u = |s: &str| url::Url::parse(s).expect("url");
        let got: Vec<String> = authorization_server_metadata_urls(&u("https://as.example/tenant1"))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "https://as.example/.well-known/oauth-authorization-server/tenant1",
                "https://as.example/.well-known/openid-configuration/tenant1",
                "https://as.example/tenant1/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            authorization_server_metadata_urls(&u("https://as.example/")).len(),
            2
        );
        let got: Vec<String> =
            protected_resource_metadata_urls(&u("https://mcp.example/v1/mcp?x=1"))
                .iter()
                .map(ToString::to_string)
                .collect();
        assert_eq!(
            got,
            [
                "https://mcp.example/.well-known/oauth-protected-resource/v1/mcp",
                "https://mcp.example/.well-known/oauth-protected-resource",
            ]
        );
    }

    #[test]
    fn json_token_bodies_carry_the_form_members_escaped() {
        let form = [
            ("grant_type".to_owned(), "refresh_token".to_owned()),
            ("refresh_token".to_owned(), "r\"1\\\u{1}é".to_owned()),
        ];
        let body = json_body(&form);
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            parsed,
            serde_json::json!({"grant_type": "refresh_token", "refresh_token": "r\"1\\\u{1}é"})
        );
        assert!(
            body.capacity() >= body.len(),
            "written without reallocating"
        );
        assert_eq!(&*json_body(&[]), b"{}");
    }

    #[test]
    fn client_authentication_forms() {
        let secret = Some(std::sync::Arc::new(zeroize::Zeroizing::new(
            "s3:cr&t".to_owned(),
        )));
        let mut h = http::HeaderMap::new();
        let mut form = Vec::new();
        Client {
            id: "app id".into(),
            secret: secret.clone(),
            auth: ClientAuth::Basic,
            style: RequestStyle::default(),
        }
        .authenticate(&mut h, &mut form);
        assert!(form.is_empty());
        let v = h[http::header::AUTHORIZATION]
            .to_str()
            .expect("ascii")
            .to_owned();
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v.trim_start_matches("Basic "))
            .expect("b64");
        assert_eq!(decoded, b"app+id:s3%3Acr%26t");

        let mut h = http::HeaderMap::new();
        Client {
            id: "a".into(),
            secret,
            auth: ClientAuth::Body,
            style: RequestStyle::default(),
        }
        .authenticate(&mut h, &mut form);
        assert!(h.is_empty());
        assert_eq!(form.len(), 2);
        let mut form = Vec::new();
        Client {
            id: "public".into(),
            secret: None,
            auth: ClientAuth::Basic,
            style: RequestStyle::default(),
        }
        .authenticate(&mut h, &mut form);
        assert_eq!(form, [("client_id".to_owned(), "public".to_owned())]);
        assert!(
            !format!(
                "{:?}",
                Client {
                    id: "x".into(),
                    secret: Some(std::sync::Arc::new(zeroize::Zeroizing::new(
                        "hunter2".into()
                    ))),
                    auth: ClientAuth::Basic,
                    style: RequestStyle::default(),
                }
            )
            .contains("hunter2")
        );
    }
}
