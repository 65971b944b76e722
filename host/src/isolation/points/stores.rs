//! The three stores on the wire: the host's proxies and the runner's dispatch.

use super::*;
use plugin_api::{ConversationStoreObject, EventQuery, SecretsStoreObject, SettingsStoreObject};

impl plugin_api::SettingsStore for Proxy {
    fn load(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.optional("load", ctx)
    }
    fn store(&self, ctx: CallContext, settings_json: RString) -> FfiFuture<PResult<()>> {
        self.call("store", ctx, doc(&settings_json).map(|s| json!({ "settings": s })), unit)
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_(deadline_ms)
    }
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("migrate", ctx)
    }
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("rotate_keys", ctx)
    }
    fn load_versioned(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.optional("load_versioned", ctx)
    }
    fn store_versioned(
        &self,
        ctx: CallContext,
        settings_json: RString,
        expected_version: u64,
    ) -> FfiFuture<PResult<u64>> {
        let args = doc(&settings_json).map(|s| json!({ "settings": s, "expected_version": expected_version }));
        self.call("store_versioned", ctx, args, typed)
    }
}

impl plugin_api::SecretsStore for Proxy {
    fn load(&self, ctx: CallContext) -> FfiFuture<PResult<ROption<RString>>> {
        self.optional("load", ctx)
    }
    fn store(&self, ctx: CallContext, secrets_json: RString) -> FfiFuture<PResult<()>> {
        self.call("store", ctx, doc(&secrets_json).map(|s| json!({ "secrets": s })), unit)
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_(deadline_ms)
    }
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("migrate", ctx)
    }
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("rotate_keys", ctx)
    }
    fn update(&self, ctx: CallContext, change_json: RString) -> FfiFuture<PResult<()>> {
        self.call("update", ctx, doc(&change_json).map(|c| json!({ "change": c })), unit)
    }
}

