//! Starting a conversation, whichever door asks: `POST /api/conversations`, the socket.io
//! join (a stopped conversation starts again), `/start`, and plugins' `StartConversation`.

use super::{App, AppError, AppResult};
use plugin_api::{
    models::{Admission, ConversationMetadata, ExperimentQuery, StartRequest},
    CallContext, ErrorCode,
};

/// How long a client refused during maintenance is asked to wait before trying again.
const MAINTENANCE_RETRY_AFTER_SECS: u64 = 300;

/// What a new conversation starts with (OpenHands' `InitSessionRequest`, as each door
/// parsed it).
#[derive(Debug, Default)]
pub struct NewConversation {
    /// Chosen by the caller (plugins; `ALLOW_SET_CONVERSATION_ID`), else made up.
    pub id: Option<String>,
    pub repository: Option<String>,
    pub git_provider: Option<String>,
    pub selected_branch: Option<String>,
    pub initial_user_msg: Option<String>,
    pub image_urls: Vec<String>,
    pub replay_json: Option<String>,
    pub conversation_instructions: Option<String>,
    pub title: Option<String>,
    /// What started it: `gui`, `openhands_api`, `suggested_task`, `microagent_management`,
    /// `resolver`, ...
    pub trigger: String,
}

/// A started conversation: its id and the agent loop's status.
#[derive(Debug)]
pub struct Started {
    pub id: String,
    pub status: String,
}

/// `Invalid` for ids longer than 100 characters, with NUL, `..`, `/`, `\` or control
/// characters (ids name files and keys in the stores).
pub fn check_conversation_id(id: &str) -> AppResult<()> {
    let reason = if id.is_empty() {
        Some("empty")
    } else if id.chars().count() > 100 {
        Some("longer than 100 characters")
    } else if id.contains('\0') {
        Some("contains a NUL byte")
    } else if id.contains("..") {
        Some("contains `..`")
    } else if id.contains('/') || id.contains('\\') {
        Some("contains a path separator")
    } else if id.chars().any(char::is_control) {
        Some("contains control characters")
    } else {
        None
    };
    match reason {
        Some(r) => Err(AppError::Invalid(format!("invalid conversation ID: {r}"))),
        None => Ok(()),
    }
}

