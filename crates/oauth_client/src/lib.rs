//! The OAuth 2.0 client side of every flow the plugins run (Keycloak sign-in, the Atlassian,
//! Linear and Slack links, the Slack app's installation, the git providers' token refresh),
//! through the `oauth2` crate: the authorization URL (with PKCE, RFC 7636), the code exchange,
//! refresh and client-credentials grants (RFC 6749) and token revocation (RFC 7009).
//!
//! What this adds to `oauth2`: one [`Provider`] description per flow instead of its typestate
//! client; a token answer that keeps the provider's own fields (Slack's `team`, `ok`,
//! `bot_user_id`) and tolerates a missing `token_type`; and [`Error`], which says whether the
//! server refused (and with which OAuth error), could not be reached, or answered nonsense, so
//! a caller can tell an expired grant (sign in again) from an outage (try later).
//!
//! Client credentials go in the form body (`client_secret_post`), which every provider here
//! accepts. Requests use the caller's `reqwest::Client`, so its timeouts, TLS roots and
//! redirect policy apply.

use oauth2::{
    basic::{BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType},
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, RevocationUrl, Scope,
    StandardRevocableToken, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::{borrow::Cow, fmt, time::Duration};

/// One OAuth application at one authorization server.
#[derive(Clone, Copy, Debug)]
pub struct Provider<'a> {
    /// Names the server in errors ("Keycloak", "Linear token", ...).
    pub label: &'a str,
    pub client_id: &'a str,
    /// Empty for a public client.
    pub client_secret: &'a str,
    /// Where browsers authorize; empty when this flow never sends one there.
    pub authorize_url: &'a str,
    pub token_url: &'a str,
}

/// A token endpoint's answer: the standard fields, and the provider's own in `extra`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Tokens {
    access_token: AccessToken,
    #[serde(default = "bearer")]
    token_type: BasicTokenType,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

impl Tokens {
    pub fn access(&self) -> &str {
        self.access_token.secret()
    }

    pub fn refresh(&self) -> Option<&str> {
        self.refresh_token.as_ref().map(|r| r.secret().as_str()).filter(|r| !r.is_empty())
    }

    /// The token type as the server spelled it (`bearer`, Slack's `bot`, ...), lowercase.
    pub fn kind(&self) -> String {
        match &self.token_type {
            BasicTokenType::Bearer => "bearer".to_owned(),
            BasicTokenType::Mac => "mac".to_owned(),
            BasicTokenType::Extension(other) => other.to_ascii_lowercase(),
        }
    }

    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }

    /// A field of the answer beyond the standard ones (`Value::Null` when absent).
    pub fn field(&self, name: &str) -> &Value {
        self.extra.get(name).unwrap_or(&Value::Null)
    }
}

impl TokenResponse for Tokens {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        Tokens::expires_in(self)
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        None
    }
}

/// Why a token request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The server answered with an OAuth error (`invalid_grant`, `invalid_client`, Slack's
    /// `invalid_code`, ...).
    Refused { label: String, error: String, description: Option<String> },
    /// The server could not be reached, or said it is unavailable.
    Unavailable(String),
    /// The answer was neither tokens nor an OAuth error; or a URL here is not one.
    Malformed(String),
}

impl Error {
    /// The grant (code, refresh token) is expired, used or revoked: the user must sign in
    /// again.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Error::Refused { error, .. } if error == "invalid_grant")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused { label, error, description: Some(d) } => write!(f, "{label} refused: {error} ({d})"),
            Error::Refused { label, error, description: None } => write!(f, "{label} refused: {error}"),
            Error::Unavailable(m) | Error::Malformed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// A new PKCE verifier: kept (a signed cookie, a row) from the authorization until the code
/// comes back; its S256 challenge goes in the authorization URL.
pub fn pkce_verifier() -> String {
    PkceCodeChallenge::new_random_sha256().1.secret().clone()
}

type Client = oauth2::Client<
    BasicErrorResponse,
    Tokens,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

impl Provider<'_> {
    fn client(&self) -> Result<Client, Error> {
        let url = |what: &str, u: &str| Error::Malformed(format!("{} {what} URL `{u}` is not a URL", self.label));
        // An empty authorization URL is never used: the flows without one only call the
        // token endpoint.
        let authorize = if self.authorize_url.is_empty() { "http://unused.invalid/" } else { self.authorize_url };
        let client = oauth2::Client::new(ClientId::new(self.client_id.to_owned()))
            .set_auth_type(AuthType::RequestBody)
            .set_auth_uri(AuthUrl::new(authorize.to_owned()).map_err(|_| url("authorization", authorize))?)
            .set_token_uri(TokenUrl::new(self.token_url.to_owned()).map_err(|_| url("token", self.token_url))?);
        Ok(if self.client_secret.is_empty() {
            client
        } else {
            client.set_client_secret(ClientSecret::new(self.client_secret.to_owned()))
        })
    }

