//! What every conversation manager built on this library is configured with (its `config`
//! table in `plugins.toml`): limits, idle close, the LLM call's deadlines and retries, the
//! system prompt, private hosts allowed.

use crate::llm::LlmLimits;
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// Running conversations per user; starting one more closes the least recently active
    /// (OpenHands `max_concurrent_conversations`, default 3).
    pub max_concurrent_conversations: usize,
    /// A conversation nobody is connected to and whose agent is not running is closed after
    /// this many seconds of quiet (OpenHands `sandbox.close_delay`, default 3600). 0 = never.
    pub close_delay_secs: u64,
    /// How often idle conversations are looked for, in milliseconds (default 15000).
    pub cleanup_interval_ms: u64,
    /// Deadline of one LLM call, in seconds.
    pub llm_timeout_secs: u64,
    /// Longest gap between two streamed chunks, in seconds.
    pub llm_chunk_timeout_secs: u64,
    /// Retries of a failed LLM call (429, 5xx, timeouts).
    pub llm_max_retries: u32,
    /// First wait between retries, in milliseconds; doubled each time.
    pub llm_retry_initial_ms: u64,
    /// The system message that starts every conversation's history.
    pub system_prompt: String,
    /// In SaaS mode a user's `llm_base_url` may not lead to a loopback, private or link-local
    /// address; these host names or IPs are allowed all the same (an internal LLM gateway).
    pub llm_private_hosts_allowed: Vec<String>,
    /// Where the agent's tools run: none (the default: a chat without tools), `bubblewrap` (a
    /// sandbox per command), or `local` (a shell of the host's user in the conversation's
    /// workspace, no isolation; SaaS mode refuses it).
    pub runtime: Option<String>,
    /// bubblewrap: the sandbox may use the network (default: no network at all). It is the
    /// host's network, loopback services included: SaaS mode refuses it.
    pub sandbox_network: bool,
    /// bubblewrap: CPU seconds a command may use.
    pub sandbox_cpu_secs: u64,
    /// bubblewrap: memory a command may use, in MiB: all its processes together and what
    /// they write to the private `/tmp` (a memory cgroup per command; needs a writable cgroup
    /// hierarchy), and each process's address space.
    pub sandbox_memory_mb: u64,
    /// bubblewrap: processes a command may have at once, itself and all it starts (a pids
    /// cgroup per command; needs a writable cgroup hierarchy). 0: no bound.
    pub sandbox_max_processes: u64,
    /// bubblewrap: the size of the sandbox's private, RAM-backed `/tmp`, in MiB.
    pub sandbox_tmp_mb: u64,
    /// bubblewrap: the most disk a conversation's workspace may take, in MiB (also the largest
    /// file a process may write); a command that passes it is killed and the agent told.
    /// 0: no bound.
    pub sandbox_workspace_mb: u64,
    /// bubblewrap: directories the sandbox also sees, read-only (a toolchain under `/opt`).
    /// By default it sees `/usr` (and `/bin`, `/lib`...), a few files of `/etc`, its
    /// workspace, a private `/tmp` and `/home`, and nothing else.
    pub sandbox_read_only: Vec<String>,
    /// Git hosts (`host[:port]`) a selected repository is cloned from over plain HTTP (an
    /// internal server); all others over HTTPS.
    pub git_http_hosts: Vec<String>,
    /// The directory of the workspaces (`<it>/<conversation id>`); default
    /// `<state_dir>/workspaces`.
    pub workspace_root: Option<String>,
    /// The longest a command may run, in seconds.
    pub command_timeout_secs: u64,
    /// Characters of a command's output (or a file view) the agent gets; the rest is noted.
    pub max_output_chars: usize,
    /// LLM calls per user message at most, when the user's settings name no `max_iterations`.
    pub max_iterations: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            max_concurrent_conversations: 3,
            close_delay_secs: 3600,
            cleanup_interval_ms: 15_000,
            llm_timeout_secs: 120,
            llm_chunk_timeout_secs: 30,
            llm_max_retries: 3,
            llm_retry_initial_ms: 1000,
            system_prompt: "You are OpenHands agent, a helpful AI assistant.".to_owned(),
            llm_private_hosts_allowed: Vec::new(),
            runtime: None,
            sandbox_network: false,
            sandbox_cpu_secs: 600,
            sandbox_memory_mb: 4096,
            sandbox_max_processes: 512,
            sandbox_tmp_mb: 512,
            sandbox_workspace_mb: 10_240,
            sandbox_read_only: Vec::new(),
            git_http_hosts: Vec::new(),
            workspace_root: None,
            command_timeout_secs: 120,
            max_output_chars: 30_000,
            max_iterations: 50,
        }
    }
}

impl ManagerConfig {
    pub fn limits(&self) -> LlmLimits {
        LlmLimits {
            request_timeout: Duration::from_secs(self.llm_timeout_secs.max(1)),
            chunk_timeout: Duration::from_secs(self.llm_chunk_timeout_secs.max(1)),
            max_retries: self.llm_max_retries,
            initial_backoff: Duration::from_millis(self.llm_retry_initial_ms),
        }
    }

    pub fn close_delay(&self) -> Duration {
        if self.close_delay_secs == 0 {
            Duration::MAX
        } else {
            Duration::from_secs(self.close_delay_secs)
        }
    }

