//! OAuth 2.0 token endpoint calls, made with the `oauth2` crate over the host's egress
//! client. A token endpoint that answers with a redirect is refused outright: following
//! it would hand the client secret to wherever the redirect points.

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
    let resp = egress
        .send(
            parts.method,
            &url,
            parts.headers,
            axum::body::Body::from(body),
        )
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
    client_secret: &str,
    scopes: &[String],
    auth: ClientAuth,
) -> Result<Token, TokenError> {
    let url = token_url.as_str().to_owned();
    let client = BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_client_secret(ClientSecret::new(client_secret.to_owned()))
        .set_token_uri(TokenUrl::from_url(token_url.clone()))
        .set_auth_type(match auth {
            ClientAuth::Basic => AuthType::BasicAuth,
            ClientAuth::Body => AuthType::RequestBody,
        });
    let http = Http(egress);
    let request = client
        .exchange_client_credentials()
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .request_async(&http);
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
        Err(e) => Err(token_error(&url, e)),
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
            error: r.error().to_string(),
            description: r
                .error_description()
                .map(|d| format!(" ({d})"))
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
