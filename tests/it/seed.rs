//! The enterprise document's variables with the document's meanings (`docs/configuration.md`):
//! `WEB_HOST` and `AUTH_WEB_HOST` as bare host names, `APP_MODE`, `OPENHANDS_CONFIG_CLS`, the
//! integration routes mounted by the document's rules through the shipped SaaS profile, one
//! flag parser, and the document's defaults.

use axum::{body::Body, http::Request};
use oh_e2e::{
    in_process::InProcess,
    oidc::{FakeKeycloak, CLIENT_ID, CLIENT_SECRET, REALM},
    pg::TestDb,
    workspace, Deployment,
};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_host_as_a_bare_host_name_is_this_sites_https_origin() {
    let host = InProcess::start("app_mode = \"saas\"", "", &[("WEB_HOST", "app.example.com")]);
    let preflight = |origin: &str| {
        Request::options("/api/settings")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap()
    };
    let ok = host.send(preflight("https://app.example.com")).await;
    assert_eq!(ok.headers["access-control-allow-origin"], "https://app.example.com");
    let plain = host.send(preflight("http://app.example.com")).await;
    assert!(plain.headers.get("access-control-allow-origin").is_none(), "http:// is another origin");
    // The document's SaaS default: no PostHog key unless the deployment has its own.
    assert_eq!(host.get("/api/options/config").await.json()["POSTHOG_CLIENT_KEY"], "");

    // Loopback development keeps http://.
    let local = InProcess::start("", "", &[("WEB_HOST", "localhost:3000")]);
    let r = local.send(preflight("http://localhost:3000")).await;
    assert_eq!(r.headers["access-control-allow-origin"], "http://localhost:3000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_billing_yes_is_on_for_the_web_client_as_for_the_profile() {
    // The SaaS profile loads billing on `enabled_if_env = "ENABLE_BILLING"`, through the same
    // parser the options use: the web client is told what the profile did.
    for (value, on) in [("yes", true), ("On", true), ("false", false)] {
        let host = InProcess::start("", "", &[("ENABLE_BILLING", value)]);
        let flags = host.get("/api/options/config").await.json()["FEATURE_FLAGS"].clone();
        assert_eq!(flags["ENABLE_BILLING"], on, "ENABLE_BILLING={value}");
        assert_eq!(seed_env::switched_on(Some(value)), on);
    }
}

/// `oh-host check` on the deployment's profile (the harness's `run_cli_env`): (success, what
/// it printed).
fn check(d: &Deployment, env: &[(&str, &str)]) -> (bool, String) {
    let out = d.run_cli_env(&["check"], env);
    (out.status.success(), format!("{}{}", out.stdout, out.stderr))
}

#[test]
fn a_variable_that_is_not_what_the_document_says_is_a_clear_error() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("app_mode = \"oss\"\n", "");
    for (var, value, expect) in [
        ("WEB_HOST", "app.example.com/app", "environment variable WEB_HOST: `app.example.com/app` is not a host name"),
        ("ENABLE_BILLING", "yes please", "environment variable ENABLE_BILLING: `yes please` is not a flag"),
        ("APP_MODE", "saas", "the profile says \"oss\" but APP_MODE=saas says saas"),
        ("APP_MODE", "enterprise", "environment variable APP_MODE: `enterprise` is not an app mode"),
    ] {
        let (ok, stderr) = check(&d, &[(var, value)]);
        assert!(!ok && stderr.contains(expect), "{var}={value}:\n{stderr}");
    }
    // A flag in any of the document's spellings is fine.
    let (ok, stderr) = check(&d, &[("ENABLE_BILLING", "TRUE"), ("HIDE_LLM_SETTINGS", "0")]);
    assert!(ok, "{stderr}");
}

