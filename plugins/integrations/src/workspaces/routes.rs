//! The workspace routes: an admin's registration and a user's link, both through the
//! provider's OAuth (start, callback, who the token belongs to), what the caller is linked to,
//! unlinking, and validating a name.

use super::*;

impl Workspaces {
    /// The routes; `provider` is the one the path names.
    pub(crate) async fn handle(
        &self,
        provider: &str,
        slug: &str,
        ctx: &CallContext,
        request: &HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        let Some(app) = self.app(provider) else {
            return Ok(detail(404, format!("{provider} workspaces are not enabled on this server")));
        };
        let Some(user) = ctx.user_id() else {
            return Ok(detail(401, "sign in first"));
        };
        let rest = request.path.trim_start_matches(&format!("/integration/{slug}"));
        let answer = match (request.method.as_str(), rest) {
            ("POST", "/workspaces") => self.start(app, user, request, true).await?,
            ("POST", "/workspaces/link") => self.start(app, user, request, false).await?,
            ("GET", "/callback") => self.callback(app, user, request).await?,
            ("GET", "/workspaces/link") => self.current(app, user).await?,
            ("POST", "/workspaces/unlink") => self.unlink(app, user).await?,
            ("GET", p) if p.starts_with("/workspaces/validate/") => {
                self.validate(app, p.trim_start_matches("/workspaces/validate/")).await?
            }
            _ => Err((404, "no such route".to_owned())),
        };
        Ok(answer.unwrap_or_else(|(status, message)| detail(status, message)))
    }

    fn redirect_uri(&self, app: &App, request: &HttpRequest) -> String {
        let slug = PROVIDERS.iter().find(|(p, ..)| *p == app.provider).map_or(app.provider, |(_, slug, _)| slug);
        oauth::callback_url(self.web_origin.as_deref(), request, &format!("/integration/{slug}/callback"))
    }

