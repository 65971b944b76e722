//! The `state` of an OAuth authorization under way (workspaces, Slack links): made random,
//! stored hashed in `integration_oauth_states` for ten minutes with what the user asked for
//! (sealed when it holds secrets), taken once by the callback, and only for the user who
//! started it.

use pg_common::{
    crypto::{Binding, Keyring},
    db_error, Database,
};
use plugin_sdk::{
    http::{header, query_param},
    HttpRequest, PluginError,
};
use sha2::{Digest, Sha256};
use sqlx::Row;

/// What a user asked for before being sent to the provider.
pub(crate) struct Pending {
    pub(crate) operation: String,
    pub(crate) name: String,
    /// The details given with it, opened.
    pub(crate) details: Option<Vec<u8>>,
}

/// Why a callback is refused: its HTTP status and message.
pub(crate) type Refused = (u16, String);

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn binding(hashed: &str) -> Binding<'_> {
    Binding { table: "integration_oauth_states", field: "details", user_id: hashed }
}

/// Where the provider sends the user back: `path` on this server's public origin, else on
/// the origin the request came to (a redirect URI must be the same at both ends).
pub(crate) fn callback_url(origin: Option<&str>, request: &HttpRequest, path: &str) -> String {
    match origin {
        Some(origin) => format!("{origin}{path}"),
        None => format!(
            "{}://{}{path}",
            header(request, "x-forwarded-proto").unwrap_or("http"),
            header(request, "host").unwrap_or("localhost")
        ),
    }
}

/// Stores what `user` asks of `provider` (`details` sealed with `keys`); the new `state`.
pub(crate) async fn begin(
    db: &Database,
    keys: Option<&Keyring>,
    user: &str,
    provider: &str,
    operation: &str,
    name: &str,
    details: Option<&[u8]>,
) -> Result<String, PluginError> {
    let mut random = [0u8; 24];
    getrandom::getrandom(&mut random).map_err(|e| PluginError::internal(format!("no randomness: {e}")))?;
    let state: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let hashed = sha256_hex(&state);
    let sealed = match (details, keys) {
        (Some(d), Some(keys)) => Some(keys.seal(d, &binding(&hashed))?),
        (Some(_), None) => return Err(PluginError::internal("details of an authorization need a master key")),
        (None, _) => None,
    };
    let pool = db.ready().await?;
    sqlx::query("DELETE FROM integration_oauth_states WHERE expires_at < now()")
        .execute(pool)
        .await
        .map_err(db_error)?;
    sqlx::query(
        "INSERT INTO integration_oauth_states (state_sha256, user_id, provider, operation, workspace_name, details, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now() + interval '10 minutes')",
    )
    .bind(&hashed)
    .bind(user)
    .bind(provider)
    .bind(operation)
    .bind(name)
    .bind(sealed)
    .execute(pool)
    .await
    .map_err(db_error)?;
    Ok(state)
}

/// Where to send the browser to authorize with `app`: its authorization URL with `params`,
/// the `redirect_uri` and a new `state` for `user` (see [`begin`]).
pub(crate) async fn authorize_redirect(
    db: &Database,
    user: &str,
    provider: &str,
    app: &oauth_client::Provider<'_>,
    params: &[(&str, &str)],
    redirect_uri: &str,
) -> Result<plugin_sdk::HttpResponse, PluginError> {
    let state = begin(db, None, user, provider, provider, "", None).await?;
    let url =
        app.authorize_url(redirect_uri, &state, None, params).map_err(|e| PluginError::internal(e.to_string()))?;
    Ok(plugin_sdk::http::redirect(url))
}

/// The callback's `code` and what its `state` was for: taken (used once, whatever happens
/// next), fresh, and started by `user`.
pub(crate) async fn finish(
    db: &Database,
    keys: Option<&Keyring>,
    provider: &str,
    label: &str,
    user: &str,
    query: &str,
) -> Result<Result<(String, Pending), Refused>, PluginError> {
    if let Some(error) = query_param(query, "error") {
        return Ok(Err((400, format!("{label} refused the authorization: {error}"))));
    }
    let (Some(code), Some(state)) = (query_param(query, "code"), query_param(query, "state")) else {
        return Ok(Err((400, "the callback needs `code` and `state`".to_owned())));
    };
    Ok(take(db, keys, provider, user, &state).await?.map(|pending| (code, pending)))
}

/// What `state` was for: taken (used once), fresh, and started by `user` (a callback that
/// brings no code, as GitHub's installation setup).
pub(crate) async fn take(
    db: &Database,
    keys: Option<&Keyring>,
    provider: &str,
    user: &str,
    state: &str,
) -> Result<Result<Pending, Refused>, PluginError> {
    let hashed = sha256_hex(state);
    let pool = db.ready().await?;
    let row = sqlx::query(
        "DELETE FROM integration_oauth_states WHERE state_sha256 = $1 AND provider = $2
         RETURNING user_id, operation, workspace_name, details, expires_at > now() AS fresh",
    )
    .bind(&hashed)
    .bind(provider)
    .fetch_optional(pool)
    .await
    .map_err(db_error)?;
    let Some(row) = row.filter(|r| r.get::<bool, _>("fresh")) else {
        return Ok(Err((400, "No active integration session found (unknown, used or expired state).".to_owned())));
    };
    if row.get::<String, _>("user_id") != user {
        return Ok(Err((403, "this authorization was started by another user".to_owned())));
    }
    let details = match (row.get::<Option<String>, _>("details"), keys) {
        (Some(sealed), Some(keys)) => Some(keys.open(&sealed, &binding(&hashed))?),
        (Some(_), None) => return Err(PluginError::internal("sealed details but no master key")),
        (None, _) => None,
    };
    Ok(Ok(Pending { operation: row.get("operation"), name: row.get("workspace_name"), details }))
}
