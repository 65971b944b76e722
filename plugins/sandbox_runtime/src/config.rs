//! The runtimes' `config` table in `plugins.toml`.

use crate::workspace::Isolation;
use plugin_sdk::{AppMode, PluginError};
use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RuntimeConfig {
    /// The directory of the workspaces (`<it>/<conversation id>`); default
    /// `<state_dir>/workspaces`.
    pub(crate) workspace_root: Option<String>,
    /// The longest a command may run, in seconds.
    pub(crate) command_timeout_secs: u64,
    /// Characters of a command's output the agent gets when the request names no bound.
    pub(crate) max_output_chars: usize,
    /// Git hosts (`host[:port]`) a selected repository is cloned from over plain HTTP (an
    /// internal server); all others over HTTPS.
    pub(crate) git_http_hosts: Vec<String>,
    /// bubblewrap: the sandbox may use the network (default: no network at all). It is the
    /// host's network, loopback services included: SaaS mode refuses it.
    pub(crate) sandbox_network: bool,
    /// bubblewrap: CPU seconds a command may use.
    pub(crate) sandbox_cpu_secs: u64,
    /// bubblewrap: memory a command may use, in MiB: all its processes together and what
    /// they write to the private `/tmp` (a memory cgroup per command; needs a writable cgroup
    /// hierarchy), and each process's address space.
    pub(crate) sandbox_memory_mb: u64,
    /// bubblewrap: processes a command may have at once (a pids cgroup per command). 0: no
    /// bound.
    pub(crate) sandbox_max_processes: u64,
    /// bubblewrap: the size of the sandbox's private, RAM-backed `/tmp`, in MiB.
    pub(crate) sandbox_tmp_mb: u64,
    /// bubblewrap: the most disk a conversation's workspace may take, in MiB (also the largest
    /// file a process may write); a command that passes it is killed and the agent told.
    /// 0: no bound.
    pub(crate) sandbox_workspace_mb: u64,
    /// bubblewrap: directories the sandbox also sees, read-only (a toolchain under `/opt`).
    pub(crate) sandbox_read_only: Vec<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workspace_root: None,
            command_timeout_secs: 120,
            max_output_chars: 30_000,
            git_http_hosts: Vec::new(),
            sandbox_network: false,
            sandbox_cpu_secs: 600,
            sandbox_memory_mb: 4096,
            sandbox_max_processes: 512,
            sandbox_tmp_mb: 512,
            sandbox_workspace_mb: 10_240,
            sandbox_read_only: Vec::new(),
        }
    }
}

/// What a runtime instance runs with.
pub(crate) struct Setup {
    pub(crate) root: PathBuf,
    pub(crate) isolation: Isolation,
    pub(crate) command_timeout: Duration,
    pub(crate) max_output_chars: usize,
    pub(crate) git_http_hosts: Vec<String>,
}

impl RuntimeConfig {
    /// `LocalRuntime`'s setup: a shell of the host's user, refused in SaaS mode, and refusing
    /// the sandbox's keys (they would silently mean nothing).
    pub(crate) fn local(
        config_json: &str,
        app_mode: AppMode,
        state_dir: Option<PathBuf>,
    ) -> Result<Setup, PluginError> {
        let raw: serde_json::Value =
            serde_json::from_str(if config_json.trim().is_empty() { "{}" } else { config_json })
                .map_err(|e| PluginError::invalid_config(e.to_string()))?;
        if let Some(key) = raw.as_object().and_then(|m| m.keys().find(|k| k.starts_with("sandbox_"))) {
            return Err(PluginError::invalid_config(format!(
                "`{key}` applies to BubblewrapRuntime; LocalRuntime runs commands without a sandbox (remove the key, or use implementation = \"BubblewrapRuntime\")"
            )));
        }
        if app_mode == AppMode::SAAS {
            return Err(PluginError::invalid_config(
                "LocalRuntime runs the agent's commands without isolation; SaaS mode refuses it (use implementation = \"BubblewrapRuntime\")",
            ));
        }
        if crate::workspace::local_reaper().is_none() {
            tracing::warn!(
                "LocalRuntime: no PID namespace can be made here (unshare, setpriv): a command's background processes may outlive it and the host"
            );
        }
        let config: RuntimeConfig = plugin_sdk::parse_config(config_json)?;
        config.setup(Isolation::Local, state_dir)
    }

