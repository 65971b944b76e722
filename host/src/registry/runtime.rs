//! The `runtime` instance, as the host's workspace routes reach it.

use super::{CallError, Registry};
use abi_stable::std_types::{RString, RVec};
use plugin_api::{models, CallContext};

impl Registry {
    /// Whether a runtime is configured.
    pub fn has_runtime(&self) -> bool {
        self.runtime.is_some()
    }

    /// The entries of a directory of a conversation's workspace; `None` without a runtime.
    pub async fn workspace_list(
        &self,
        mut ctx: CallContext,
        id: &str,
        path: &str,
    ) -> Option<Result<Vec<models::FileEntry>, CallError>> {
        let r = self.runtime.as_ref()?;
        let _span = r.meta.traced(&mut ctx, "list_files");
        let answer = r.meta.call("list_files", r.obj.list_files(ctx, id.into(), path.into())).await;
        Some(answer.and_then(|json| r.meta.decode("list_files", &json)))
    }

    /// A file of a conversation's workspace; `None` without a runtime.
    pub async fn workspace_read(
        &self,
        mut ctx: CallContext,
        id: &str,
        path: &str,
        max_bytes: u64,
    ) -> Option<Result<Vec<u8>, CallError>> {
        let r = self.runtime.as_ref()?;
        let _span = r.meta.traced(&mut ctx, "read_file");
        let answer = r.meta.call("read_file", r.obj.read_file(ctx, id.into(), path.into(), max_bytes)).await;
        Some(answer.map(RVec::into_vec))
    }

    /// Writes a file into a conversation's workspace; `None` without a runtime.
    pub async fn workspace_write(
        &self,
        mut ctx: CallContext,
        id: &str,
        path: &str,
        content: &[u8],
    ) -> Option<Result<(), CallError>> {
        let r = self.runtime.as_ref()?;
        let _span = r.meta.traced(&mut ctx, "write_file");
        let content = RVec::from_slice(content);
        Some(r.meta.call("write_file", r.obj.write_file(ctx, id.into(), path.into(), content)).await)
    }

    /// What changed in a conversation's workspace since its last commit; `None` without a
    /// runtime.
    pub async fn workspace_changes(
        &self,
        mut ctx: CallContext,
        id: &str,
    ) -> Option<Result<Vec<models::GitChange>, CallError>> {
        let r = self.runtime.as_ref()?;
        let _span = r.meta.traced(&mut ctx, "git_changes");
        let answer = r.meta.call("git_changes", r.obj.git_changes(ctx, id.into())).await;
        Some(answer.and_then(|json| r.meta.decode("git_changes", &json)))
    }

    /// A file of a conversation's workspace as of its last commit; `None` without a runtime.
    pub async fn workspace_original(
        &self,
        mut ctx: CallContext,
        id: &str,
        path: &str,
        max_bytes: u64,
    ) -> Option<Result<Option<Vec<u8>>, CallError>> {
        let r = self.runtime.as_ref()?;
        let _span = r.meta.traced(&mut ctx, "git_original");
        let answer = r.meta.call("git_original", r.obj.git_original(ctx, id.into(), path.into(), max_bytes)).await;
        Some(answer.map(|bytes| bytes.into_option().map(RVec::into_vec)))
    }

    /// Removes a deleted conversation's workspace; `Ok(false)` without a runtime or a
    /// workspace.
    pub async fn workspace_destroy(&self, mut ctx: CallContext, id: &str) -> Result<bool, CallError> {
        let Some(r) = self.runtime.as_ref() else { return Ok(false) };
        let _span = r.meta.traced(&mut ctx, "destroy");
        r.meta.call("destroy", r.obj.destroy(ctx, RString::from(id))).await
    }
}
