//! `OpenHandsRuntime`'s `config` table in `plugins.toml`: where each conversation's action
//! execution server comes from (exactly one of `spawn`, `url`, `runtime_api_url`) and the
//! bounds of its commands.

use plugin_sdk::{AppMode, PluginError};
use serde::Deserialize;
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RuntimeConfig {
    /// A command started per conversation, with `{port}`, `{workspace}`,
    /// `{session_api_key}` and `{conversation_id}` replaced in each argument.
    pub(crate) spawn: Vec<String>,
    /// `spawn` isolates what it starts (a `docker run` of OpenHands' runtime image): SaaS
    /// mode refuses a `spawn` without it, since a plain local server is the host's own user.
    pub(crate) spawn_isolated: bool,
    /// `spawn`: the directory of the workspaces (`<it>/<conversation id>`, the `{workspace}`
    /// of the command); default `<state_dir>/openhands-workspaces`.
    pub(crate) workspace_root: Option<String>,
    /// One running action execution server (a single sandbox that every conversation uses).
    pub(crate) url: Option<String>,
    /// `url`: its `X-Session-API-Key`.
    pub(crate) session_api_key: Option<String>,
    /// OpenHands' remote runtime API: a sandbox per conversation on a cluster.
    pub(crate) runtime_api_url: Option<String>,
    /// `runtime_api_url`: its `X-API-Key`.
    pub(crate) runtime_api_key: Option<String>,
    /// `runtime_api_url`: the runtime image to start.
    pub(crate) image: Option<String>,
    /// `runtime_api_url`: the command the image runs (default: OpenHands' own, on port 60000).
    pub(crate) command: Vec<String>,
    /// `runtime_api_url`: the sandbox's size, as a multiple of the API's default.
    pub(crate) resource_factor: u32,
    /// `runtime_api_url`: `sysbox` to ask for the sysbox runtime class (else the API's own).
    pub(crate) runtime_class: Option<String>,
    /// `runtime_api_url`: what a conversation's end does to its sandbox, `pause` (resumed
    /// when the conversation is opened again) or `stop`.
    pub(crate) on_close: String,
    /// Variables for the server: `spawn`'s environment (besides `PATH`, `LANG`, `HOME`,
    /// `SESSION_API_KEY`, `TMUX_TMPDIR`), the remote sandbox's `environment`.
    pub(crate) environment: BTreeMap<String, String>,
    /// The workspace as the server sees it (its `--working-dir`; `{conversation_id}` is
    /// replaced); default the `{workspace}` directory for `spawn`, `/workspace` otherwise.
    pub(crate) working_dir: Option<String>,
    /// How long a sandbox may take to answer `/alive`, in seconds.
    pub(crate) startup_timeout_secs: u64,
    /// The longest a command may run, in seconds: past it the next step sends `C-c`.
    pub(crate) command_timeout_secs: u64,
    /// Characters of a command's output the agent gets when the request names no bound.
    pub(crate) max_output_chars: usize,
    /// Git hosts (`host[:port]`) a selected repository is cloned from over plain HTTP.
    pub(crate) git_http_hosts: Vec<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            spawn: Vec::new(),
            spawn_isolated: false,
            workspace_root: None,
            url: None,
            session_api_key: None,
            runtime_api_url: None,
            runtime_api_key: None,
            image: None,
            command: Vec::new(),
            resource_factor: 1,
            runtime_class: None,
            on_close: "pause".into(),
            environment: BTreeMap::new(),
            working_dir: None,
            startup_timeout_secs: 120,
            command_timeout_secs: 120,
            max_output_chars: 30_000,
            git_http_hosts: Vec::new(),
        }
    }
}

/// Where a conversation's server comes from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Spawn { argv: Vec<String>, root: PathBuf, environment: BTreeMap<String, String> },
    Attach { url: String, key: Option<String> },
    RuntimeApi(RuntimeApi),
}

/// OpenHands' remote runtime API, as its `RemoteRuntime` speaks to it.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeApi {
    pub(crate) url: String,
    pub(crate) key: String,
    pub(crate) image: String,
    pub(crate) command: Vec<String>,
    pub(crate) environment: BTreeMap<String, String>,
    pub(crate) resource_factor: u32,
    pub(crate) runtime_class: Option<String>,
    pub(crate) pause_on_close: bool,
}

/// What a runtime instance runs with.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) source: Source,
    pub(crate) working_dir: Option<String>,
    pub(crate) startup_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) max_output_chars: usize,
    pub(crate) git_http_hosts: Vec<String>,
}

