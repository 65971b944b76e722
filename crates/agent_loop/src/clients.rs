//! The HTTP clients a manager's agent loops reach LLMs with: the deployment's endpoint, and
//! users' own endpoints (in SaaS mode public addresses only, checked at start and at each
//! connection).

use crate::llm::LlmConfig;
use plugin_sdk::PluginError;
use std::{sync::OnceLock, time::Duration};

/// The clients are built on first use: building one reads and parses the system's
/// certificates (a few milliseconds each), which a host that starts should not wait for.
pub struct Clients {
    deployment: OnceLock<Result<reqwest::Client, String>>,
    user: OnceLock<Result<reqwest::Client, String>>,
    destinations: outbound::Policy,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().connect_timeout(Duration::from_secs(10))
}

impl Clients {
    /// `public_only`: SaaS mode. `allowed_hosts`: the manager's `llm_private_hosts_allowed`.
    pub fn new(public_only: bool, allowed_hosts: Vec<String>) -> Result<Clients, PluginError> {
        let destinations = outbound::Policy {
            public_only,
            allowed_hosts,
            subject: "the LLM base URL",
            allow_setting: "llm_private_hosts_allowed",
        };
        Ok(Clients { deployment: OnceLock::new(), user: OnceLock::new(), destinations })
    }

    /// The client for this endpoint: a user's own (`user_endpoint`) or the deployment's;
    /// the error when it cannot be built (no usable system certificates).
    pub fn for_endpoint(&self, user_endpoint: bool) -> Result<&reqwest::Client, String> {
        let failed = |e: reqwest::Error| format!("cannot build the HTTP client: {e}");
        let client = if user_endpoint {
            self.user.get_or_init(|| outbound::client(&self.destinations, builder()).map_err(failed))
        } else {
            self.deployment.get_or_init(|| builder().build().map_err(failed))
        };
        client.as_ref().map_err(String::clone)
    }

    /// A deployment variable as the agent reads it: `LITE_LLM_API_URL` with the enterprise
    /// document's default (SaaS mode, `LITE_LLM_API_KEY` set), the others as they are.
    pub fn env(&self, name: &str) -> Option<String> {
        if name == "LITE_LLM_API_URL" {
            let (url, key) = (plugin_sdk::env(name), plugin_sdk::env("LITE_LLM_API_KEY"));
            return seed_env::lite_llm_api_url(url.as_deref(), key.as_deref(), self.destinations.public_only);
        }
        plugin_sdk::env(name)
    }

    /// `oh-host check` (the process only checks): the deployment's LLM endpoint
    /// (`LITE_LLM_API_URL`), when one is set, must answer HTTP at all (any status: the probe
    /// sends no key). `None` without one. Not part of `/ready`: a serving host stays ready
    /// while the proxy is down, and says so per request.
    pub async fn probe_deployment(&self) -> Result<Option<String>, PluginError> {
        let Some(url) = self.env("LITE_LLM_API_URL") else { return Ok(None) };
        if !plugin_sdk::read_only() {
            return Ok(None);
        }
        let client = self.for_endpoint(false).map_err(PluginError::internal)?;
        let answer = client.get(&url).timeout(Duration::from_secs(10)).send().await;
        match answer {
            Ok(r) => Ok(Some(format!("LLM proxy {url} answered {}", r.status().as_u16()))),
            Err(e) => {
                Err(PluginError::unavailable(format!("the LLM proxy LITE_LLM_API_URL={url} is unreachable: {e}")))
            }
        }
    }

    /// Refuses a user's endpoint the policy does not allow (before a loop starts).
    pub fn check(&self, llm: &LlmConfig) -> Result<(), PluginError> {
        if llm.user_endpoint {
            self.destinations.check_url(&llm.base_url).map_err(PluginError::invalid_argument)?;
        }
        Ok(())
    }
}