    fn redirect(&self, redirect_uri: &str) -> Result<RedirectUrl, Error> {
        RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|_| Error::Malformed(format!("{} redirect URI `{redirect_uri}` is not a URL", self.label)))
    }

    /// Where to send a browser: the authorization URL with `response_type=code`, the client,
    /// `redirect_uri`, `state`, the S256 challenge of PKCE's `verifier` when given, and
    /// `params` (the scope as the provider spells it, and anything else it takes).
    pub fn authorize_url(
        &self,
        redirect_uri: &str,
        state: &str,
        verifier: Option<&str>,
        params: &[(&str, &str)],
    ) -> Result<String, Error> {
        let client = self.client()?;
        let state = state.to_owned();
        let mut request =
            client.authorize_url(|| CsrfToken::new(state)).set_redirect_uri(Cow::Owned(self.redirect(redirect_uri)?));
        if let Some(v) = verifier {
            let verifier = PkceCodeVerifier::new(v.to_owned());
            request = request.set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier));
        }
        for (name, value) in params {
            request = request.add_extra_param(*name, *value);
        }
        Ok(request.url().0.to_string())
    }

    /// The authorization code's tokens; `verifier` is PKCE's when the authorization used it.
    /// `redirect_uri` is the one the authorization named; `""` when it named none (GitHub's
    /// code at an App's Setup URL).
    pub async fn exchange_code(
        &self,
        http: &reqwest::Client,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Result<Tokens, Error> {
        let client = self.client()?;
        let mut request = client.exchange_code(AuthorizationCode::new(code.to_owned()));
        if !redirect_uri.is_empty() {
            request = request.set_redirect_uri(Cow::Owned(self.redirect(redirect_uri)?));
        }
        if let Some(v) = verifier.filter(|v| !v.is_empty()) {
            request = request.set_pkce_verifier(PkceCodeVerifier::new(v.to_owned()));
        }
        request.request_async(http).await.map_err(|e| self.classify(e))
    }

    /// New tokens for a refresh token.
    pub async fn refresh(&self, http: &reqwest::Client, refresh_token: &str) -> Result<Tokens, Error> {
        let client = self.client()?;
        let refresh = RefreshToken::new(refresh_token.to_owned());
        client.exchange_refresh_token(&refresh).request_async(http).await.map_err(|e| self.classify(e))
    }

    /// The client's own token (its service account).
    pub async fn client_credentials(&self, http: &reqwest::Client) -> Result<Tokens, Error> {
        let client = self.client()?;
        client.exchange_client_credentials().request_async(http).await.map_err(|e| self.classify(e))
    }

    /// Revokes a refresh token (or, with `access`, an access token) at `revocation_url`
    /// (RFC 7009). A token the server does not know counts as revoked, as the RFC says.
    pub async fn revoke(
        &self,
        http: &reqwest::Client,
        revocation_url: &str,
        token: &str,
        access: bool,
    ) -> Result<(), Error> {
        let url = RevocationUrl::new(revocation_url.to_owned())
            .map_err(|_| Error::Malformed(format!("{} revocation URL `{revocation_url}` is not a URL", self.label)))?;
        let client = self.client()?.set_revocation_url(url);
        let token = if access {
            StandardRevocableToken::AccessToken(AccessToken::new(token.to_owned()))
        } else {
            StandardRevocableToken::RefreshToken(RefreshToken::new(token.to_owned()))
        };
        let request = client.revoke_token(token).map_err(|e| Error::Malformed(format!("{}: {e}", self.label)))?;
        request.request_async(http).await.map_err(|e| self.classify(e))
    }

    fn classify<RE: std::error::Error, TE: oauth2::ErrorResponse + fmt::Display>(
        &self,
        e: RequestTokenError<RE, TE>,
    ) -> Error {
        let label = self.label.to_owned();
        match e {
            RequestTokenError::ServerResponse(answer) => {
                // The answer's own words: `error` and `error_description`.
                let v = serde_json::to_value(&answer).unwrap_or_default();
                let error = v["error"].as_str().unwrap_or("error").to_owned();
                let description = v["error_description"].as_str().map(str::to_owned);
                if matches!(error.as_str(), "server_error" | "temporarily_unavailable") {
                    return Error::Unavailable(format!("{label} is unavailable: {error}"));
                }
                Error::Refused { label, error, description }
            }
            RequestTokenError::Request(e) => {
                let mut message = format!("cannot reach {label}: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    message.push_str(&format!(": {s}"));
                    source = s.source();
                }
                Error::Unavailable(message)
            }
            RequestTokenError::Parse(e, body) => match serde_json::from_slice::<Value>(&body) {
                // Slack answers its errors with 200 and `{"ok": false, "error": ...}`.
                Ok(v) if v["error"].is_string() => Error::Refused {
                    label,
                    error: v["error"].as_str().unwrap_or_default().to_owned(),
                    description: v["error_description"].as_str().map(str::to_owned),
                },
                _ => {
                    let start: String = String::from_utf8_lossy(&body).chars().take(200).collect();
                    Error::Unavailable(format!("{label} gave an answer that is not a token: {e}: {start}"))
                }
            },
            RequestTokenError::Other(m) => Error::Unavailable(format!("{label}: {m}")),
        }
    }
}

#[cfg(test)]
mod tests;
