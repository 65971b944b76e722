//! The HTTP clients a manager's agent loops reach LLMs with: the deployment's endpoint, and
//! users' own endpoints (in SaaS mode public addresses only, checked at start and at each
//! connection).

use crate::llm::LlmConfig;
use plugin_sdk::PluginError;
use std::time::Duration;

pub struct Clients {
    deployment: reqwest::Client,
    user: reqwest::Client,
    destinations: outbound::Policy,
}

impl Clients {
    /// `public_only`: SaaS mode. `allowed_hosts`: the manager's `llm_private_hosts_allowed`.
    pub fn new(public_only: bool, allowed_hosts: Vec<String>) -> Result<Clients, PluginError> {
        let builder = || reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        let failed = |e: reqwest::Error| PluginError::internal(format!("cannot build the HTTP client: {e}"));
        let destinations = outbound::Policy {
            public_only,
            allowed_hosts,
            subject: "the LLM base URL",
            allow_setting: "llm_private_hosts_allowed",
        };
        Ok(Clients {
            deployment: builder().build().map_err(failed)?,
            user: outbound::client(&destinations, builder()).map_err(failed)?,
            destinations,
        })
    }

    /// The client for this endpoint: a user's own (`user_endpoint`) or the deployment's.
    pub fn for_endpoint(&self, user_endpoint: bool) -> &reqwest::Client {
        if user_endpoint {
            &self.user
        } else {
            &self.deployment
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
