//! `TokenAuth`: a third-party `user_auth` plugin for oh-host.
//!
//! `Authorization: Bearer <token>` is hashed (SHA-256) and compared, in constant time, with
//! the hashes in the config; each hash maps to a user id. With it, the file stores keep each
//! user's files apart (`users/<id>/`). Only hashes are configured: the profile never holds a
//! usable token.
//!
//! ```toml
//! [extensions.user_auth]
//! library = "token_auth"
//! implementation = "TokenAuth"
//! config = { tokens = [{ user_id = "alice", sha256 = "<hex of sha256(token)>" }] }
//! ```

use plugin_sdk::{
    plugin_api::abi_stable::std_types::{RNone, RSome, RVec},
    AuthOutcome, AuthRequest, AuthType, CallContext, ErrorCode, PluginError, Registry,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Accepted tokens, by the SHA-256 (hex) of the token.
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    /// The user this token signs in as.
    user_id: String,
    /// Lowercase or uppercase hex of SHA-256(token), 64 digits.
    sha256: String,
}

pub struct TokenAuth {
    tokens: Vec<([u8; 32], String)>,
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Compares without an early exit, so timing does not tell how much of a hash matched.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenAuth {
    fn new(config: Config) -> Result<Self, PluginError> {
        if config.tokens.is_empty() {
            return Err(PluginError::invalid_config("`tokens` is empty: nobody could sign in"));
        }
        let mut tokens = Vec::new();
        for (i, t) in config.tokens.into_iter().enumerate() {
            let hash = parse_hex(&t.sha256).ok_or_else(|| {
                PluginError::invalid_config(format!(
                    "tokens[{i}].sha256 must be 64 hex digits (`printf %s TOKEN | sha256sum`)"
                ))
            })?;
            if t.user_id.is_empty() || t.user_id.contains(['/', '\\', '\0']) || t.user_id.contains("..") {
                return Err(PluginError::invalid_config(format!(
                    "tokens[{i}].user_id `{}` is not a valid user id",
                    t.user_id
                )));
            }
            tokens.push((hash, t.user_id));
        }
        Ok(Self { tokens })
    }

    fn unauthenticated(code: ErrorCode, message: &str) -> PluginError {
        PluginError::new(code, message)
            .with_details(&serde_json::json!({ "headers": { "WWW-Authenticate": "Bearer" } }))
    }
}

impl plugin_sdk::UserAuth for TokenAuth {
    async fn authenticate(&self, _ctx: CallContext, request: AuthRequest) -> Result<AuthOutcome, PluginError> {
        let header = request
            .headers
            .iter()
            .find(|h| h.0.eq_ignore_ascii_case("authorization"))
            .map(|h| h.1.as_str().trim().to_owned());
        let Some(header) = header else {
            return Err(Self::unauthenticated(ErrorCode::AUTH_NO_CREDENTIALS, "missing Authorization: Bearer <token>"));
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Self::unauthenticated(ErrorCode::UNAUTHENTICATED, "Authorization must be `Bearer <token>`")
            })?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (expected, user) in &self.tokens {
            if constant_time_eq(expected, &hash) {
                found = Some(user);
            }
        }
        match found {
            Some(user) => Ok(AuthOutcome {
                user_id: RSome(user.as_str().into()),
                email: RNone,
                auth_type: AuthType::BEARER,
                response_headers: RVec::new(),
            }),
            None => Err(Self::unauthenticated(ErrorCode::UNAUTHENTICATED, "invalid token")),
        }
    }

    async fn health(&self) -> Result<String, PluginError> {
        Ok(format!("{} tokens", self.tokens.len()))
    }
}

pub fn register(r: &mut Registry) {
    r.user_auth(
        "TokenAuth",
        "Authorization: Bearer <token>, checked against SHA-256 hashes in its config",
        |config, _| TokenAuth::new(plugin_sdk::parse_config(config)?),
    );
}

plugin_sdk::export_plugin!(register);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_sdk::plugin_api::abi_stable::std_types::{RString, Tuple2};

    fn request(authorization: Option<&str>) -> AuthRequest {
        AuthRequest {
            method: "GET".into(),
            path: "/api/settings".into(),
            query: RString::new(),
            headers: authorization
                .map(|a| Tuple2(RString::from("Authorization"), RString::from(a)))
                .into_iter()
                .collect(),
            remote_addr: RString::new(),
        }
    }

    #[test]
    fn tokens_map_to_users_and_everything_else_is_refused() {
        let hash: String = Sha256::digest(b"s3cret").iter().map(|b| format!("{b:02x}")).collect();
        let config = format!(r#"{{ "tokens": [{{ "user_id": "alice", "sha256": "{hash}" }}] }}"#);
        let auth = Registry::from_register(register).build_user_auth("TokenAuth", &config).unwrap();
        let (ok, wrong, missing, malformed) = plugin_sdk::block_on_runtime(async move {
            let ctx = CallContext::default;
            (
                auth.authenticate(ctx(), request(Some("Bearer s3cret"))).await.into_result(),
                auth.authenticate(ctx(), request(Some("Bearer nope"))).await.into_result(),
                auth.authenticate(ctx(), request(None)).await.into_result(),
                auth.authenticate(ctx(), request(Some("Basic abc"))).await.into_result(),
            )
        });
        assert_eq!(ok.unwrap().user_id.as_ref().map(|u| u.as_str()).into_option(), Some("alice"));
        assert_eq!(wrong.unwrap_err().code, ErrorCode::UNAUTHENTICATED);
        assert_eq!(missing.unwrap_err().code, ErrorCode::AUTH_NO_CREDENTIALS);
        assert_eq!(malformed.unwrap_err().code, ErrorCode::UNAUTHENTICATED);
    }

    #[test]
    fn bad_config_is_refused_with_the_fix() {
        let r = Registry::from_register(register);
        let err =
            r.build_user_auth("TokenAuth", r#"{ "tokens": [{ "user_id": "a", "sha256": "xyz" }] }"#).err().unwrap();
        assert_eq!(err.code, ErrorCode::INVALID_CONFIG);
        assert!(err.message.contains("sha256sum"), "{}", err.message);
        let err = r.build_user_auth("TokenAuth", r#"{ "tokenz": [] }"#).err().unwrap();
        assert!(err.message.contains("unknown field `tokenz`"), "{}", err.message);
    }
}