impl plugin_api::ConversationStore for Proxy {
    fn save_metadata(&self, ctx: CallContext, metadata_json: RString) -> FfiFuture<PResult<()>> {
        self.call("save_metadata", ctx, doc(&metadata_json).map(|m| json!({ "metadata": m })), unit)
    }
    fn get_metadata(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<ROption<RString>>> {
        self.call("get_metadata", ctx, Ok(json!({ "conversation_id": conversation_id.as_str() })), |v| Ok(opt_doc(v)))
    }
    fn delete_metadata(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<bool>> {
        self.call("delete_metadata", ctx, Ok(json!({ "conversation_id": conversation_id.as_str() })), typed)
    }
    fn validate_metadata(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        user_id: RString,
    ) -> FfiFuture<PResult<bool>> {
        let args = json!({ "conversation_id": conversation_id.as_str(), "user_id": user_id.as_str() });
        self.call("validate_metadata", ctx, Ok(args), typed)
    }
    fn search(&self, ctx: CallContext, page_id: ROption<RString>, limit: u32) -> FfiFuture<PResult<RString>> {
        let page_id = page_id.as_ref().map(|p| p.as_str()).into_option();
        self.call("search", ctx, Ok(json!({ "page_id": page_id, "limit": limit })), |v| Ok(v.to_string().into()))
    }
    fn append_events(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        events_json: RVec<RString>,
    ) -> FfiFuture<PResult<u64>> {
        let args = events(&events_json).map(|e| json!({ "conversation_id": conversation_id.as_str(), "events": e }));
        self.call("append_events", ctx, args, typed)
    }
    fn get_events(&self, ctx: CallContext, conversation_id: RString, query: EventQuery) -> FfiFuture<PResult<RString>> {
        let args = json!({
            "conversation_id": conversation_id.as_str(),
            "query": {
                "start_id": query.start_id,
                "end_id": query.end_id.into_option(),
                "reverse": query.reverse,
                "limit": query.limit,
            },
        });
        self.call("get_events", ctx, Ok(args), |v| Ok(v.to_string().into()))
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_(deadline_ms)
    }
    fn migrate(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("migrate", ctx)
    }
    fn rotate_keys(&self, ctx: CallContext) -> FfiFuture<PResult<RString>> {
        self.report("rotate_keys", ctx)
    }
    fn append_events_fenced(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        events_json: RVec<RString>,
        fence: u64,
    ) -> FfiFuture<PResult<u64>> {
        let args = events(&events_json)
            .map(|e| json!({ "conversation_id": conversation_id.as_str(), "events": e, "fence": fence }));
        self.call("append_events_fenced", ctx, args, typed)
    }
}

fn events(list: &RVec<RString>) -> Result<Value, PluginError> {
    list.iter().map(|e| doc(e)).collect::<Result<Vec<_>, _>>().map(Value::Array)
}

/// `settings`: calls the library's object.
pub(super) async fn settings(
    o: &SettingsStoreObject,
    method: &str,
    ctx: CallContext,
    a: Value,
) -> Result<Value, PluginError> {
    match method {
        "load" => from_opt(o.load(ctx).await.into_result()?),
        "store" => o.store(ctx, doc_arg(&a, "settings")?).await.into_result().map(|()| Value::Null),
        "health" => o.health(ctx).await.into_result().map(health_value),
        "migrate" => from_text(o.migrate(ctx).await.into_result()?),
        "rotate_keys" => from_text(o.rotate_keys(ctx).await.into_result()?),
        "load_versioned" => from_opt(o.load_versioned(ctx).await.into_result()?),
        "store_versioned" => {
            let (s, v) = (doc_arg(&a, "settings")?, arg::<u64>(&a, "expected_version")?);
            o.store_versioned(ctx, s, v).await.into_result().map(Value::from)
        }
        _ => Err(unknown(method)),
    }
}

/// `secrets`: calls the library's object.
pub(super) async fn secrets(
    o: &SecretsStoreObject,
    method: &str,
    ctx: CallContext,
    a: Value,
) -> Result<Value, PluginError> {
    match method {
        "load" => from_opt(o.load(ctx).await.into_result()?),
        "store" => o.store(ctx, doc_arg(&a, "secrets")?).await.into_result().map(|()| Value::Null),
        "health" => o.health(ctx).await.into_result().map(health_value),
        "migrate" => from_text(o.migrate(ctx).await.into_result()?),
        "rotate_keys" => from_text(o.rotate_keys(ctx).await.into_result()?),
        "update" => o.update(ctx, doc_arg(&a, "change")?).await.into_result().map(|()| Value::Null),
        _ => Err(unknown(method)),
    }
}

/// `conversations`: calls the library's object.
pub(super) async fn conversations(
    o: &ConversationStoreObject,
    method: &str,
    ctx: CallContext,
    a: Value,
) -> Result<Value, PluginError> {
    {
        let id = || text_arg(&a, "conversation_id");
        let events = || -> Result<RVec<RString>, PluginError> {
            let list: Vec<Value> = arg(&a, "events")?;
            Ok(list.into_iter().map(|e| RString::from(e.to_string())).collect())
        };
        match method {
            "save_metadata" => o.save_metadata(ctx, doc_arg(&a, "metadata")?).await.into_result().map(|()| Value::Null),
            "get_metadata" => from_opt(o.get_metadata(ctx, id()?).await.into_result()?),
            "delete_metadata" => o.delete_metadata(ctx, id()?).await.into_result().map(Value::from),
            "validate_metadata" => {
                o.validate_metadata(ctx, id()?, text_arg(&a, "user_id")?).await.into_result().map(Value::from)
            }
            "search" => {
                let page: Option<String> = arg(&a, "page_id")?;
                let limit: u32 = arg(&a, "limit")?;
                from_text(o.search(ctx, page.map(RString::from).into(), limit).await.into_result()?)
            }
            "append_events" => o.append_events(ctx, id()?, events()?).await.into_result().map(Value::from),
            "append_events_fenced" => {
                let fence: u64 = arg(&a, "fence")?;
                o.append_events_fenced(ctx, id()?, events()?, fence).await.into_result().map(Value::from)
            }
            "get_events" => {
                #[derive(serde::Deserialize)]
                struct Q {
                    start_id: u64,
                    end_id: Option<u64>,
                    reverse: bool,
                    limit: u32,
                }
                let q: Q = arg(&a, "query")?;
                let query = EventQuery::new(q.start_id, q.end_id, q.reverse, q.limit);
                from_text(o.get_events(ctx, id()?, query).await.into_result()?)
            }
            "health" => o.health(ctx).await.into_result().map(health_value),
            "migrate" => from_text(o.migrate(ctx).await.into_result()?),
            "rotate_keys" => from_text(o.rotate_keys(ctx).await.into_result()?),
            _ => Err(unknown(method)),
        }
    }
}