#[test]
fn the_documents_llm_proxy_is_the_default_in_saas_mode_with_a_proxy_key() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("app_mode = \"saas\"\n", "");
    // This machine reaches no outside host: the probe names the document's proxy.
    let (ok, stderr) = check(&d, &[("LITE_LLM_API_KEY", "sk-proxy-master")]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("LITE_LLM_API_URL=https://llm-proxy.app.all-hands.dev is unreachable"), "{stderr}");
    // Without a proxy key there is no proxy: users' own endpoints.
    let (_, stderr) = check(&d, &[]);
    assert!(!stderr.contains("llm-proxy.app.all-hands.dev"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_mode_sets_the_mode_of_a_profile_that_does_not_say() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let profile = std::fs::read_to_string(d.profile_path()).unwrap();
    let without: String = profile.lines().filter(|l| !l.starts_with("app_mode")).map(|l| format!("{l}\n")).collect();
    std::fs::write(d.profile_path(), without).unwrap();
    let host = d.start_with_env(&[("APP_MODE", "SaaS")]);
    assert_eq!(host.get("/api/options/config").await.json()["APP_MODE"], "saas");
}

#[test]
fn openhands_config_cls_names_the_bundled_profiles() {
    let run = |class: &str| {
        let out = Command::new(oh_e2e::host_binary())
            .args(["plugins"])
            .env("RUST_LOG", "info")
            .env_remove("OPENHANDS_PLUGINS_TOML")
            .env("OPENHANDS_CONFIG_CLS", class)
            .current_dir(workspace())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (_, saas) = run("enterprise.server.config.SaaSServerConfig");
    assert!(
        saas.contains("OPENHANDS_CONFIG_CLS=enterprise.server.config.SaaSServerConfig: serving the profile examples/plugins.saas.toml"),
        "{saas}"
    );
    let (_, oss) = run("openhands.server.config.server_config.ServerConfig");
    assert!(oss.contains("serving the profile plugins.toml"), "{oss}");
    let (ok, unknown) = run("acme.Config");
    assert!(!ok && unknown.contains("`acme.Config` is not a config class"), "{unknown}");
}

#[tokio::test]
async fn sign_in_sends_keycloak_back_to_auth_web_host_over_https() {
    let db = TestDb::create().await;
    let kc = FakeKeycloak::start().await;
    let d = Deployment::new();
    d.install_bundled();
    // The shipped profile's way: web_host and auth_web_host straight from the variables.
    let config = format!(
        "{{ database_url = \"{}\", rate_limit_per_second = 0, rate_limit_per_minute = 0, keycloak_server_url = \"{}\", \
         keycloak_realm_name = \"{REALM}\", keycloak_client_id = \"{CLIENT_ID}\", keycloak_client_secret = \"{CLIENT_SECRET}\", \
         jwt_secret = \"seed-test-jwt-secret-0123456789\", web_host = \"${{WEB_HOST}}\", auth_web_host = \"${{AUTH_WEB_HOST:-}}\" }}",
        db.url, kc.base
    );
    d.write_profile(
        "app_mode = \"saas\"\n",
        &format!(
            "[extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\nconfig = {config}\n\
             [[extensions.routes]]\nlibrary = \"saas_auth\"\nimplementation = \"SaasAuthRoutes\"\nconfig = {config}\n"
        ),
    );
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = |host: &oh_e2e::TestHost| {
        let url = host.url("/oauth/keycloak/login?redirect_url=/conversations");
        let browser = browser.clone();
        async move { browser.get(url).send().await.unwrap() }
    };
    for (env, callback) in [
        (vec![("WEB_HOST", "app.example.com")], "https%3A%2F%2Fapp.example.com%2Foauth%2Fkeycloak%2Fcallback"),
        (
            vec![("WEB_HOST", "app.example.com"), ("AUTH_WEB_HOST", "auth.example.com")],
            "https%3A%2F%2Fauth.example.com%2Foauth%2Fkeycloak%2Fcallback",
        ),
    ] {
        let host = d.start_with_env(&env);
        let r = login(&host).await;
        assert_eq!(r.status(), 302, "{env:?}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.contains(&format!("redirect_uri={callback}&")), "{env:?}: {location}");
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(cookie.contains("; Secure"), "not on loopback: the state cookie is Secure: {cookie}");
        drop(host);
    }
}

/// The shipped SaaS profile's integrations entry (its `config` line) behind test stores.
fn integrations_profile(db: &TestDb) -> String {
    let shipped = std::fs::read_to_string(workspace().join("examples/plugins.saas.toml")).unwrap();
    let config = shipped
        .split("implementation = \"Integrations\"\n")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("the SaaS profile has an Integrations entry");
    assert!(config.starts_with("config = "), "{config}");
    let base = oh_e2e::saas_base_profile(&db.url, &[], "");
    format!("{base}[[extensions.routes]]\nlibrary = \"integrations\"\nimplementation = \"Integrations\"\n{config}\n")
}

#[tokio::test]
async fn integration_routes_are_mounted_as_the_document_says() {
    let db = TestDb::create().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("app_mode = \"saas\"\n", &integrations_profile(&db));
    let database = [("DB_HOST", "127.0.0.1"), ("DB_NAME", db.name.as_str()), ("DB_USER", "postgres")];
    let linear = [("LINEAR_WEBHOOK_SECRET", "linear-secret"), ("LINEAR_API_KEY", "lin_api_key")];
    let status = |host: &oh_e2e::TestHost, path: &str| {
        let (http, url) = (host.http.clone(), host.url(path));
        async move { http.post(url).body("{}").send().await.unwrap().status().as_u16() }
    };

    // ENABLE_LINEAR alone mounts Linear's route (unsigned: refused, but there); the others
    // are not mounted without their variables.
    let env: Vec<_> = database.iter().chain(&linear).copied().chain([("ENABLE_LINEAR", "true")]).collect();
    let host = d.start_with_env(&env);
    assert_eq!(status(&host, "/integration/linear/events").await, 401);
    for path in ["/integration/github/events", "/integration/gitlab/events", "/integration/jira/events"] {
        assert_eq!(status(&host, path).await, 404, "{path}");
    }
    drop(host);

    // LINEAR_WEBHOOKS_ENABLED=false leaves it out; ENABLE_LINEAR=false does too.
    for off in [("LINEAR_WEBHOOKS_ENABLED", "false"), ("ENABLE_LINEAR", "false")] {
        // (The later of two values of a variable wins.)
        let env: Vec<_> = database.iter().chain(&linear).copied().chain([("ENABLE_LINEAR", "true"), off]).collect();
        let host = d.start_with_env(&env);
        assert_eq!(status(&host, "/integration/linear/events").await, 404, "{off:?}");
    }

    // GITHUB_APP_CLIENT_ID mounts GitHub's, which then needs its secret: said at start-up.
    let env: Vec<_> = database.iter().copied().chain([("GITHUB_APP_CLIENT_ID", "12345")]).collect();
    let (ok, stderr) = check(&d, &env);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("`github.webhook_secret` is required (from GITHUB_APP_WEBHOOK_SECRET)"), "{stderr}");
}

/// Every variable of the enterprise document's tables, as it names them.
const DOCUMENT_VARIABLES: &[&str] = &[
    "APP_MODE",
    "AUTH_URL",
    "AUTH_WEB_HOST",
    "BITBUCKET_APP_CLIENT_ID",
    "BITBUCKET_APP_CLIENT_SECRET",
    "DB_HOST",
    "DB_MAX_OVERFLOW",
    "DB_NAME",
    "DB_PASS",
    "DB_POOL_SIZE",
    "DB_PORT",
    "DB_USER",
    "ENABLE_BILLING",
    "ENABLE_ENTERPRISE_SSO",
    "ENABLE_EXPERIMENT_MANAGER",
    "ENABLE_JIRA",
    "ENABLE_JIRA_DC",
    "ENABLE_LINEAR",
    "EXPERIMENT_CLAUDE4_VS_GPT5",
    "EXPERIMENT_LITELLM_DEFAULT_MODEL_EXPERIMENT",
    "EXPERIMENT_SYSTEM_PROMPT_EXPERIMENT",
    "FRONTEND_DIRECTORY",
    "GITHUB_APP_CLIENT_ID",
    "GITHUB_APP_CLIENT_SECRET",
    "GITHUB_APP_PRIVATE_KEY",
    "GITHUB_APP_WEBHOOK_SECRET",
    "GITHUB_WEBHOOKS_ENABLED",
    "GITLAB_APP_CLIENT_ID",
    "GITLAB_APP_CLIENT_SECRET",
    "GITLAB_WEBHOOKS_ENABLED",
    "HIDE_LLM_SETTINGS",
    "JIRA_CLIENT_ID",
    "JIRA_CLIENT_SECRET",
    "JIRA_DC_BASE_URL",
    "JIRA_DC_CLIENT_ID",
    "JIRA_DC_CLIENT_SECRET",
    "JIRA_WEBHOOKS_ENABLED",
    "KEYCLOAK_CLIENT_ID",
    "KEYCLOAK_CLIENT_SECRET",
    "KEYCLOAK_REALM_NAME",
    "KEYCLOAK_SERVER_URL",
    "LINEAR_CLIENT_ID",
    "LINEAR_CLIENT_SECRET",
    "LINEAR_WEBHOOKS_ENABLED",
    "LITELLM_DEFAULT_MODEL",
    "LITE_LLM_API_KEY",
    "LITE_LLM_API_URL",
    "LITE_LLM_TEAM_ID",
    "MAINTENANCE_START_TIME",
    "OPENHANDS_CONFIG_CLS",
    "PERMITTED_CORS_ORIGINS",
    "POSTHOG_CLIENT_KEY",
    "POSTHOG_HOST",
    "REDIS_DB",
    "REDIS_HOST",
    "REDIS_PASSWORD",
    "REDIS_PORT",
    "SLACK_CLIENT_ID",
    "SLACK_CLIENT_SECRET",
    "SLACK_SIGNING_SECRET",
    "SLACK_WEBHOOKS_ENABLED",
    "STRIPE_API_KEY",
    "STRIPE_PUBLISHABLE_KEY",
    "WEB_HOST",
];

/// Each is listed in `docs/configuration.md` and read somewhere: by the host, a plugin, a
/// shared crate or the shipped profiles (through `${VAR}`).
#[test]
fn every_variable_of_the_document_is_listed_and_read() {
    let docs = std::fs::read_to_string(workspace().join("docs/configuration.md")).unwrap();
    let mut sources = String::new();
    for dir in ["host/src", "plugins", "crates", "plugin-api/sdk/src", "examples"] {
        for entry in oh_e2e::files_under(&workspace().join(dir)) {
            if entry.extension().is_some_and(|e| e == "rs" || e == "toml") {
                sources.push_str(&std::fs::read_to_string(&entry).unwrap_or_default());
            }
        }
    }
    let unlisted: Vec<_> = DOCUMENT_VARIABLES.iter().filter(|v| !docs.contains(&format!("`{v}`"))).collect();
    let unread: Vec<_> = DOCUMENT_VARIABLES.iter().filter(|v| !sources.contains(*v)).collect();
    assert!(
        unlisted.is_empty() && unread.is_empty(),
        "not in docs/configuration.md: {unlisted:?}; read nowhere: {unread:?}"
    );
}