    /// `BubblewrapRuntime`'s setup: bubblewrap must work here; cgroups bound each command in
    /// aggregate where they can be made (SaaS mode requires them).
    pub(crate) fn bubblewrap(
        config_json: &str,
        app_mode: AppMode,
        state_dir: Option<PathBuf>,
    ) -> Result<Setup, PluginError> {
        let config: RuntimeConfig = plugin_sdk::parse_config(config_json)?;
        if config.sandbox_network && app_mode == AppMode::SAAS {
            return Err(PluginError::invalid_config(
                "sandbox_network = true shares the host's network with the sandbox (its loopback services, such as PostgreSQL and Redis, and its abstract Unix sockets); SaaS mode refuses it (leave sandbox_network out)",
            ));
        }
        if config.sandbox_network {
            tracing::warn!(
                "sandbox_network = true: the sandbox shares the host's network, loopback services and abstract Unix sockets included"
            );
        }
        sandbox::bwrap::works().map_err(|e| PluginError::invalid_config(format!("BubblewrapRuntime: {e}")))?;
        let mut policy = config.sandbox_policy();
        let cgroups = sandbox::cgroup::Cgroup::available(policy.limits());
        policy.cgroups = with_cgroups(app_mode, cgroups)?;
        let isolation = Isolation::Bubblewrap { policy, workspace_mb: config.sandbox_workspace_mb };
        config.setup(isolation, state_dir)
    }

    fn setup(&self, isolation: Isolation, state_dir: Option<PathBuf>) -> Result<Setup, PluginError> {
        let root = match self.workspace_root.as_deref().filter(|r| !r.is_empty()) {
            Some(r) => PathBuf::from(r),
            None => state_dir.unwrap_or_else(|| PathBuf::from(".")).join("workspaces"),
        };
        if !plugin_sdk::read_only() {
            std::fs::create_dir_all(&root)
                .map_err(|e| PluginError::invalid_config(format!("workspace_root {}: {e}", root.display())))?;
        }
        Ok(Setup {
            root,
            isolation,
            command_timeout: Duration::from_secs(self.command_timeout_secs.max(1)),
            max_output_chars: self.max_output_chars.max(100),
            git_http_hosts: self.git_http_hosts.clone(),
        })
    }

    /// The sandbox this config asks for (with cgroups, until `with_cgroups` says otherwise).
    fn sandbox_policy(&self) -> sandbox::bwrap::Policy {
        sandbox::bwrap::Policy {
            network: self.sandbox_network,
            cpu_secs: self.sandbox_cpu_secs.max(1),
            memory_mb: self.sandbox_memory_mb.max(64),
            max_processes: self.sandbox_max_processes,
            tmp_mb: self.sandbox_tmp_mb.max(1),
            file_mb: self.sandbox_workspace_mb,
            read_only: self.sandbox_read_only.iter().map(PathBuf::from).collect(),
            cgroups: true,
        }
    }
}

/// Whether commands get cgroups, given whether they can be made here (`available`): the
/// aggregate bounds need a writable hierarchy (root, or one systemd delegates). Without one,
/// SaaS mode refuses to start; OSS mode goes on with weaker bounds, and says which: memory
/// per process, processes per user.
fn with_cgroups(app_mode: AppMode, available: Result<(), String>) -> Result<bool, PluginError> {
    match available {
        Ok(()) => Ok(true),
        Err(e) if app_mode == AppMode::SAAS => Err(PluginError::invalid_config(format!(
            "BubblewrapRuntime bounds each command's memory (sandbox_memory_mb) and processes (sandbox_max_processes) with a cgroup, and {e}: run the host as root or in a delegated cgroup hierarchy (SaaS mode does not run the sandbox with weaker bounds)"
        ))),
        Err(e) => {
            tracing::warn!(
                "BubblewrapRuntime without cgroups ({e}): memory is bounded per process (sandbox_memory_mb of address space each) and processes per user (RLIMIT_NPROC = sandbox_max_processes), not for the sandbox as a whole; run the host as root or in a delegated cgroup hierarchy for the aggregate bounds"
            );
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without writable cgroups (an unprivileged host without delegation), OSS mode runs the
    /// sandbox with the weaker per-process and per-user bounds; SaaS mode refuses, naming the fix.
    #[test]
    fn without_cgroups_oss_goes_on_with_weaker_bounds_and_saas_refuses() {
        assert!(with_cgroups(AppMode::OSS, Ok(())).unwrap());
        assert!(!with_cgroups(AppMode::OSS, Err("no pids controller".into())).unwrap());
        let refused = with_cgroups(AppMode::SAAS, Err("no pids controller".into())).unwrap_err();
        assert!(refused.message.contains("delegated cgroup hierarchy"), "{}", refused.message);
    }

    #[test]
    fn the_local_runtime_refuses_the_sandboxs_keys_and_saas_mode() {
        let e = RuntimeConfig::local(r#"{"sandbox_network": true}"#, AppMode::OSS, None).err().unwrap();
        assert!(e.message.contains("applies to BubblewrapRuntime"), "{}", e.message);
        let e = RuntimeConfig::local("{}", AppMode::SAAS, None).err().unwrap();
        assert!(e.message.contains("SaaS mode refuses it"), "{}", e.message);
    }
}