/// The command OpenHands' runtime image runs (`get_action_execution_server_startup_command`
/// as its `RemoteRuntime` builds it, without plugins or a browser).
fn openhands_image_command(working_dir: &str) -> Vec<String> {
    [
        "/openhands/micromamba/bin/micromamba",
        "run",
        "-n",
        "openhands",
        "poetry",
        "run",
        "python",
        "-u",
        "-m",
        "openhands.runtime.action_execution_server",
        "60000",
        "--working-dir",
        working_dir,
        "--username",
        "openhands",
        "--user-id",
        "1000",
        "--no-enable-browser",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Whether `program` names an executable file, as a path or on `PATH`.
fn runnable(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let executable =
        |p: &std::path::Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return executable(std::path::Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

fn invalid(why: impl Into<String>) -> PluginError {
    PluginError::invalid_config(format!("OpenHandsRuntime: {}", why.into()))
}

fn http_url(key: &str, value: &str) -> Result<String, PluginError> {
    let value = value.trim().trim_end_matches('/');
    if !(value.starts_with("http://") || value.starts_with("https://")) || value.len() < 10 {
        return Err(invalid(format!("`{key}` must be an http(s) URL (got {value:?})")));
    }
    Ok(value.to_owned())
}

impl RuntimeConfig {
    pub(crate) fn setup(
        config_json: &str,
        app_mode: AppMode,
        state_dir: Option<PathBuf>,
    ) -> Result<Setup, PluginError> {
        let c: RuntimeConfig = plugin_sdk::parse_config(config_json)?;
        let given = [!c.spawn.is_empty(), c.url.is_some(), c.runtime_api_url.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(invalid(
                "set exactly one of `spawn` (a command per conversation), `url` (one running server) or `runtime_api_url` (OpenHands' remote runtime API)",
            ));
        }
        let remote_only = [("image", c.image.is_some()), ("command", !c.command.is_empty())];
        if c.runtime_api_url.is_none() {
            if let Some((key, _)) = remote_only.iter().find(|(_, set)| *set) {
                return Err(invalid(format!("`{key}` applies to `runtime_api_url` only (remove it)")));
            }
        }
        if c.startup_timeout_secs == 0 || c.command_timeout_secs == 0 {
            return Err(invalid("`startup_timeout_secs` and `command_timeout_secs` must be at least 1"));
        }
        let source = if !c.spawn.is_empty() {
            if app_mode == AppMode::SAAS && !c.spawn_isolated {
                return Err(invalid(
                    "a `spawn` command runs the agent's tools as the host's user unless it starts a container; SaaS mode refuses it unless `spawn_isolated = true` says the command isolates (e.g. `docker run` of OpenHands' runtime image)",
                ));
            }
            if !c.spawn.iter().any(|a| a.contains("{port}")) {
                return Err(invalid("`spawn` must pass `{port}` to the server (the port it listens on)"));
            }
            if !runnable(&c.spawn[0]) {
                return Err(invalid(format!(
                    "`spawn` starts `{}`, which is not an executable file here nor on PATH (for OpenHands' server from a virtual environment: `make openhands-env`, then its bin/python)",
                    c.spawn[0]
                )));
            }
            let root = match (&c.workspace_root, state_dir) {
                (Some(root), _) => PathBuf::from(root),
                (None, Some(state)) => state.join("openhands-workspaces"),
                (None, None) => {
                    return Err(invalid("`workspace_root` is needed when the server has no state_dir"));
                }
            };
            Source::Spawn { argv: c.spawn.clone(), root, environment: c.environment.clone() }
        } else if let Some(url) = &c.url {
            Source::Attach { url: http_url("url", url)?, key: c.session_api_key.clone().filter(|k| !k.is_empty()) }
        } else {
            let url = http_url("runtime_api_url", c.runtime_api_url.as_deref().unwrap_or_default())?;
            let key =
                c.runtime_api_key.clone().filter(|k| !k.is_empty()).ok_or_else(|| {
                    invalid("`runtime_api_key` is required with `runtime_api_url` (the API's X-API-Key)")
                })?;
            let image =
                c.image.clone().filter(|i| !i.is_empty()).ok_or_else(|| {
                    invalid("`image` is required with `runtime_api_url` (the runtime image to start)")
                })?;
            let pause_on_close = match c.on_close.as_str() {
                "pause" => true,
                "stop" => false,
                other => return Err(invalid(format!("`on_close` is `pause` or `stop` (got {other:?})"))),
            };
            let working_dir = c.working_dir.clone().unwrap_or_else(|| "/workspace".into());
            Source::RuntimeApi(RuntimeApi {
                url,
                key,
                image,
                command: if c.command.is_empty() { openhands_image_command(&working_dir) } else { c.command.clone() },
                environment: c.environment.clone(),
                resource_factor: c.resource_factor.max(1),
                runtime_class: c.runtime_class.clone().filter(|r| !r.is_empty()),
                pause_on_close,
            })
        };
        let working_dir = match (&source, &c.working_dir) {
            (_, Some(dir)) if !dir.starts_with('/') => {
                return Err(invalid(format!("`working_dir` must be an absolute path (got {dir:?})")));
            }
            (_, Some(dir)) => Some(dir.trim_end_matches('/').to_owned()).filter(|d| !d.is_empty()),
            (Source::Spawn { .. }, None) => None,
            (_, None) => Some("/workspace".to_owned()),
        };
        Ok(Setup {
            source,
            working_dir,
            startup_timeout: Duration::from_secs(c.startup_timeout_secs),
            command_timeout: Duration::from_secs(c.command_timeout_secs),
            max_output_chars: c.max_output_chars.max(1),
            git_http_hosts: c.git_http_hosts.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(json: &str, mode: AppMode) -> Result<Setup, String> {
        RuntimeConfig::setup(json, mode, Some(PathBuf::from("/var/lib/oh"))).map_err(|e| e.message.to_string())
    }

    #[test]
    fn exactly_one_source_and_saas_refuses_a_local_spawn() {
        assert!(setup("{}", AppMode::OSS).unwrap_err().contains("exactly one"));
        let both = r#"{"spawn": ["sh", "{port}"], "url": "http://sandbox:3000"}"#;
        assert!(setup(both, AppMode::OSS).unwrap_err().contains("exactly one"));
        let local = r#"{"spawn": ["sh", "-c", "exec python -m openhands.runtime.action_execution_server {port}"]}"#;
        let s = setup(local, AppMode::OSS).unwrap();
        assert!(
            matches!(&s.source, Source::Spawn { root, .. } if root == &PathBuf::from("/var/lib/oh/openhands-workspaces"))
        );
        assert!(setup(local, AppMode::SAAS).unwrap_err().contains("spawn_isolated"));
        let docker = r#"{"spawn": ["/bin/sh", "-c", "exec docker run -p {port}:{port}"], "spawn_isolated": true}"#;
        assert!(setup(docker, AppMode::SAAS).is_ok());
        assert!(setup(r#"{"spawn": ["sh"]}"#, AppMode::OSS).unwrap_err().contains("{port}"));
        let missing = r#"{"spawn": ["/nonexistent/bin/python", "{port}"]}"#;
        assert!(setup(missing, AppMode::OSS).unwrap_err().contains("make openhands-env"));
    }

    #[test]
    fn the_remote_api_needs_its_key_and_image_and_keys_of_other_modes_are_refused() {
        let no_key = r#"{"runtime_api_url": "https://runtime.example.com"}"#;
        assert!(setup(no_key, AppMode::SAAS).unwrap_err().contains("runtime_api_key"));
        let full = r#"{"runtime_api_url": "https://runtime.example.com/", "runtime_api_key": "k", "image": "ghcr.io/all-hands-ai/runtime:0.62"}"#;
        let s = setup(full, AppMode::SAAS).unwrap();
        let Source::RuntimeApi(api) = &s.source else { panic!("not the remote API") };
        assert_eq!(api.url, "https://runtime.example.com");
        assert!(api.pause_on_close);
        assert!(api.command.contains(&"openhands.runtime.action_execution_server".to_owned()));
        assert_eq!(s.working_dir.as_deref(), Some("/workspace"));
        let image_on_url = r#"{"url": "http://127.0.0.1:3000", "image": "x"}"#;
        assert!(setup(image_on_url, AppMode::OSS).unwrap_err().contains("`image`"));
        let bad = r#"{"url": "sandbox:3000"}"#;
        assert!(setup(bad, AppMode::OSS).unwrap_err().contains("http(s) URL"));
        let typo = r#"{"url": "http://sandbox:3000", "sesion_api_key": "k"}"#;
        assert!(setup(typo, AppMode::OSS).unwrap_err().contains("sesion_api_key"));
    }
}
