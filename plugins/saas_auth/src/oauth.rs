//! The sign-in routes: `/oauth/keycloak/login` starts the authorization-code flow with PKCE
//! (`state`, the verifier and the target kept in a signed cookie that lives ten minutes),
//! `/oauth/keycloak/callback` checks `state`, exchanges the code with the verifier, sets the
//! `keycloak_auth` cookie and redirects to a same-site URL only; `/api/authenticate`,
//! `/api/logout` and `/api/accept_tos` (OpenHands §10.9).

use crate::{
    config::Sso,
    cookie_value,
    keycloak::{self, CookieClaims},
    keys::KeyStore,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use plugin_sdk::{
    http::{json, query_param},
    plugin_api::abi_stable::std_types::{RString, Tuple2},
    CallContext, HttpRequest, HttpResponse, PluginError, RouteSpec,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

const STATE_COOKIE: &str = "oh_oauth_state";

pub(crate) fn routes() -> Vec<RouteSpec> {
    let r =
        |method: &str, path: &str, authenticated| RouteSpec { method: method.into(), path: path.into(), authenticated };
    vec![
        r("GET", "/oauth/keycloak/login", false),
        r("GET", "/oauth/keycloak/callback", false),
        r("GET", "/oauth/keycloak/offline/callback", false),
        r("POST", "/api/authenticate", true),
        r("POST", "/api/logout", true),
        r("POST", "/api/logout/everywhere", true),
        // On the admin listener only (as every /internal/ route): `oh-host sessions revoke`.
        r("POST", "/internal/sessions/revoke", false),
        r("POST", "/api/accept_tos", true),
    ]
}

#[derive(Serialize, Deserialize)]
struct FlowState {
    state: String,
    verifier: String,
    redirect: String,
    exp: i64,
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (c as char).to_string(),
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// A same-site target: a path (`/x`, not `//x`), or an absolute URL on `web_host` (the
/// origin itself, or followed by a path, a query or a fragment).
fn safe_redirect(target: &str, web_host: &str) -> Option<String> {
    if target.is_empty() {
        return Some("/".to_owned());
    }
    if target.starts_with('/') && !target.starts_with("//") && !target.starts_with("/\\") {
        return Some(target.to_owned());
    }
    let rest = target.strip_prefix(web_host)?;
    (rest.is_empty() || rest.starts_with(['/', '?', '#'])).then(|| target.to_owned())
}

fn random(bytes: usize) -> Result<String, PluginError> {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).map_err(|e| PluginError::internal(format!("no randomness: {e}")))?;
    Ok(B64.encode(b))
}

fn redirect_to(location: &str, cookies: &[String]) -> HttpResponse {
    let mut headers = vec![Tuple2(RString::from("location"), RString::from(location))];
    headers.extend(cookies.iter().map(|c| Tuple2(RString::from("set-cookie"), RString::from(c.as_str()))));
    HttpResponse { status: 302, headers: headers.into(), body: Vec::new().into() }
}

fn with_cookies(mut r: HttpResponse, cookies: &[String]) -> HttpResponse {
    for c in cookies {
        r.headers.push(Tuple2(RString::from("set-cookie"), RString::from(c.as_str())));
    }
    r
}

fn request_cookie<'a>(request: &'a HttpRequest, name: &str) -> Option<&'a str> {
    let header = request.headers.iter().find(|h| h.0.eq_ignore_ascii_case("cookie")).map(|h| h.1.as_str());
    cookie_value(header, name)
}

