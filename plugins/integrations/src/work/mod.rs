//! What a delivery does, and the workers that do it: a mention of the agent by a linked user
//! starts a conversation for that user; when the agent is done, its answer goes back where
//! the mention was. Both steps are stored first (the inbox, `conversation_callbacks`), so a
//! restart or a kill -9 resumes them; a conversation's id comes from the delivery's, so a
//! retried delivery finds the conversation it started instead of starting another.

use crate::{
    inbox::{Claimed, Inbox},
    providers::{GitHub, GitLab, Jira, Linear, Slack},
};
use pg_common::db_error;
use plugin_sdk::{
    host_calls::{GetEvents, StartConversation},
    CallContext, ErrorCode, PluginError, Services,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::{sync::Arc, time::Duration};
use tokio::sync::Notify;

/// Deliveries a worker claims at once (one statement), then works one after another.
const CLAIM_BATCH: i64 = 8;

pub(crate) struct Hub {
    pub(crate) inbox: Inbox,
    pub(crate) services: Services,
    pub(crate) mention: String,
    pub(crate) web_origin: Option<String>,
    pub(crate) workspaces: Option<Arc<crate::workspaces::Workspaces>>,
    pub(crate) slack_link: Option<Arc<crate::slack_link::SlackLink>>,
    pub(crate) github: Option<GitHub>,
    pub(crate) slack: Option<Slack>,
    pub(crate) slack_install: Option<Arc<crate::slack_install::SlackInstall>>,
    pub(crate) gitlab: Option<GitLab>,
    pub(crate) jira: Option<Jira>,
    pub(crate) jira_dc: Option<Jira>,
    pub(crate) linear: Option<Linear>,
    /// Rung when a delivery is stored.
    pub(crate) wake: Notify,
    /// Rung when a conversation is started (its answer is soon to be looked for).
    pub(crate) answers: Notify,
}

mod mentions;
pub(crate) use mentions::*;

/// SHA-256 of a link code, as stored.
pub(crate) fn code_hash(code: &str) -> String {
    Sha256::digest(code.to_ascii_uppercase().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A conversation id of 32 hex digits from the delivery: the same delivery, the same id.
pub(crate) fn conversation_id(source: &str, delivery_id: &str) -> String {
    let digest = Sha256::digest(format!("{source}:{delivery_id}").as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn user_ctx(user: &str) -> CallContext {
    let deadline = chrono::Utc::now().timestamp_millis() as u64 + 60_000;
    CallContext::new(&format!("integrations-{}", chrono::Utc::now().timestamp_micros()), Some(user), deadline)
}

impl Hub {
    /// Says `text` where `target` points.
    async fn answer(&self, target: &Value, text: &str) -> Result<(), PluginError> {
        // A registered workspace answers with its own service account.
        if let Some(workspace) = target["workspace"].as_i64() {
            let ws = self.workspaces.as_ref().ok_or_else(|| PluginError::internal("workspaces are not configured"))?;
            return ws.comment(workspace, target, text).await;
        }
        match target["kind"].as_str() {
            Some("github") => {
                let gh = self.github.as_ref().ok_or_else(|| PluginError::internal("GitHub is not configured"))?;
                let (installation, repo, number) = (
                    target["installation"].as_i64().unwrap_or(0),
                    target["repo"].as_str().unwrap_or(""),
                    target["number"].as_i64().unwrap_or(0),
                );
                gh.comment(installation, repo, number, text).await
            }
            Some("slack") => {
                let slack = self.slack.as_ref().ok_or_else(|| PluginError::internal("Slack is not configured"))?;
                let team_token = match (&self.slack_install, target["team"].as_str()) {
                    (Some(install), Some(team)) => install.team_token(team).await?,
                    _ => None,
                };
                let (channel, thread) =
                    (target["channel"].as_str().unwrap_or(""), target["thread_ts"].as_str().unwrap_or(""));
                slack.reply(team_token, channel, thread, text).await
            }
            Some("gitlab") => {
                let gitlab = self.gitlab.as_ref().ok_or_else(|| PluginError::internal("GitLab is not configured"))?;
                let (project, iid) = (target["project"].as_i64().unwrap_or(0), target["iid"].as_i64().unwrap_or(0));
                gitlab.note(project, target["noteable"].as_str().unwrap_or("issues"), iid, text).await
            }
            Some(kind @ ("jira" | "jira_dc")) => {
                let jira = if kind == "jira" { &self.jira } else { &self.jira_dc };
                let jira = jira.as_ref().ok_or_else(|| PluginError::internal(format!("{kind} is not configured")))?;
                jira.comment(target["issue"].as_str().unwrap_or(""), text).await
            }
            Some("linear") => {
                let linear = self.linear.as_ref().ok_or_else(|| PluginError::internal("Linear is not configured"))?;
                linear.comment(target["issue_id"].as_str().unwrap_or(""), text).await
            }
            other => Err(PluginError::internal(format!("no way to answer on {other:?}"))),
        }
    }

    async fn linked_user(&self, provider: &str, external: &str) -> Result<Option<String>, PluginError> {
        let pool = self.inbox.db.ready().await?;
        sqlx::query_scalar("SELECT user_id FROM integration_links WHERE provider = $1 AND external_id = $2")
            .bind(provider)
            .bind(external)
            .fetch_optional(pool)
            .await
            .map_err(db_error)
    }

    /// `@openhands link CODE`: the identity that wrote it (the provider signed the delivery)
    /// becomes the user's whose code it is. A code works once, for ten minutes.
    async fn link_with_code(&self, m: &Mention, code: &str) -> Result<String, PluginError> {
        let pool = self.inbox.db.ready().await?;
        let mut tx = pool.begin().await.map_err(db_error)?;
        let user: Option<String> = sqlx::query_scalar(
            "DELETE FROM integration_link_codes WHERE code_sha256 = $1 AND expires_at > now() RETURNING user_id",
        )
        .bind(code_hash(code))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(user) = user else {
            tx.rollback().await.map_err(db_error)?;
            self.answer(
                &m.target,
                "That link code is unknown or has expired: get a new one in OpenHands and try again.",
            )
            .await?;
            return Ok("link refused: unknown or expired code".to_owned());
        };
        sqlx::query(
            "INSERT INTO integration_links (provider, external_id, user_id) VALUES ($1, $2, $3)
             ON CONFLICT (provider, external_id) DO UPDATE SET user_id = EXCLUDED.user_id",
        )
        .bind(m.provider)
        .bind(&m.external_user)
        .bind(&user)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        self.answer(&m.target, "Linked: mention me here and I will work on it for your OpenHands account.").await?;
        Ok(format!("linked {} {} to {user}", m.provider, m.external_user))
    }

    /// Tells an unlinked user once how to link; whether this was the first time.
    async fn tell_how_to_link(&self, m: &Mention, workspace: bool) -> Result<bool, PluginError> {
        let pool = self.inbox.db.ready().await?;
        let told: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM integration_notices WHERE provider = $1 AND external_id = $2")
                .bind(m.provider)
                .bind(&m.external_user)
                .fetch_optional(pool)
                .await
                .map_err(db_error)?;
        if told.is_some() {
            return Ok(false);
        }
        let place = self.web_origin.as_deref().map(|h| format!(" at {h}/settings/integrations")).unwrap_or_default();
        let slack_link = self.slack_link.as_ref().filter(|_| m.provider == "slack").and_then(|l| l.link_url());
        let text = if let Some(url) = slack_link {
            format!(
                "I can't work on this yet: your Slack account is not linked to an OpenHands account. Sign in with Slack at {url} (signed in to OpenHands), then mention me again."
            )
        } else if workspace {
            format!(
                "I can't work on this yet: your {} account is not linked to an OpenHands account. Link it in OpenHands' settings{place} (Project management, Link), then mention me again.",
                m.provider
            )
        } else {
            format!(
            "I can't work on this yet: your {} account is not linked to an OpenHands account. Get a link code{place} (signed in), then comment `{} link CODE` here.",
            m.provider, self.mention
        )
        };
        self.answer(&m.target, &text).await?;
        sqlx::query("INSERT INTO integration_notices (provider, external_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(m.provider)
            .bind(&m.external_user)
            .execute(pool)
            .await
            .map_err(db_error)?;
        Ok(true)
    }

    /// Does what a delivery asks; what happened, for the audit log. An error is retried.
    pub(crate) async fn process(&self, d: &Claimed) -> Result<String, PluginError> {
        let mention = match d.source.as_str() {
            "github" => github_mention(&d.event, &d.payload, &self.mention),
            "slack" => slack_mention(&d.payload),
            "gitlab" => gitlab_mention(&d.payload, &self.mention),
            "jira" => jira_mention("jira", &d.payload, &self.mention),
            "jira_dc" => jira_mention("jira_dc", &d.payload, &self.mention),
            "linear" => linear_mention(&d.payload, &self.mention),
            other => return Ok(format!("no action for {other} deliveries")),
        };
        let Some(mut m) = mention else { return Ok(format!("ignored: {} without a mention of the agent", d.event)) };
        let workspace = match &self.workspaces {
            Some(ws) => ws.for_delivery(&d.source, &d.payload).await?,
            None => None,
        };
        if let Some(ws) = &workspace {
            m.target["workspace"] = json!(ws.id);
        }
        // Slack's text has the bot's mention taken out already.
        let command = if m.provider == "slack" { format!("{} {}", self.mention, m.said) } else { m.said.clone() };
        if let Some(code) = link_command(&command, &self.mention) {
            return self.link_with_code(&m, &code).await;
        }
        let in_workspace = match (&workspace, &self.workspaces) {
            (Some(ws), Some(all)) => all.linked_user(ws.id, &m.external_user).await?,
            _ => None,
        };
        let user = match in_workspace {
            Some(user) => Some(user),
            None => self.linked_user(m.provider, &m.external_user).await?,
        };
        let Some(user) = user else {
            let first = self.tell_how_to_link(&m, workspace.is_some()).await?;
            return Ok(if first { "unlinked user: told how to link" } else { "unlinked user: told before" }.to_owned());
        };
        let id = conversation_id(&d.source, &d.delivery_id);
        let pool = self.inbox.db.ready().await?;
        sqlx::query(
            "INSERT INTO conversation_callbacks (conversation_id, user_id, source, target) VALUES ($1, $2, $3, $4)
             ON CONFLICT (conversation_id) DO NOTHING",
        )
        .bind(&id)
        .bind(&user)
        .bind(&d.source)
        .bind(&m.target)
        .execute(pool)
        .await
        .map_err(db_error)?;
        let start = StartConversation {
            initial_user_msg: m.text.clone(),
            trigger: "resolver".to_owned(),
            conversation_id: Some(id.clone()),
            title: m.title.clone(),
            repository: m.repository.clone(),
            selected_branch: None,
            git_provider: m.git_provider.map(str::to_owned),
        };
        match self.services.call(user_ctx(&user), start).await {
            Ok(id) => {
                self.answers.notify_one();
                Ok(format!("conversation {id} started for {user}"))
            }
            // The user's own setup stands in the way (no LLM settings, no credits): they are
            // told, and retrying would not help.
            Err(e) if [ErrorCode::INVALID_ARGUMENT, ErrorCode::PAYMENT_REQUIRED].contains(&e.code) => {
                self.answer(&m.target, &format!("I could not start working on this: {}", e.message)).await?;
                sqlx::query("UPDATE conversation_callbacks SET status = 'failed', last_error = $2, updated_at = now() WHERE conversation_id = $1")
                    .bind(&id)
                    .bind(e.message.as_str())
                    .execute(pool)
                    .await
                    .map_err(db_error)?;
                Ok(format!("refused for {user}: {}", e.message))
            }
            Err(e) => Err(e),
        }
    }

    /// Waits until the host answers plugins' calls (the library starts before the server
    /// does): work taken before then would fail for nothing.
    async fn host_up(&self) {
        loop {
            let probe = plugin_sdk::host_calls::GetMetadata { conversation_id: "0".repeat(32) };
            match self.services.call(user_ctx(""), probe).await {
                Err(e) if e.code == ErrorCode::UNAVAILABLE => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => return,
            }
        }
    }

    /// Works the inbox until the library stops.
    pub(crate) async fn deliveries(self: Arc<Self>) {
        self.host_up().await;
        loop {
            match self.inbox.claim(CLAIM_BATCH).await {
                Ok(batch) if !batch.is_empty() => {
                    for d in &batch {
                        let started = std::time::Instant::now();
                        let outcome = self.process(d).await;
                        plugin_sdk::observe(
                            "oh_webhook_processing_seconds",
                            started.elapsed().as_secs_f64(),
                            &[],
                            &serde_json::json!({ "source": d.source }),
                        );
                        let stored = match outcome {
                            Ok(outcome) => self.inbox.done(d, &outcome).await,
                            Err(e) => self.inbox.failed(d, &e.message).await,
                        };
                        if let Err(e) = stored {
                            tracing::error!(delivery = %d.delivery_id, error = %e, "cannot record a delivery's outcome; it will be claimed again");
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhook inbox unavailable"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Posts the agent's answers of finished conversations, until the library stops.
    pub(crate) async fn callbacks(self: Arc<Self>) {
        self.host_up().await;
        loop {
            // While answers are awaited, look often; with none, once a second (a start rings).
            let pause = match self.callbacks_once().await {
                Ok(0) => Duration::from_secs(1),
                Ok(_) => Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, "conversation callbacks unavailable");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = self.answers.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Looks at the callbacks that are due; how many there were.
    async fn callbacks_once(&self) -> Result<usize, PluginError> {
        let pool = self.inbox.db.ready().await?;
        // Claimed for a while (other hosts skip them), then looked at.
        let due = sqlx::query(
            "UPDATE conversation_callbacks SET next_attempt_at = now() + interval '30 seconds'
             WHERE conversation_id IN (
                 SELECT conversation_id FROM conversation_callbacks
                 WHERE status = 'waiting' AND next_attempt_at <= now()
                 ORDER BY next_attempt_at LIMIT 20 FOR UPDATE SKIP LOCKED)
             RETURNING conversation_id, user_id, source, target, attempts,
                 extract(epoch FROM now() - created_at)::float8",
        )
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        let count = due.len();
        for row in due {
            let (id, user, source, target, attempts, age): (String, String, String, Value, i32, f64) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
            let answer = match self.finished_answer(&user, &id).await {
                // Its conversation is being started (the callback is stored first): not yet,
                // for an hour at most.
                Err(e) if e.code == ErrorCode::NOT_FOUND && age < 3600.0 => Ok(None),
                other => other,
            };
            match answer {
                Ok(None) => {
                    // Looked at often while young (most turns are short), then less: a tenth
                    // of its age, between 100 ms and 5 s.
                    let next = (age / 10.0).clamp(0.1, 5.0);
                    sqlx::query("UPDATE conversation_callbacks SET next_attempt_at = now() + make_interval(secs => $2) WHERE conversation_id = $1")
                        .bind(&id)
                        .bind(next)
                        .execute(pool)
                        .await
                        .map_err(db_error)?;
                }
                Ok(Some(text)) => match self.answer(&target, &text).await {
                    Ok(()) => {
                        sqlx::query("UPDATE conversation_callbacks SET status = 'posted', updated_at = now() WHERE conversation_id = $1")
                            .bind(&id)
                            .execute(pool)
                            .await
                            .map_err(db_error)?;
                        self.inbox.audit(&source, None, "answered", json!({ "conversation_id": id })).await;
                    }
                    Err(e) => self.callback_failed(&id, &source, attempts + 1, &e.message).await?,
                },
                Err(e) => self.callback_failed(&id, &source, attempts + 1, &e.message).await?,
            }
        }
        Ok(count)
    }

    async fn callback_failed(&self, id: &str, source: &str, attempts: i32, error: &str) -> Result<(), PluginError> {
        let pool = self.inbox.db.ready().await?;
        let give_up = attempts >= self.inbox.max_attempts;
        let wait = crate::inbox::backoff(self.inbox.backoff, attempts);
        sqlx::query(
            "UPDATE conversation_callbacks SET attempts = $2, last_error = $3, updated_at = now(),
                 status = CASE WHEN $4 THEN 'failed' ELSE status END,
                 next_attempt_at = now() + make_interval(secs => $5)
             WHERE conversation_id = $1",
        )
        .bind(id)
        .bind(attempts)
        .bind(error)
        .bind(give_up)
        .bind(wait.as_secs_f64())
        .execute(pool)
        .await
        .map_err(db_error)?;
        let action = if give_up { "answer_failed" } else { "answer_retry_scheduled" };
        tracing::warn!(conversation_id = id, error, attempts, action, "answer not posted");
        self.inbox
            .audit(source, None, action, json!({ "conversation_id": id, "attempt": attempts, "error": error }))
            .await;
        Ok(())
    }

    /// The answer to post once the agent has finished its turn: its last message (or what
    /// went wrong); `None` while it is still working.
    async fn finished_answer(&self, user: &str, id: &str) -> Result<Option<String>, PluginError> {
        let query = GetEvents {
            conversation_id: id.to_owned(),
            start_id: 0,
            end_id: None,
            reverse: false,
            limit: GetEvents::MAX_LIMIT,
        };
        let page = self.services.call(user_ctx(user), query).await?;
        Ok(answer_of(&page.events))
    }
}

/// The agent's answer in a conversation's events, once its turn is over.
pub(crate) fn answer_of(events: &[Value]) -> Option<String> {
    let last_state = events.iter().rev().find(|e| e["observation"] == "agent_state_changed")?;
    let state = last_state["extras"]["agent_state"].as_str().unwrap_or("");
    match state {
        "awaiting_user_input" | "finished" | "stopped" => {
            // The agent's last message, or what it said when it called `finish`.
            let answer =
                events.iter().rev().filter(|e| e["source"] == "agent").find(|e| {
                    (e["action"] == "message" && e["tool_call_metadata"].is_null()) || e["action"] == "finish"
                });
            Some(
                answer
                    .and_then(|a| {
                        if a["action"] == "finish" {
                            a["message"].as_str()
                        } else {
                            a["args"]["content"].as_str()
                        }
                    })
                    .unwrap_or("The conversation was stopped before the agent answered.")
                    .to_owned(),
            )
        }
        "error" => {
            let reason = events
                .iter()
                .rev()
                .find(|e| e["observation"] == "error")
                .and_then(|e| e["content"].as_str())
                .unwrap_or("the agent stopped with an error");
            Some(format!("I ran into a problem: {reason}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