    /// Registering (or updating) a workspace, or linking to one: the request is kept under a
    /// new `state`, and the user is sent to the provider to prove who they are there.
    async fn start(
        &self,
        app: &App,
        user: &str,
        request: &HttpRequest,
        register: bool,
    ) -> Result<Result<HttpResponse, Refused>, PluginError> {
        let (name, details) = if register {
            let r: Registration = match serde_json::from_slice(&request.body) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Err((
                        422,
                        format!(
                        "expected {{workspace_name, webhook_secret, svc_acc_email, svc_acc_api_key, is_active}}: {e}"
                    ),
                    )))
                }
            };
            let email_ok = r.svc_acc_email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !r.svc_acc_email.contains(char::is_whitespace)
            });
            // Jira DC answers with a personal access token alone.
            if app.provider == "jira" && !email_ok {
                return Ok(Err((422, "svc_acc_email must be a valid email address".to_owned())));
            }
            for (field, value) in [("webhook_secret", &r.webhook_secret), ("svc_acc_api_key", &r.svc_acc_api_key)] {
                if value.is_empty() || value.contains(char::is_whitespace) {
                    return Ok(Err((422, format!("{field} must be set and cannot contain spaces"))));
                }
            }
            let name = match valid_name(&r.workspace_name) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            let plain = serde_json::to_vec(&r).map_err(|e| PluginError::internal(e.to_string()))?;
            (name, Some(plain))
        } else {
            let r: LinkRequest = match serde_json::from_slice(&request.body) {
                Ok(r) => r,
                Err(e) => return Ok(Err((422, format!("expected {{workspace_name}}: {e}")))),
            };
            match valid_name(&r.workspace_name) {
                Ok(n) => (n, None),
                Err(e) => return Ok(Err(e)),
            }
        };
        let operation = if register { "workspace_integration" } else { "workspace_link" };
        let state =
            oauth::begin(&self.db, Some(&self.keys), user, app.provider, operation, &name, details.as_deref()).await?;
        let mut params = vec![("scope", app.scope)];
        if app.provider == "jira" {
            params.extend([("audience", "api.atlassian.com"), ("prompt", "consent")]);
        }
        let redirect_uri = self.redirect_uri(app, request);
        let url = app
            .oauth(app.label)
            .authorize_url(&redirect_uri, &state, None, &params)
            .map_err(|e| PluginError::internal(e.to_string()))?;
        Ok(Ok(json(200, &json!({ "success": true, "redirect": true, "authorizationUrl": url.as_str() }))))
    }

    /// The provider sends the user back: who they are there, then what they asked for.
    async fn callback(
        &self,
        app: &App,
        user: &str,
        request: &HttpRequest,
    ) -> Result<Result<HttpResponse, Refused>, PluginError> {
        let (code, pending) =
            match oauth::finish(&self.db, Some(&self.keys), app.provider, app.label, user, &request.query).await? {
                Ok(taken) => taken,
                Err(refused) => return Ok(Err(refused)),
            };
        let name = pending.name;
        let identity = match self.identify(app, &code, &self.redirect_uri(app, request), &name).await? {
            Ok(i) => i,
            Err(e) => return Ok(Err(e)),
        };
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        let outcome = if pending.operation == "workspace_integration" {
            let plain = pending.details.unwrap_or_default();
            let r: Registration = serde_json::from_slice(&plain)
                .map_err(|e| PluginError::internal(format!("stored registration: {e}")))?;
            self.register(&mut tx, app, user, &name, &identity, &r).await?
        } else {
            self.link(&mut tx, app, user, &name, &identity.user).await?
        };
        if let Err(e) = outcome {
            tx.rollback().await.map_err(db_error)?;
            return Ok(Err(e));
        }
        let action =
            if pending.operation == "workspace_integration" { "workspace_registered" } else { "workspace_linked" };
        let detail = json!({ "workspace": name, "user_id": user, "external_user": identity.user });
        crate::inbox::record(&mut *tx, app.provider, None, action, detail).await?;
        tx.commit().await.map_err(db_error)?;
        tracing::info!(provider = app.provider, workspace = name, user, "workspace linked");
        Ok(Ok(redirect("/settings/integrations".to_owned())))
    }

    /// Exchanges the code and reads who signed in, and that they belong to `name`.
    async fn identify(
        &self,
        app: &App,
        code: &str,
        redirect_uri: &str,
        name: &str,
    ) -> Result<Result<Identity, Refused>, PluginError> {
        let what = format!("{} token", app.label);
        let token = match providers::exchange_code(&self.http, &app.oauth(&what), code, redirect_uri).await? {
            Ok(tokens) => tokens,
            Err(why) => return Ok(Err((400, format!("Error fetching token: {why}")))),
        };
        let token = token.access();
        let get = |url: String| self.http.get(url).bearer_auth(token).header("accept", "application/json");
        let refused = |what: &str| (401, format!("User is not authorized to access workspace: {name} ({what})"));
        match app.provider {
            "jira" => {
                let sites =
                    match json_of("Jira sites", get(format!("{}/oauth/token/accessible-resources", app.api))).await? {
                        Ok(v) => v,
                        Err(e) => return Ok(Err(e)),
                    };
                let site = sites
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["url"].as_str().and_then(host_of).as_deref() == Some(name));
                let Some(cloud_id) = site.and_then(|s| s["id"].as_str()) else {
                    return Ok(Err(refused("not among the sites this account can reach")));
                };
                let me = match json_of("Jira user", get(format!("{}/me", app.api))).await? {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                match me["account_id"].as_str() {
                    Some(id) => Ok(Ok(Identity { workspace: cloud_id.to_owned(), user: id.to_owned() })),
                    None => Ok(Err((400, "Error fetching user info: no account_id".to_owned()))),
                }
            }
            "jira_dc" => {
                if host_of(&app.api).as_deref() != Some(name) {
                    return Ok(Err(refused(&format!("this server's Jira Data Center is {}", app.api))));
                }
                let me = match json_of("Jira DC user", get(format!("{}/rest/api/2/myself", app.api))).await? {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                match me["key"].as_str().or_else(|| me["name"].as_str()) {
                    Some(key) => Ok(Ok(Identity { workspace: String::new(), user: key.to_owned() })),
                    None => Ok(Err((400, "Error fetching user info: no key".to_owned()))),
                }
            }
            _ => {
                let query = json!({ "query": "query { viewer { id email organization { id name urlKey } } }" });
                let request = self.http.post(format!("{}/graphql", app.api)).bearer_auth(token).json(&query);
                let viewer = match json_of("Linear viewer", request).await? {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                };
                let v = &viewer["data"]["viewer"];
                let org = &v["organization"];
                if org["urlKey"].as_str().map(str::to_ascii_lowercase).as_deref() != Some(name) {
                    return Ok(Err(refused("the account belongs to another organization")));
                }
                match (v["id"].as_str(), org["id"].as_str()) {
                    (Some(user), Some(org)) => Ok(Ok(Identity { workspace: org.to_owned(), user: user.to_owned() })),
                    _ => Ok(Err((400, "Error fetching user info: no viewer id".to_owned()))),
                }
            }
        }
    }

    /// A new workspace for the admin, or new details for theirs; then they are linked to it.
    async fn register(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        app: &App,
        user: &str,
        name: &str,
        identity: &Identity,
        r: &Registration,
    ) -> Result<Result<(), Refused>, PluginError> {
        let owner = format!("{}:{name}", app.provider);
        let secret = self.keys.seal(r.webhook_secret.as_bytes(), &at("webhook_secret", &owner))?;
        let key = self.keys.seal(r.svc_acc_api_key.as_bytes(), &at("svc_acc_api_key", &owner))?;
        let status = if r.is_active { "active" } else { "inactive" };
        let existing = sqlx::query(
            "SELECT id, admin_user_id FROM integration_workspaces WHERE provider = $1 AND name = $2 FOR UPDATE",
        )
        .bind(app.provider)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
        match existing {
            None => {
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO integration_workspaces
                        (provider, name, external_id, admin_user_id, webhook_secret, svc_acc_email, svc_acc_api_key, status)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (provider, name) DO NOTHING RETURNING id",
                )
                .bind(app.provider)
                .bind(name)
                .bind(&identity.workspace)
                .bind(user)
                .bind(&secret)
                .bind(&r.svc_acc_email)
                .bind(&key)
                .bind(status)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_error)?;
                if id.is_none() {
                    return Ok(Err((409, format!("Workspace \"{name}\" was registered meanwhile: try again"))));
                }
            }
            Some(row) => {
                let id: i64 = row.get("id");
                if row.get::<String, _>("admin_user_id") != user {
                    return Ok(Err((403, "You do not have permission to update this workspace".to_owned())));
                }
                if active_workspace(tx, app.provider, user).await?.is_some_and(|c| c != id) {
                    return Ok(Err((403, "You can only update the workspace you are currently linked to".to_owned())));
                }
                sqlx::query(
                    "UPDATE integration_workspaces SET external_id = $2, webhook_secret = $3, svc_acc_email = $4,
                        svc_acc_api_key = $5, status = $6, updated_at = now() WHERE id = $1",
                )
                .bind(id)
                .bind(&identity.workspace)
                .bind(&secret)
                .bind(&r.svc_acc_email)
                .bind(&key)
                .bind(status)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
            }
        }
        // An inactive workspace takes no links yet: its admin turns it on by registering again.
        if !r.is_active {
            return Ok(Ok(()));
        }
        self.link(tx, app, user, name, &identity.user).await
    }

    /// Links the user, as `external_user`, to the active workspace `name`: once per
    /// provider (unlink first to change), a previous link to it revived.
    async fn link(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        app: &App,
        user: &str,
        name: &str,
        external_user: &str,
    ) -> Result<Result<(), Refused>, PluginError> {
        let ws = sqlx::query("SELECT id, status FROM integration_workspaces WHERE provider = $1 AND name = $2")
            .bind(app.provider)
            .bind(name)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?;
        let Some(ws) = ws else {
            return Ok(Err((404, format!("Workspace \"{name}\" not found"))));
        };
        if ws.get::<String, _>("status") != "active" {
            return Ok(Err((400, format!("Workspace \"{name}\" is not active"))));
        }
        let id: i64 = ws.get("id");
        let current = active_workspace(tx, app.provider, user).await?;
        const ALREADY: &str = "You already have an active workspace link. Please unlink from your current workspace before linking to a different one.";
        if current.is_some_and(|c| c != id) {
            return Ok(Err((400, ALREADY.to_owned())));
        }
        let linked = sqlx::query(
            "INSERT INTO integration_workspace_users (provider, user_id, workspace_id, external_user_id, status)
             VALUES ($1, $2, $3, $4, 'active')
             ON CONFLICT (user_id, workspace_id) DO UPDATE
                SET status = 'active', external_user_id = EXCLUDED.external_user_id, updated_at = now()",
        )
        .bind(app.provider)
        .bind(user)
        .bind(id)
        .bind(external_user)
        .execute(&mut **tx)
        .await;
        match linked {
            Ok(_) => Ok(Ok(())),
            // Another link of this user became active meanwhile (the one-active index).
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Err((400, ALREADY.to_owned()))),
            Err(e) => Err(db_error(e)),
        }
    }

    /// The user's active link and its workspace (OpenHands' `JiraUserResponse` shape).
    async fn current(&self, app: &App, user: &str) -> Result<Result<HttpResponse, Refused>, PluginError> {
        let pool = self.db.ready().await?;
        let row = sqlx::query(
            "SELECT id, workspace_id, status,
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"') AS created_at,
                to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"') AS updated_at
             FROM integration_workspace_users WHERE provider = $1 AND user_id = $2 AND status = 'active'",
        )
        .bind(app.provider)
        .bind(user)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
        let Some(link) = row else {
            return Ok(Err((404, format!("User is not registered for {} integration", app.label))));
        };
        let Some(ws) = self.by_id(link.get("workspace_id")).await? else {
            return Ok(Err((404, "Workspace not found for the user".to_owned())));
        };
        let p = app.provider;
        let mut workspace = json!({
            "id": ws.id, "name": ws.name, "status": ws.status, "editable": ws.admin_user_id == user,
            "created_at": ws.created_at, "updated_at": ws.updated_at,
        });
        match p {
            "jira" => workspace["jira_cloud_id"] = json!(ws.external_id),
            "linear" => workspace["linear_org_id"] = json!(ws.external_id),
            _ => {}
        }
        let mut body = json!({
            "id": link.get::<i64, _>("id"), "keycloak_user_id": user, "status": link.get::<String, _>("status"),
            "created_at": link.get::<String, _>("created_at"), "updated_at": link.get::<String, _>("updated_at"),
            "workspace": workspace,
        });
        body[format!("{p}_workspace_id")] = json!(ws.id);
        Ok(Ok(json(200, &body)))
    }

    /// A user leaves their workspace; its admin leaving turns it off (and every link to it).
    async fn unlink(&self, app: &App, user: &str) -> Result<Result<HttpResponse, Refused>, PluginError> {
        let pool = self.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        let row = sqlx::query(
            "SELECT u.workspace_id, w.admin_user_id FROM integration_workspace_users u
             JOIN integration_workspaces w ON w.id = u.workspace_id
             WHERE u.provider = $1 AND u.user_id = $2 AND u.status = 'active' FOR UPDATE OF u, w",
        )
        .bind(app.provider)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(Err((404, format!("User is not registered for {} integration", app.label))));
        };
        let id: i64 = row.get("workspace_id");
        let admin = row.get::<String, _>("admin_user_id") == user;
        let action = if admin { "workspace_deactivated" } else { "workspace_unlinked" };
        crate::inbox::record(&mut *tx, app.provider, None, action, json!({ "workspace_id": id, "user_id": user }))
            .await?;
        if admin {
            for sql in [
                "UPDATE integration_workspaces SET status = 'inactive', updated_at = now() WHERE id = $1",
                "UPDATE integration_workspace_users SET status = 'inactive', updated_at = now() WHERE workspace_id = $1 AND status = 'active'",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await.map_err(db_error)?;
            }
        } else {
            sqlx::query(
                "UPDATE integration_workspace_users SET status = 'inactive', updated_at = now() WHERE workspace_id = $1 AND user_id = $2",
            )
            .bind(id)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(Ok(json(200, &json!({ "success": true }))))
    }

    async fn validate(&self, app: &App, name: &str) -> Result<Result<HttpResponse, Refused>, PluginError> {
        let name = match valid_name(name) {
            Ok(n) => n,
            Err((_, message)) => return Ok(Err((400, message))),
        };
        match self.find("name", app.provider, &name).await? {
            None => Ok(Err((404, format!("Workspace with name '{name}' not found")))),
            Some(ws) if !ws.active() => Ok(Err((404, format!("Workspace '{}' is not active", ws.name)))),
            Some(ws) => Ok(Ok(json(
                200,
                &json!({ "name": ws.name, "status": ws.status, "message": "Workspace integration is active" }),
            ))),
        }
    }
}

