//! Configuration of `BillingRoutes` and `BillingUsage` (their `config` tables).

use plugin_sdk::PluginError;
use serde::Deserialize;

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// PostgreSQL for the ledger; default from DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASS.
    #[serde(default)]
    pub(crate) database_url: Option<String>,
    /// Pool size; default DB_POOL_SIZE + DB_MAX_OVERFLOW.
    #[serde(default)]
    pub(crate) max_connections: Option<u32>,
    /// How long a call waits for a database connection before 503 (ms).
    #[serde(default = "pg_common::default_acquire_timeout_ms")]
    pub(crate) acquire_timeout_ms: u64,
    /// The Stripe secret key (STRIPE_API_KEY), `sk_live_…` or `sk_test_…`.
    #[serde(default)]
    pub(crate) stripe_api_key: Option<String>,
    /// The webhook endpoint's signing secret (STRIPE_WEBHOOK_SECRET), `whsec_…`.
    #[serde(default)]
    pub(crate) stripe_webhook_secret: Option<String>,
    /// Stripe's API (STRIPE_API_URL); tests point it at a fake.
    #[serde(default = "default_api_url")]
    pub(crate) stripe_api_url: String,
    /// This server's public origin (WEB_HOST), where Stripe sends buyers back; default: the
    /// origin the request came to.
    #[serde(default)]
    pub(crate) web_host: Option<String>,
    /// Smallest and largest purchase in US dollars (the web client asks for at least 10).
    #[serde(default = "default_min")]
    pub(crate) min_purchase: u32,
    #[serde(default = "default_max")]
    pub(crate) max_purchase: u32,
    /// The recurring Stripe Price a subscription buys (STRIPE_SUBSCRIPTION_PRICE_ID,
    /// `price_…`); without one, no subscriptions are sold.
    #[serde(default)]
    pub(crate) subscription_price_id: Option<String>,
    /// Credits (US dollars, decimal text) a new user gets once, when billing first sees them;
    /// empty or "0": none.
    #[serde(default)]
    pub(crate) new_user_credits: Option<String>,
}

fn default_api_url() -> String {
    "https://api.stripe.com".to_owned()
}
fn default_min() -> u32 {
    10
}
fn default_max() -> u32 {
    25_000
}

fn set(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned)
}

impl Config {
    /// The database pool this config names.
    pub(crate) fn pool(&self) -> pg_common::Pool<'_> {
        pg_common::Pool {
            database_url: self.database_url.as_deref(),
            max_connections: self.max_connections,
            acquire_timeout_ms: self.acquire_timeout_ms,
        }
    }

    pub(crate) fn parse(json: &str) -> Result<Config, PluginError> {
        let c: Config = plugin_sdk::parse_config(json)?;
        if c.min_purchase == 0 || c.min_purchase > c.max_purchase {
            return Err(PluginError::invalid_config("min_purchase must be at least 1 and not above max_purchase"));
        }
        if !(c.stripe_api_url.starts_with("https://") || c.stripe_api_url.starts_with("http://")) {
            return Err(PluginError::invalid_config(format!(
                "stripe_api_url must be an http(s) URL (STRIPE_API_URL), not `{}`",
                c.stripe_api_url
            )));
        }
        if let Some(credits) = set(&c.new_user_credits) {
            let valid = credits.parse::<f64>().is_ok_and(|v| (0.0..=1_000_000.0).contains(&v))
                && credits.chars().all(|ch| ch.is_ascii_digit() || ch == '.');
            if !valid {
                return Err(PluginError::invalid_config(format!(
                    "new_user_credits (NEW_USER_CREDITS) must be an amount of US dollars such as \"10\" or \"2.50\", not `{credits}`"
                )));
            }
        }
        if let Some(Err(e)) = set(&c.web_host).map(|h| seed_env::public_url(&h)) {
            return Err(PluginError::invalid_config(format!("web_host (WEB_HOST): {e}")));
        }
        Ok(c)
    }

    /// The Stripe key and webhook secret the routes need; both required.
    pub(crate) fn stripe(&self) -> Result<(String, String), PluginError> {
        let key = set(&self.stripe_api_key).ok_or_else(|| {
            PluginError::invalid_config("stripe_api_key is required (STRIPE_API_KEY: the account's secret key)")
        })?;
        let secret = set(&self.stripe_webhook_secret).ok_or_else(|| {
            PluginError::invalid_config(
                "stripe_webhook_secret is required (STRIPE_WEBHOOK_SECRET: the webhook endpoint's signing secret, whsec_…)",
            )
        })?;
        Ok((key, secret))
    }

    pub(crate) fn subscription_price_id(&self) -> Option<String> {
        set(&self.subscription_price_id)
    }

    /// `new_user_credits` when it grants anything.
    pub(crate) fn new_user_credits(&self) -> Option<String> {
        set(&self.new_user_credits).filter(|c| c.parse::<f64>().is_ok_and(|v| v > 0.0))
    }

    pub(crate) fn web_host(&self) -> Option<String> {
        set(&self.web_host).and_then(|h| seed_env::public_url(&h).ok())
    }

    pub(crate) fn ledger(&self) -> Result<crate::ledger::Ledger, PluginError> {
        let db = self.pool().open(true)?;
        Ok(crate::ledger::Ledger::new(db))
    }
}