/// A new conversation id: 32 hex digits.
fn new_conversation_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl App {
    /// Creates and starts a conversation for the caller.
    pub async fn create_conversation(&self, ctx: &CallContext, new: NewConversation) -> AppResult<Started> {
        if !self.registry().has_manager() {
            return Err(AppError::NoManager);
        }
        self.refuse_in_maintenance()?;
        self.admit_start(ctx).await?;
        self.within_cap(ctx).await?;
        let id = new.id.unwrap_or_else(new_conversation_id);
        let mut request = self.start_request(ctx, &id).await?;
        if self.registry().get_metadata(ctx.clone(), &id).await?.is_some() {
            return Err(AppError::ConversationExists(id));
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let metadata = ConversationMetadata {
            conversation_id: id.clone(),
            selected_repository: new.repository,
            user_id: ctx.user_id().map(str::to_owned),
            selected_branch: new.selected_branch,
            git_provider: new.git_provider,
            trigger: Some(new.trigger),
            title: new.title,
            created_at: now.clone(),
            last_updated_at: Some(now),
            llm_model: request.settings.llm_model.clone(),
            conversation_version: Some("V0".to_owned()),
            ..Default::default()
        };
        self.registry().save_metadata(ctx.clone(), &metadata).await?;
        self.registry().on_create_conversation(ctx);
        request.initial_user_msg = new.initial_user_msg;
        request.image_urls = new.image_urls;
        request.replay_json = new.replay_json;
        request.conversation_instructions = new.conversation_instructions;
        let info = self.registry().maybe_start(ctx.clone(), &request).await?;
        Ok(Started { id, status: info.status })
    }

    /// Starts the agent loop of a stored conversation (if it is not running).
    pub async fn start_conversation(&self, ctx: &CallContext, id: &str) -> AppResult<String> {
        let request = self.start_request(ctx, id).await?;
        let info = self.registry().maybe_start(ctx.clone(), &request).await.map_err(AppError::StartFailed)?;
        Ok(info.status)
    }

    /// For plugins (`StartConversation`): a given id that exists already is answered as is.
    pub async fn launch(&self, ctx: &CallContext, new: NewConversation) -> AppResult<String> {
        if let Some(id) = &new.id {
            if self.registry().get_metadata(ctx.clone(), id).await?.is_some() {
                return Ok(id.clone());
            }
        }
        Ok(self.create_conversation(ctx, new).await?.id)
    }

    /// From `MAINTENANCE_START_TIME` on, new conversations are refused; running ones go on,
    /// and reads keep working.
    fn refuse_in_maintenance(&self) -> AppResult<()> {
        let Some(start) = self.server.env.maintenance_start else { return Ok(()) };
        if chrono::Utc::now() < start {
            return Ok(());
        }
        Err(AppError::Maintenance {
            since: start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            retry_after_secs: MAINTENANCE_RETRY_AFTER_SECS,
        })
    }

    /// Monitoring listeners may refuse a new conversation: billing does when the user has no
    /// credits left.
    async fn admit_start(&self, ctx: &CallContext) -> AppResult<()> {
        let admission = Admission { action: Admission::START_CONVERSATION.to_owned(), conversation_id: None };
        match self.registry().admit(ctx, &admission).await {
            Ok(()) => Ok(()),
            Err(e) if e.error.code == ErrorCode::PAYMENT_REQUIRED => {
                Err(AppError::PaymentRequired(e.error.message.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses a new conversation when the user has `[server] max_conversations_per_user`
    /// stored already (counted through the store's search, a page as large as the bound).
    async fn within_cap(&self, ctx: &CallContext) -> AppResult<()> {
        let cap = self.server.max_conversations_per_user;
        if cap == 0 {
            return Ok(());
        }
        let mut count = 0usize;
        let mut page: Option<String> = None;
        loop {
            let want = (cap - count).clamp(1, 1000) as u32;
            let found = self.registry().search_conversations(ctx.clone(), page.as_deref(), want).await?;
            count += found.results.len();
            if count >= cap {
                return Err(AppError::TooManyStored { cap });
            }
            match found.next_page_id {
                Some(next) if !found.results.is_empty() => page = Some(next),
                _ => return Ok(()),
            }
        }
    }

    /// What a manager starts a conversation with: the user's settings (with A/B experiments
    /// applied), secrets and effective provider tokens.
    pub async fn start_request(&self, ctx: &CallContext, conversation_id: &str) -> AppResult<StartRequest> {
        let (settings, stored) = tokio::join!(self.settings_or_saas_default(ctx), self.secrets_and_tokens(ctx));
        let Some(mut settings) = settings? else { return Err(AppError::SettingsNotFound) };
        let model = settings.llm_model.as_deref().unwrap_or("");
        // The deployment's proxy key (LITE_LLM_API_KEY) stands in for the user's.
        let keyless = model.starts_with("bedrock/")
            || model.starts_with("lemonade/")
            || self.server.env.lite_llm_api_key.is_some();
        if settings.llm_api_key.as_deref().is_none_or(|k| k.trim().is_empty()) && !keyless {
            return Err(AppError::NoLlmKey);
        }
        let (secrets, provider_tokens) = stored?;
        let secrets = secrets.unwrap_or_default();
        let mut system_prompt = None;
        // A/B experiments (monitoring listeners run them): the variant's model or system prompt.
        let query = ExperimentQuery {
            conversation_id: conversation_id.to_owned(),
            llm_model: settings.llm_model.clone(),
            ..Default::default()
        };
        for assignment in self.registry().experiments(ctx, &query).await {
            tracing::debug!(experiment = %assignment.experiment, variant = %assignment.variant, "experiment variant applied");
            if let Some(model) = assignment.llm_model {
                settings.llm_model = Some(model);
            }
            if let Some(prompt) = assignment.system_prompt {
                system_prompt = Some(prompt);
            }
        }
        Ok(StartRequest {
            conversation_id: conversation_id.to_owned(),
            settings,
            provider_tokens,
            custom_secrets: secrets.custom_secrets,
            system_prompt,
            ..Default::default()
        })
    }
}
