//! `/api/email` (OpenHands `enterprise/server/routes/email.py`): a signed-in user changes
//! their address through Keycloak's admin API (then unverified, and Keycloak mails a
//! verification link), asks for the link again, and comes back verified. The email gate of
//! `SaasUserAuth` follows the access token's `email_verified`, so the session's tokens are
//! refreshed (and the cookie rewritten) after each change.

use crate::{
    config::Sso,
    cookie_value,
    keycloak::{self, CookieClaims},
};
use plugin_sdk::{
    http::{header, json, redirect},
    plugin_api::abi_stable::std_types::{RString, Tuple2},
    HttpRequest, HttpResponse, PluginError, RouteSpec,
};
use serde::Deserialize;
use serde_json::json;

pub(crate) fn routes() -> Vec<RouteSpec> {
    let r = |method: &str, path: &str| RouteSpec { method: method.into(), path: path.into(), authenticated: true };
    vec![r("POST", "/api/email"), r("PUT", "/api/email/verify"), r("GET", "/api/email/verified")]
}

#[derive(Deserialize)]
struct EmailUpdate {
    email: String,
}

/// OpenHands' rule: `local@domain.tld`, ASCII letters, digits and `._%+-` before the `@`.
fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else { return false };
    let local_ok = !local.is_empty() && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(&b));
    let Some((host, tld)) = domain.rsplit_once('.') else { return false };
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b));
    let tld_ok = tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic());
    local_ok && host_ok && tld_ok && email.len() <= 254
}

/// The session cookie with fresh tokens (they carry the new `email` / `email_verified`), when
/// the caller signed in with one; `None` for API keys.
async fn refreshed_cookie(sso: &Sso, request: &HttpRequest) -> Result<Option<String>, PluginError> {
    let Some(cookie) = cookie_value(header(request, "cookie"), "keycloak_auth") else { return Ok(None) };
    let Some(mut claims) = keycloak::verify_signed::<CookieClaims>(cookie, &sso.jwt_secret) else { return Ok(None) };
    let tokens = sso.keycloak.refresh(&claims.refresh_token).await?;
    claims.access_token = tokens.access_token;
    claims.refresh_token = tokens.refresh_token;
    let value = keycloak::sign(&claims, &sso.jwt_secret)?;
    Ok(Some(keycloak::cookie("keycloak_auth", &value, &sso.web_host, None)))
}

fn with_cookie(mut response: HttpResponse, cookie: Option<String>) -> HttpResponse {
    if let Some(c) = cookie {
        response.headers.push(Tuple2(RString::from("set-cookie"), RString::from(c)));
    }
    response
}

/// Where Keycloak's verification link sends the user back: this server's `/api/email/verified`.
fn verified_url(sso: &Sso) -> String {
    format!("{}/api/email/verified", sso.web_host)
}

pub(crate) async fn handle(sso: &Sso, user: &str, request: &HttpRequest) -> Result<Option<HttpResponse>, PluginError> {
    let answer = match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/api/email") => {
            let Ok(update) = serde_json::from_slice::<EmailUpdate>(&request.body) else {
                return Ok(Some(json(422, &json!({ "detail": "expected {\"email\": \"...\"}" }))));
            };
            let email = update.email.trim();
            if !valid_email(email) {
                return Ok(Some(json(422, &json!({ "detail": "Invalid email format" }))));
            }
            let current = sso.keycloak.admin_user(user).await?;
            let fields = json!({
                "email": email,
                "emailVerified": false,
                // Kept as they are (Keycloak requires the username on update).
                "enabled": current["enabled"],
                "username": current["username"],
            });
            sso.keycloak.admin_update_user(user, &fields).await?;
            let cookie = refreshed_cookie(sso, request).await?;
            sso.keycloak.send_verify_email(user, &verified_url(sso)).await?;
            tracing::info!(user, "email address changed; verification sent");
            with_cookie(json(200, &json!({ "message": "Email changed" })), cookie)
        }
        ("PUT", "/api/email/verify") => {
            sso.keycloak.send_verify_email(user, &verified_url(sso)).await?;
            json(200, &json!({ "message": "Email verification message sent" }))
        }
        ("GET", "/api/email/verified") => {
            let cookie = refreshed_cookie(sso, request).await?;
            with_cookie(redirect(format!("{}/settings/user", sso.web_host)), cookie)
        }
        _ => return Ok(None),
    };
    Ok(Some(answer))
}

#[cfg(test)]
mod tests {
    use super::valid_email;

    #[test]
    fn addresses_follow_openhands_rule() {
        for good in ["a@b.co", "first.last+tag@mail.example.org", "x_y%z-1@sub-domain.example.io"] {
            assert!(valid_email(good), "{good}");
        }
        for bad in ["", "a", "a@b", "a@b.c", "@b.co", "a@.co", "a b@c.co", "a@b.c0", "a@@b.co", "ü@b.co"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