/// Answers the sign-in routes; `None` for any other path.
pub(crate) async fn handle(
    sso: &Sso,
    keys: &KeyStore,
    providers: &crate::providers::Providers,
    services: &plugin_sdk::Services,
    gitlab: Option<&std::sync::Arc<crate::gitlab_sync::GitLabSync>>,
    ctx: &CallContext,
    request: &HttpRequest,
) -> Result<Option<HttpResponse>, PluginError> {
    let query = request.query.as_str();
    let answer = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/oauth/keycloak/login") => {
            let target = query_param(query, "redirect_url").unwrap_or_default();
            let Some(redirect) = safe_redirect(&target, &sso.web_host) else {
                return Ok(Some(json(400, &json!({ "error": "redirect_url must be a path or a URL on this site" }))));
            };
            let flow = FlowState {
                state: random(16)?,
                verifier: oauth_client::pkce_verifier(),
                redirect,
                exp: chrono::Utc::now().timestamp() + 600,
            };
            let callback = format!("{}/oauth/keycloak/callback", sso.auth_web_host);
            let url = sso.keycloak.sign_in_url(&callback, &flow.state, &flow.verifier)?;
            let cookie =
                keycloak::cookie(STATE_COOKIE, &keycloak::sign(&flow, &sso.jwt_secret)?, &sso.web_host, Some(600));
            // The state cookie must come back on the cross-site redirect from Keycloak.
            redirect_to(&url, &[cookie.replace("SameSite=Strict", "SameSite=Lax")])
        }
        ("GET", "/oauth/keycloak/callback" | "/oauth/keycloak/offline/callback") => {
            let clear_state = keycloak::clear_cookie(STATE_COOKIE, &sso.web_host);
            let refuse =
                |msg: &str| with_cookies(json(400, &json!({ "error": msg })), std::slice::from_ref(&clear_state));
            let given = query_param(query, "state").unwrap_or_default();
            let flow = match request_cookie(request, STATE_COOKIE)
                .and_then(|c| keycloak::verify_signed::<FlowState>(c, &sso.jwt_secret))
            {
                Some(flow) => {
                    if given.len() != flow.state.len()
                        || given.bytes().zip(flow.state.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) != 0
                    {
                        return Ok(Some(refuse("OAuth state mismatch")));
                    }
                    flow
                }
                // The web client's own sign-in: `state` is the page to return to.
                None if sso.client_initiated_sign_in && given.starts_with(&sso.web_host) => {
                    let Some(redirect) = safe_redirect(&given, &sso.web_host) else {
                        return Ok(Some(refuse("state must be a page of this site")));
                    };
                    FlowState { state: given.clone(), verifier: String::new(), redirect, exp: 0 }
                }
                None => return Ok(Some(refuse("missing or expired OAuth state; start the sign-in again"))),
            };
            let Some(code) = query_param(query, "code").filter(|c| !c.is_empty()) else {
                return Ok(Some(refuse("missing code")));
            };
            let callback = format!("{}{}", sso.auth_web_host, request.path.as_str());
            let tokens = match sso.keycloak.exchange(&code, &flow.verifier, &callback).await {
                Ok(t) => t,
                Err(e) => {
                    let e = PluginError::from(e);
                    return Ok(Some(with_cookies(json(401, &json!({ "error": e.message.as_str() })), &[clear_state])));
                }
            };
            let access = sso.keycloak.verify(&tokens.access_token).await?;
            // As OpenHands: the user Keycloak describes must be the token's.
            let info = sso.keycloak.userinfo(&tokens.access_token).await?;
            if info["sub"].as_str() != Some(access.sub.as_str()) {
                return Ok(Some(with_cookies(
                    json(401, &json!({ "error": "userinfo does not match the token" })),
                    &[clear_state],
                )));
            }
            if !providers.is_empty() {
                let pool = keys.ready().await?;
                providers.fetch_from_broker(&sso.keycloak, pool, &access.sub, &tokens.access_token).await;
                providers.link_identities(&sso.keycloak, pool, &access.sub).await;
            }
            let accepted_tos = keys.accepted_tos(&access.sub).await?;
            let signed_in = CallContext::new(ctx.request_id.as_str(), Some(&access.sub), 0);
            crate::capture(services, &signed_in, "user signed in", json!({ "first_time": !accepted_tos })).await;
            // As OpenHands schedules it at sign-in: the user's GitLab projects, in the background.
            if let Some(sync) = gitlab {
                sync.spawn(&access.sub);
            }
            let sid = sso.sessions.start(&access.sub).await?;
            let claims = CookieClaims {
                access_token: tokens.access_token,
                refresh_token: tokens.refresh_token,
                accepted_tos,
                sid: Some(sid),
            };
            let session =
                keycloak::cookie("keycloak_auth", &keycloak::sign(&claims, &sso.jwt_secret)?, &sso.web_host, None);
            // As OpenHands: a user who has not accepted the terms is shown them first.
            let target = if accepted_tos {
                flow.redirect
            } else {
                format!("/accept-tos?redirect_url={}", percent_encode(&flow.redirect))
            };
            redirect_to(&target, &[session, clear_state])
        }
        ("POST", "/api/authenticate") => json(200, &json!({ "message": "User authenticated" })),
        ("POST", "/api/logout") | ("POST", "/api/logout/everywhere") => {
            let claims = request_cookie(request, "keycloak_auth")
                .and_then(|c| keycloak::verify_signed::<CookieClaims>(c, &sso.jwt_secret));
            let everywhere = request.path.as_str() == "/api/logout/everywhere";
            let ended = match (everywhere, ctx.user_id(), claims.as_ref().and_then(|c| c.sid.as_deref())) {
                (true, Some(user), _) => sso.sessions.end_all(user).await?,
                (true, None, _) => return Ok(Some(json(401, &json!({ "error": "sign in first" })))),
                (false, _, Some(sid)) => sso.sessions.end(sid).await.map(|()| 1)?,
                (false, _, None) => 0,
            };
            if let Some(claims) = &claims {
                sso.keycloak.logout(&claims.refresh_token).await;
            }
            let mut body = json!({ "message": "User logged out" });
            if everywhere {
                body["sessions_ended"] = json!(ended);
            }
            with_cookies(json(200, &body), &[keycloak::clear_cookie("keycloak_auth", &sso.web_host)])
        }
        ("POST", "/internal/sessions/revoke") => {
            let user = serde_json::from_slice::<serde_json::Value>(&request.body)
                .ok()
                .and_then(|b| b["user_id"].as_str().map(str::to_owned))
                .filter(|u| !u.trim().is_empty());
            let Some(user) = user else {
                return Ok(Some(json(422, &json!({ "error": "send {\"user_id\": \"...\"}" }))));
            };
            let ended = sso.sessions.end_all(&user).await?;
            tracing::info!(user = %user, sessions = ended, "sessions revoked by an operator");
            json(200, &json!({ "user_id": user, "sessions_ended": ended }))
        }
        ("POST", "/api/accept_tos") => {
            let Some(user) = ctx.user_id() else {
                return Ok(Some(json(401, &json!({ "error": "sign in first" }))));
            };
            keys.accept_tos(user).await?;
            let mut cookies = Vec::new();
            if let Some(mut claims) = request_cookie(request, "keycloak_auth")
                .and_then(|c| keycloak::verify_signed::<CookieClaims>(c, &sso.jwt_secret))
            {
                claims.accepted_tos = true;
                cookies.push(keycloak::cookie(
                    "keycloak_auth",
                    &keycloak::sign(&claims, &sso.jwt_secret)?,
                    &sso.web_host,
                    None,
                ));
            }
            let target = serde_json::from_slice::<serde_json::Value>(&request.body)
                .ok()
                .and_then(|b| b["redirect_url"].as_str().map(str::to_owned))
                .and_then(|t| safe_redirect(&t, &sso.web_host))
                .unwrap_or_else(|| "/".to_owned());
            with_cookies(json(200, &json!({ "redirect_url": target })), &cookies)
        }
        _ => return Ok(None),
    };
    Ok(Some(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_site_redirects_are_accepted() {
        let host = "https://app.example.com";
        for ok in [
            "/",
            "/conversations/1",
            "https://app.example.com/x",
            "https://app.example.com",
            "https://app.example.com?login_method=github",
        ] {
            assert!(safe_redirect(ok, host).is_some(), "{ok}");
        }
        for bad in [
            "//evil.com",
            "/\\evil.com",
            "https://evil.com",
            "https://app.example.com.evil.com/",
            "https://app.example.com@evil.com/",
            "https://app.example.com:8080/",
            "javascript:alert(1)",
        ] {
            assert!(safe_redirect(bad, host).is_none(), "{bad}");
        }
    }
}