/// The workspace `user` is actively linked to at `provider` (the link locked).
async fn active_workspace(
    tx: &mut Transaction<'_, Postgres>,
    provider: &str,
    user: &str,
) -> Result<Option<i64>, PluginError> {
    sqlx::query_scalar(
        "SELECT workspace_id FROM integration_workspace_users WHERE provider = $1 AND user_id = $2 AND status = 'active' FOR UPDATE",
    )
    .bind(provider)
    .bind(user)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db_error)
}

/// Who signed in at the provider: the workspace's id there (Jira Cloud's cloud id, Linear's
/// organization id) and theirs.
struct Identity {
    workspace: String,
    user: String,
}

/// A provider's JSON answer; a refusal is a 400 the user sees, an unreachable provider 503.
async fn json_of(what: &str, request: reqwest::RequestBuilder) -> Result<Result<Value, Refused>, PluginError> {
    let r = providers::counted(what, request).await.map_err(|e| providers::unreachable(what, e))?;
    let status = r.status();
    if !status.is_success() {
        let body: String = r.text().await.unwrap_or_default().chars().take(200).collect();
        return Ok(Err((400, format!("Error fetching {what}: {status} {body}"))));
    }
    r.json().await.map(Ok).map_err(|e| providers::unreachable(what, e))
}