    /// The tools' setup, when a runtime is configured; refused when it cannot be honoured.
    pub fn tools(
        &self,
        app_mode: plugin_sdk::AppMode,
        state_dir: &str,
    ) -> Result<Option<crate::tools::ToolSetup>, plugin_sdk::PluginError> {
        let Some(runtime) = self.runtime.as_deref().filter(|r| !r.is_empty()) else { return Ok(None) };
        let isolation = match runtime {
            "local" if app_mode == plugin_sdk::AppMode::SAAS => {
                return Err(plugin_sdk::PluginError::invalid_config(
                    "runtime = \"local\" runs the agent's commands without isolation; SaaS mode refuses it (use \"bubblewrap\")",
                ))
            }
            "local" => {
                if crate::runtime::local_reaper().is_none() {
                    tracing::warn!(
                        "runtime = \"local\": no PID namespace can be made here (unshare, setpriv): a command's background processes may outlive it and the host"
                    );
                }
                crate::runtime::Isolation::Local
            }
            "bubblewrap" if self.sandbox_network && app_mode == plugin_sdk::AppMode::SAAS => {
                return Err(plugin_sdk::PluginError::invalid_config(
                    "sandbox_network = true shares the host's network with the sandbox (its loopback services, such as PostgreSQL and Redis, and its abstract Unix sockets); SaaS mode refuses it (leave sandbox_network out)",
                ))
            }
            "bubblewrap" => {
                if self.sandbox_network {
                    tracing::warn!(
                        "sandbox_network = true: the sandbox shares the host's network, loopback services and abstract Unix sockets included"
                    );
                }
                sandbox::bwrap::works()
                    .map_err(|e| plugin_sdk::PluginError::invalid_config(format!("runtime = \"bubblewrap\": {e}")))?;
                let mut policy = self.sandbox_policy();
                let cgroups = sandbox::cgroup::Cgroup::available(policy.limits());
                policy.cgroups = self.with_cgroups(app_mode, cgroups)?;
                crate::runtime::Isolation::Bubblewrap { policy, workspace_mb: self.sandbox_workspace_mb }
            }
            other => {
                return Err(plugin_sdk::PluginError::invalid_config(format!(
                    "runtime `{other}` is unknown: use \"bubblewrap\" or \"local\" (or leave it out for a chat without tools)"
                )))
            }
        };
        let root = match self.workspace_root.as_deref().filter(|r| !r.is_empty()) {
            Some(r) => std::path::PathBuf::from(r),
            None => std::path::Path::new(state_dir).join("workspaces"),
        };
        std::fs::create_dir_all(&root)
            .map_err(|e| plugin_sdk::PluginError::invalid_config(format!("workspace_root {}: {e}", root.display())))?;
        Ok(Some(crate::tools::ToolSetup {
            root,
            limits: crate::tools::ToolLimits {
                command_timeout: Duration::from_secs(self.command_timeout_secs.max(1)),
                max_output_chars: self.max_output_chars.max(100),
            },
            max_iterations: self.max_iterations.max(1),
            isolation,
            git_http_hosts: self.git_http_hosts.clone(),
        }))
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
            read_only: self.sandbox_read_only.iter().map(std::path::PathBuf::from).collect(),
            cgroups: true,
        }
    }

    /// Whether commands get cgroups, given whether they can be made here (`available`): the
    /// aggregate bounds need a writable hierarchy (root, or one systemd delegates). Without
    /// one, SaaS mode refuses to start; OSS mode goes on with weaker bounds, and says which:
    /// memory per process, processes per user.
    fn with_cgroups(
        &self,
        app_mode: plugin_sdk::AppMode,
        available: Result<(), String>,
    ) -> Result<bool, plugin_sdk::PluginError> {
        match available {
            Ok(()) => Ok(true),
            Err(e) if app_mode == plugin_sdk::AppMode::SAAS => Err(plugin_sdk::PluginError::invalid_config(format!(
                "runtime = \"bubblewrap\" bounds each command's memory (sandbox_memory_mb) and processes (sandbox_max_processes) with a cgroup, and {e}: run the host as root or in a delegated cgroup hierarchy (SaaS mode does not run the sandbox with weaker bounds)"
            ))),
            Err(e) => {
                tracing::warn!(
                    "runtime = \"bubblewrap\" without cgroups ({e}): memory is bounded per process (sandbox_memory_mb of address space each) and processes per user (RLIMIT_NPROC = sandbox_max_processes), not for the sandbox as a whole; run the host as root or in a delegated cgroup hierarchy for the aggregate bounds"
                );
                Ok(false)
            }
        }
    }

    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_millis(self.cleanup_interval_ms.max(10))
    }
}

#[cfg(test)]
mod tests {
    use super::ManagerConfig;

    /// Without writable cgroups (an unprivileged host without delegation), OSS mode runs the
    /// sandbox with the weaker per-process and per-user bounds; SaaS mode refuses, naming the fix.
    #[test]
    fn without_cgroups_oss_goes_on_with_weaker_bounds_and_saas_refuses() {
        let config = ManagerConfig::default();
        assert!(config.with_cgroups(plugin_sdk::AppMode::OSS, Ok(())).unwrap());
        assert!(!config.with_cgroups(plugin_sdk::AppMode::OSS, Err("no pids controller".into())).unwrap());
        let refused = config.with_cgroups(plugin_sdk::AppMode::SAAS, Err("no pids controller".into())).unwrap_err();
        assert!(refused.message.contains("delegated cgroup") && refused.message.contains("no pids controller"));
    }
}
