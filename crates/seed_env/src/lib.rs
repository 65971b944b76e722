//! The deployment's environment as OpenHands' enterprise integration document defines it,
//! read the same way by the host and every plugin:
//! - [`flag`]: one boolean parser for every `ENABLE_*`/`*_ENABLED` flag;
//! - [`public_url`]: `WEB_HOST`/`AUTH_WEB_HOST`, a bare host name (`app.example.com`) or a
//!   full URL, as the URL every callback, cookie, CORS rule and link needs;
//! - [`app_mode`]: `APP_MODE` (`OSS`/`SAAS`, any case);
//! - [`config_cls`]: `OPENHANDS_CONFIG_CLS`, OpenHands' config class names or a profile path.

/// The `WEB_HOST` of the document when it is unset.
pub const DEFAULT_WEB_HOST: &str = "app.all-hands.dev";
/// The LiteLLM proxy of the document when `LITE_LLM_API_URL` is unset (SaaS mode).
pub const DEFAULT_LITE_LLM_API_URL: &str = "https://llm-proxy.app.all-hands.dev";

/// `LITE_LLM_API_URL` as the document gives it: the configured URL, else in SaaS mode the
/// document's proxy when a proxy key (`LITE_LLM_API_KEY`) is set. No key, no proxy: users'
/// own endpoints then.
pub fn lite_llm_api_url(url: Option<&str>, key: Option<&str>, saas: bool) -> Option<String> {
    let set = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    set(url)
        .or_else(|| (saas && set(key).is_some()).then(|| DEFAULT_LITE_LLM_API_URL.to_owned()))
        .map(|u| u.trim_end_matches('/').to_owned())
}

/// A flag's value: `true`/`1`/`yes`/`on` or `false`/`0`/`no`/`off` (any case, trimmed); an
/// empty value is `false` (unset). Anything else is an error that says what is accepted.
pub fn flag(value: &str) -> Result<bool, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(false);
    }
    if ["true", "1", "yes", "on"].iter().any(|y| v.eq_ignore_ascii_case(y)) {
        Ok(true)
    } else if ["false", "0", "no", "off"].iter().any(|n| v.eq_ignore_ascii_case(n)) {
        Ok(false)
    } else {
        Err(format!("`{v}` is not a flag: use true or false (1/0, yes/no, on/off)"))
    }
}

/// Whether a value that switches something on is "set": not empty and not a "no" (`0`,
/// `false`, `no`, `off`). A client id (`Iv1.abc`) counts as set, `ENABLE_JIRA=false` does not.
pub fn switched_on(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.trim().is_empty() && flag(v) != Ok(false))
}

/// Whether `host` (no scheme, no port) is this machine: development on loopback stays on
/// `http://`.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.ends_with(".localhost") || host == "::1" || host.starts_with("127.")
}

/// The public URL of `WEB_HOST` / `AUTH_WEB_HOST`: a bare host name (`app.example.com`, with
/// an optional `:port`) gets `https://` (`http://` for loopback); a full `http(s)://` URL is
/// kept. No trailing slash, no path.
pub fn public_url(value: &str) -> Result<String, String> {
    let v = value.trim().trim_end_matches('/');
    let (scheme, rest) = match v.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http") => {
            (Some(scheme.to_ascii_lowercase()), rest)
        }
        Some((scheme, _)) => return Err(format!("`{v}`: only http:// and https:// are served, not {scheme}://")),
        None => (None, v),
    };
    let well_formed = !rest.is_empty()
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
        && !rest.starts_with([':', '.', '-']);
    if !well_formed {
        return Err(format!(
            "`{v}` is not a host name: write it as the document does (app.example.com), optionally with a port or a scheme (https://app.example.com:8443), without a path"
        ));
    }
    let host = if rest.starts_with('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        rest.rsplit_once(':').map_or(rest, |(h, _)| h)
    };
    let scheme = scheme.unwrap_or_else(|| if is_loopback(host) { "http" } else { "https" }.to_owned());
    Ok(format!("{scheme}://{}", rest.to_ascii_lowercase()))
}

/// The application mode `APP_MODE` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppMode {
    Oss,
    Saas,
}

impl AppMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AppMode::Oss => "oss",
            AppMode::Saas => "saas",
        }
    }
}

