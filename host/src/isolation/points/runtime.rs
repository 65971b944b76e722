//! `runtime` on the wire: the host's proxy and the runner's dispatch. File contents cross as
//! base64. The same stand-in ([`Via`]) serves the other direction: an isolated manager's
//! runtime handle, whose calls go to the host as host calls.

use super::*;

/// Where a stand-in's calls go: a runner ([`Proxy`], every point's), or the host (a runner's
/// runtime handle for its manager).
pub(crate) trait Route: Send + Sync + 'static {
    fn request(
        &self,
        method: &'static str,
        ctx: CallContext,
        args: Value,
    ) -> futures_util::future::BoxFuture<'static, Result<Value, PluginError>>;
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>>;
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()>;
}

/// A `runtime` whose calls go where `R` sends them.
pub(crate) struct Via<R>(pub(crate) R);

impl<R: Route> Via<R> {
    fn call<T: Send + 'static>(
        &self,
        method: &'static str,
        ctx: CallContext,
        args: Result<Value, PluginError>,
        answer: impl FnOnce(Value) -> Result<T, PluginError> + Send + 'static,
    ) -> FfiFuture<PResult<T>> {
        forward(args.map(|args| self.0.request(method, ctx, args)), answer)
    }
}

impl Route for Proxy {
    fn request(
        &self,
        method: &'static str,
        ctx: CallContext,
        args: Value,
    ) -> futures_util::future::BoxFuture<'static, Result<Value, PluginError>> {
        let runner = self.runner.clone();
        Box::pin(async move { runner.call(method, &ctx, args).await })
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.health_(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.shutdown_(deadline_ms)
    }
}

fn cid(conversation_id: &RString) -> Value {
    json!({ "conversation_id": conversation_id.as_str() })
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    if let Value::Object(map) = &mut base {
        map.insert(key.to_owned(), value);
    }
    base
}

impl<R: Route> plugin_api::Runtime for Via<R> {
    fn open(&self, ctx: CallContext, request_json: RString) -> FfiFuture<PResult<RString>> {
        self.call("open", ctx, doc(&request_json).map(|r| json!({ "request": r })), text)
    }
    fn run(&self, ctx: CallContext, conversation_id: RString, request_json: RString) -> FfiFuture<PResult<RString>> {
        let args = doc(&request_json).map(|r| with(cid(&conversation_id), "request", r));
        self.call("run", ctx, args, text)
    }
    fn interrupt(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<bool>> {
        self.call("interrupt", ctx, Ok(cid(&conversation_id)), typed)
    }
    fn list_files(&self, ctx: CallContext, conversation_id: RString, path: RString) -> FfiFuture<PResult<RString>> {
        self.call("list_files", ctx, Ok(with(cid(&conversation_id), "path", json!(path.as_str()))), text)
    }
    fn read_file(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        path: RString,
        max_bytes: u64,
    ) -> FfiFuture<PResult<RVec<u8>>> {
        let args = with(with(cid(&conversation_id), "path", json!(path.as_str())), "max_bytes", json!(max_bytes));
        self.call("read_file", ctx, Ok(args), |v| unb64(&v, "content").map_err(|e| bad(e.message)))
    }
    fn write_file(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        path: RString,
        content: RVec<u8>,
    ) -> FfiFuture<PResult<()>> {
        let args = with(with(cid(&conversation_id), "path", json!(path.as_str())), "content", b64(&content));
        self.call("write_file", ctx, Ok(args), unit)
    }
    fn git_changes(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<RString>> {
        self.call("git_changes", ctx, Ok(cid(&conversation_id)), text)
    }
    fn git_original(
        &self,
        ctx: CallContext,
        conversation_id: RString,
        path: RString,
        max_bytes: u64,
    ) -> FfiFuture<PResult<ROption<RVec<u8>>>> {
        let args = with(with(cid(&conversation_id), "path", json!(path.as_str())), "max_bytes", json!(max_bytes));
        self.call("git_original", ctx, Ok(args), |v| match v {
            Value::Null => Ok(ROption::RNone),
            v => unb64(&v, "content").map(ROption::RSome).map_err(|e| bad(e.message)),
        })
    }
    fn close(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<()>> {
        self.call("close", ctx, Ok(cid(&conversation_id)), unit)
    }
    fn destroy(&self, ctx: CallContext, conversation_id: RString) -> FfiFuture<PResult<bool>> {
        self.call("destroy", ctx, Ok(cid(&conversation_id)), typed)
    }
    fn health(&self, ctx: CallContext) -> FfiFuture<PResult<Health>> {
        self.0.health(ctx)
    }
    fn shutdown(&self, deadline_ms: u64) -> FfiFuture<()> {
        self.0.shutdown(deadline_ms)
    }
}

/// `runtime`: calls the library's object (in a runner), or the host's runtime handle (for an
/// isolated manager's host call).
pub(in crate::isolation) async fn runtime(
    o: &RuntimeObject,
    method: &str,
    ctx: CallContext,
    a: Value,
) -> Result<Value, PluginError> {
    let id = || text_arg(&a, "conversation_id");
    match method {
        "open" => from_text(o.open(ctx, doc_arg(&a, "request")?).await.into_result()?),
        "run" => from_text(o.run(ctx, id()?, doc_arg(&a, "request")?).await.into_result()?),
        "interrupt" => o.interrupt(ctx, id()?).await.into_result().map(Value::from),
        "list_files" => from_text(o.list_files(ctx, id()?, text_arg(&a, "path")?).await.into_result()?),
        "read_file" => {
            let bytes = o.read_file(ctx, id()?, text_arg(&a, "path")?, arg(&a, "max_bytes")?).await.into_result()?;
            Ok(b64(&bytes))
        }
        "write_file" => {
            let content = unb64(a.get("content").unwrap_or(&Value::Null), "content")?;
            o.write_file(ctx, id()?, text_arg(&a, "path")?, content).await.into_result().map(|()| Value::Null)
        }
        "git_changes" => from_text(o.git_changes(ctx, id()?).await.into_result()?),
        "git_original" => {
            let original =
                o.git_original(ctx, id()?, text_arg(&a, "path")?, arg(&a, "max_bytes")?).await.into_result()?;
            Ok(original.into_option().map_or(Value::Null, |bytes| b64(&bytes)))
        }
        "close" => o.close(ctx, id()?).await.into_result().map(|()| Value::Null),
        "destroy" => o.destroy(ctx, id()?).await.into_result().map(Value::from),
        "health" => o.health(ctx).await.into_result().map(health_value),
        _ => Err(unknown(method)),
    }
}
