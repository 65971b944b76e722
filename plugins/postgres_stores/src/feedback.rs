//! `SaasFeedbackRoutes` (OpenHands `enterprise/server/routes/feedback.py`): a user rates a
//! conversation or one of its events (1 to 5, with a reason), and the web client asks which
//! events of a conversation have a rating. Kept in `conversation_feedback` beside the
//! conversations of `SaasConversationStore`, only for conversations of the caller.

use pg_common::{db_error, Database};
use plugin_sdk::{http::json, CallContext, HttpRequest, HttpResponse, PluginError, RouteSpec};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::Row;
use std::sync::Arc;

pub struct SaasFeedbackRoutes {
    pub(crate) database: Arc<Database>,
}

/// The most a reason may hold, and the size of `metadata` as JSON.
const MAX_REASON_CHARS: usize = 10_000;
const MAX_METADATA_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackRequest {
    conversation_id: String,
    #[serde(default)]
    event_id: Option<i64>,
    rating: Value,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// FastAPI's validation answer: 422 with `detail`.
fn invalid(message: &str) -> HttpResponse {
    json(422, &json!({ "detail": message }))
}

fn not_found(conversation_id: &str) -> HttpResponse {
    json(404, &json!({ "detail": format!("Conversation {conversation_id} not found") }))
}

impl SaasFeedbackRoutes {
    async fn submit(&self, user: &str, body: &[u8]) -> Result<HttpResponse, PluginError> {
        let request: FeedbackRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return Ok(invalid(&format!(
                    "expected {{conversation_id, event_id?, rating, reason?, metadata?}}: {e}"
                )))
            }
        };
        let Some(rating) = request.rating.as_i64().filter(|r| (1..=5).contains(r)) else {
            return Ok(invalid("rating must be a whole number from 1 to 5"));
        };
        if request.event_id.is_some_and(|e| e < 0) {
            return Ok(invalid("event_id must not be negative"));
        }
        if request.reason.as_ref().is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
            return Ok(invalid(&format!("reason may hold at most {MAX_REASON_CHARS} characters")));
        }
        let metadata = request.metadata.map(Value::Object);
        if metadata.as_ref().is_some_and(|m| m.to_string().len() > MAX_METADATA_BYTES) {
            return Ok(invalid(&format!("metadata may be at most {MAX_METADATA_BYTES} bytes of JSON")));
        }
        let pool = self.database.ready().await?;
        // The conversation's owner check and the insert are one statement.
        let stored = sqlx::query(
            "INSERT INTO conversation_feedback (user_id, conversation_id, event_id, rating, reason, metadata)
             SELECT $1, conversation_id, $3, $4, $5, $6 FROM conversation_metadata
             WHERE conversation_id = $2 AND user_id = $1",
        )
        .bind(user)
        .bind(&request.conversation_id)
        .bind(request.event_id)
        .bind(rating as i16)
        .bind(request.reason.as_deref())
        .bind(metadata)
        .execute(pool)
        .await
        .map_err(db_error)?;
        if stored.rows_affected() == 0 {
            return Ok(not_found(&request.conversation_id));
        }
        Ok(json(201, &json!({ "status": "success", "message": "Feedback submitted successfully" })))
    }

    /// Every stored event of the conversation, with its latest rating or `{"exists": false}`.
    async fn batch(&self, user: &str, conversation_id: &str) -> Result<HttpResponse, PluginError> {
        let pool = self.database.ready().await?;
        let owned: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM conversation_metadata WHERE conversation_id = $1 AND user_id = $2")
                .bind(conversation_id)
                .bind(user)
                .fetch_optional(pool)
                .await
                .map_err(db_error)?;
        if owned.is_none() {
            return Ok(not_found(conversation_id));
        }
        let rows = sqlx::query(
            "SELECT e.id, f.rating, f.reason FROM conversation_events e
             LEFT JOIN LATERAL (
                 SELECT rating, reason FROM conversation_feedback f
                 WHERE f.conversation_id = e.conversation_id AND f.event_id = e.id AND f.user_id = $2
                 ORDER BY f.id DESC LIMIT 1
             ) f ON true
             WHERE e.conversation_id = $1 ORDER BY e.id",
        )
        .bind(conversation_id)
        .bind(user)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        let mut out = Map::new();
        for row in rows {
            let id: i64 = row.get(0);
            let rating: Option<i16> = row.get(1);
            let answer = match rating {
                Some(rating) => json!({ "exists": true, "rating": rating, "reason": row.get::<Option<String>, _>(2) }),
                None => json!({ "exists": false }),
            };
            out.insert(id.to_string(), answer);
        }
        Ok(json(200, &Value::Object(out)))
    }
}

impl plugin_sdk::RouteHandler for SaasFeedbackRoutes {
    fn routes(&self) -> Vec<RouteSpec> {
        vec![
            RouteSpec { method: "POST".into(), path: "/feedback/conversation".into(), authenticated: true },
            RouteSpec {
                method: "GET".into(),
                path: "/feedback/conversation/{conversation_id}/batch".into(),
                authenticated: true,
            },
        ]
    }

    async fn handle(&self, ctx: CallContext, request: HttpRequest) -> Result<HttpResponse, PluginError> {
        // Single-user mode stores conversations under "" (as the conversation store does).
        let user = ctx.user_id().unwrap_or("");
        let path = request.path.as_str();
        match request.method.as_str() {
            "POST" if path == "/feedback/conversation" => self.submit(user, &request.body).await,
            "GET" => {
                let id = path
                    .strip_prefix("/feedback/conversation/")
                    .and_then(|rest| rest.strip_suffix("/batch"))
                    .filter(|id| !id.is_empty() && !id.contains('/'));
                match id {
                    Some(id) => self.batch(user, id).await,
                    None => Ok(json(404, &json!({ "detail": "Not Found" }))),
                }
            }
            _ => Ok(json(405, &json!({ "detail": "Method Not Allowed" }))),
        }
    }

    async fn health(&self) -> Result<String, PluginError> {
        self.database.ping().await?;
        Ok(format!("PostgreSQL {}", self.database.label()))
    }
}