/// `APP_MODE`: `OSS` or `SAAS`, any case.
pub fn app_mode(value: &str) -> Result<AppMode, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "oss" => Ok(AppMode::Oss),
        "saas" => Ok(AppMode::Saas),
        other => Err(format!("`{other}` is not an app mode: use OSS or SAAS")),
    }
}

/// What `OPENHANDS_CONFIG_CLS` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigCls {
    /// A profile file (the value ends in `.toml` or names a path).
    Profile(String),
    /// OpenHands' OSS `ServerConfig`: the bundled default profile.
    Default,
    /// The enterprise `SaaSServerConfig`: the bundled SaaS profile.
    Saas,
}

/// `OPENHANDS_CONFIG_CLS`: a profile path, or one of OpenHands' config classes
/// (`openhands.server.config.server_config.ServerConfig`,
/// `enterprise.server.config.SaaSServerConfig`, with or without their modules).
pub fn config_cls(value: &str) -> Result<ConfigCls, String> {
    let v = value.trim();
    if v.ends_with(".toml") || v.contains('/') {
        return Ok(ConfigCls::Profile(v.to_owned()));
    }
    match v.rsplit('.').next().unwrap_or(v) {
        "SaaSServerConfig" => Ok(ConfigCls::Saas),
        "ServerConfig" => Ok(ConfigCls::Default),
        _ => Err(format!(
            "`{v}` is not a config class this server knows: use openhands.server.config.server_config.ServerConfig (the default profile), enterprise.server.config.SaaSServerConfig (the SaaS profile), or a profile's path"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flag_parser_for_every_flag() {
        for yes in ["true", "TRUE", "1", "yes", " on "] {
            assert_eq!(flag(yes), Ok(true), "{yes}");
        }
        for no in ["", "false", "False", "0", "no", "OFF"] {
            assert_eq!(flag(no), Ok(false), "{no}");
        }
        assert!(flag("maybe").unwrap_err().contains("true or false"));
        assert!(switched_on(Some("Iv1.abc")) && switched_on(Some("true")));
        assert!(!switched_on(Some("false")) && !switched_on(Some(" ")) && !switched_on(None));
    }

    #[test]
    fn web_host_is_a_bare_host_or_a_url() {
        assert_eq!(public_url("app.example.com").unwrap(), "https://app.example.com");
        assert_eq!(public_url("App.Example.com/").unwrap(), "https://app.example.com");
        assert_eq!(public_url("app.example.com:8443").unwrap(), "https://app.example.com:8443");
        assert_eq!(public_url("https://app.example.com").unwrap(), "https://app.example.com");
        assert_eq!(public_url("http://intranet.corp").unwrap(), "http://intranet.corp");
        assert_eq!(public_url("localhost:3000").unwrap(), "http://localhost:3000");
        assert_eq!(public_url("127.0.0.1:3000").unwrap(), "http://127.0.0.1:3000");
        assert_eq!(public_url("[::1]:3000").unwrap(), "http://[::1]:3000");
        assert!(public_url("ftp://x").unwrap_err().contains("only http"));
        assert!(public_url("app.example.com/path").unwrap_err().contains("without a path"));
        assert!(public_url("").is_err());
    }

    #[test]
    fn the_llm_proxy_defaults_to_the_documents_in_saas_mode_with_a_key() {
        assert_eq!(lite_llm_api_url(None, Some("sk-master"), true).as_deref(), Some(DEFAULT_LITE_LLM_API_URL));
        assert_eq!(lite_llm_api_url(Some("http://proxy/"), Some("k"), true).as_deref(), Some("http://proxy"));
        assert_eq!(lite_llm_api_url(None, None, true), None);
        assert_eq!(lite_llm_api_url(None, Some("k"), false), None);
    }

    #[test]
    fn app_mode_and_config_classes() {
        assert_eq!(app_mode("SAAS"), Ok(AppMode::Saas));
        assert_eq!(app_mode("oss"), Ok(AppMode::Oss));
        assert!(app_mode("enterprise").is_err());
        assert_eq!(config_cls("enterprise.server.config.SaaSServerConfig"), Ok(ConfigCls::Saas));
        assert_eq!(config_cls("openhands.server.config.server_config.ServerConfig"), Ok(ConfigCls::Default));
        assert_eq!(config_cls("/etc/oh/p.toml"), Ok(ConfigCls::Profile("/etc/oh/p.toml".into())));
        assert!(config_cls("my.Config").unwrap_err().contains("SaaSServerConfig"));
    }
}
