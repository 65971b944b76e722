//! The OpenHands 0.62 web client, unchanged, in headless Chromium against the real host
//! serving its build (`FRONTEND_DIRECTORY`) with the fake LLM: what a person sees in a
//! browser. Each flow asserts that the page got no unexpected error answer from the server.
//! Skipped when the build is absent; `make test-browser` requires it.

use oh_e2e::{
    browser::{frontend_dir, Browser},
    llm::{FakeLlm, Reply},
    Deployment, TestHost,
};
use serde_json::json;

/// Error answers the web client asks for by design: settings before the first save, and the
/// Changes tab of a conversation without a git workspace.
const EXPECTED: &[(u16, &str, &str)] =
    &[(404, "GET", "/api/settings"), (404, "GET", "/api/conversations/{id}/git/changes")];

fn start_host(frontend: &std::path::Path) -> (Deployment, TestHost) {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile(
        "",
        "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n\
         config = { llm_retry_initial_ms = 20, llm_max_retries = 0 }\n",
    );
    let host = d.start_with_env(&[("FRONTEND_DIRECTORY", frontend.to_str().unwrap())]);
    (d, host)
}

/// The analytics consent question the client asks once, shortly after a page loads while
/// the user's answer is unknown.
async fn answer_consent(browser: &Browser) {
    for _ in 0..25 {
        if browser.has("[data-testid=confirm-preferences]").await {
            browser.click("[data-testid=confirm-preferences]").await;
            browser.wait_gone("[data-testid=user-capture-consent-form]").await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Picks `option` (a `data-testid`) in one of the client's comboboxes.
async fn pick(browser: &Browser, input: &str, typed: &str, option: &str) {
    browser.type_text(input, typed).await;
    browser.click(&format!("[data-testid={option}]")).await;
}

/// Starts a conversation from the home page with `message`; its id.
async fn new_conversation(browser: &Browser, base: &str, message: &str) -> String {
    browser.goto(&format!("{base}/")).await;
    // The button is there before the page has loaded what it needs, disabled until then: a
    // click too early does nothing (seen on a loaded machine).
    browser.wait("[data-testid=launch-new-conversation-button]:not([disabled])").await;
    browser.click("[data-testid=launch-new-conversation-button]").await;
    let url = browser
        .wait_until(
            "a conversation page",
            "return location.pathname.startsWith('/conversations/') && location.pathname",
        )
        .await;
    browser.type_text("[data-testid=chat-input]", message).await;
    browser.click("[data-testid=interactive-chat-box] [data-testid=submit-button]").await;
    url.as_str().unwrap().trim_start_matches("/conversations/").to_owned()
}

#[tokio::test]
async fn oss_first_run_configure_converse_list_reopen_rename_delete() {
    let Some(frontend) = frontend_dir() else { return };
    let llm = FakeLlm::start().await;
    let (_d, host) = start_host(&frontend);
    let browser = Browser::start("oss_first_run").await;
    let base = host.base.clone();

    // First run: the AI provider dialog, its lists filled from /api/options/models.
    browser.goto(&format!("{base}/")).await;
    browser.wait("[data-testid=ai-config-modal]").await;
    pick(&browser, "[data-testid=llm-provider-input]", "OpenAI", "provider-item-openai").await;
    pick(&browser, "[data-testid=llm-model-input]", "gpt-4o", "model-item-gpt-4o").await;
    browser.type_text("[data-testid=llm-api-key-input]", "sk-test-key").await;
    browser.click("[data-testid=save-settings-button]").await;
    browser.wait_gone("[data-testid=ai-config-modal]").await;
    let saved = host.get("/api/settings").await.json();
    assert_eq!((saved["llm_model"].as_str(), saved["llm_api_key_set"].as_bool()), (Some("openai/gpt-4o"), Some(true)));

    // Advanced settings: the fake LLM's address.
    browser.goto(&format!("{base}/settings")).await;
    browser.wait("[data-testid=llm-settings-screen]").await;
    answer_consent(&browser).await;
    browser.click("label:has([data-testid=advanced-settings-switch])").await;
    browser.clear("[data-testid=base-url-input]").await;
    browser.type_text("[data-testid=base-url-input]", &llm.base_url).await;
    browser.click("[data-testid=llm-settings-screen] [data-testid=submit-button]").await;
    browser
        .wait_until("settings saved", "return !document.querySelector('[data-testid=submit-button]:not([disabled])')")
        .await;
    let saved = host.get("/api/settings").await.json();
    assert_eq!(saved["llm_base_url"], llm.base_url.as_str(), "{saved}");

    // A conversation: the reply shows.
    let id = new_conversation(&browser, &base, "hello there").await;
    browser.wait_text("Echo: hello there.").await;
    assert_eq!(llm.requests().last().unwrap().1["model"], "gpt-4o");

    // The list shows it, under the title the first message gave it.
    browser.goto(&format!("{base}/")).await;
    browser.click("[data-testid=toggle-conversation-panel]").await;
    browser.wait("[data-testid=conversation-card]").await;
    browser.wait_text("hello there").await;

    // Rename from the card's menu.
    browser.click("[data-testid=conversation-card] [data-testid=ellipsis-button]").await;
    browser.click("[data-testid=edit-button]").await;
    // Select all (Control+A), type over it, Enter. (WebDriver's clear would blur the
    // input, which saves and leaves edit mode.)
    browser.type_text("input[data-testid=conversation-card-title]", "\u{e009}a\u{e000}Renamed chat\u{e007}").await;
    browser.wait_text("Renamed chat").await;
    let stored = host.get(&format!("/api/conversations/{id}")).await.json();
    assert_eq!(stored["title"], "Renamed chat");

    // Reopen: the history is replayed.
    browser.click("[data-testid=conversation-card]").await;
    browser.wait_until("the conversation page", &format!("return location.pathname == '/conversations/{id}'")).await;
    browser.wait_text("Echo: hello there.").await;

    // Delete, confirmed.
    browser.goto(&format!("{base}/")).await;
    browser.click("[data-testid=toggle-conversation-panel]").await;
    browser.click("[data-testid=conversation-card] [data-testid=ellipsis-button]").await;
    browser.click("[data-testid=delete-button]").await;
    browser.click_button("Confirm Delete").await;
    browser.wait_gone("[data-testid=conversation-card]").await;
    assert_eq!(host.get(&format!("/api/conversations/{id}")).await.json(), serde_json::Value::Null);

    let seen = browser.assert_no_unexpected_errors(&base, EXPECTED).await;
    let answered = |method: &str, path: &str, status: u16| {
        seen.iter().any(|s| s.method == method && s.url == format!("{base}{path}") && s.status == status)
    };
    assert!(answered("GET", "/api/settings", 404) && answered("POST", "/api/settings", 200), "{seen:#?}");
    assert!(
        answered("GET", "/api/options/models", 200) && answered("DELETE", &format!("/api/conversations/{id}"), 200)
    );
    assert!(!host.log().contains(" ERROR "), "{}", host.log());
}

#[tokio::test]
async fn an_llm_that_refuses_the_key_shows_why() {
    let Some(frontend) = frontend_dir() else { return };
    let llm = FakeLlm::start().await;
    let (_d, host) = start_host(&frontend);
    let settings = json!({ "llm_model": "openai/gpt-4o", "llm_base_url": llm.base_url, "llm_api_key": "sk-revoked", "user_consents_to_analytics": false });
    assert_eq!(host.post_json("/api/settings", &settings).await.status, 200);
    llm.push([Reply::Status(401)]);
    let browser = Browser::start("llm_refuses_the_key").await;
    let base = host.base.clone();
    new_conversation(&browser, &base, "are you there?").await;
    browser.wait_text("Error authenticating with the LLM provider. Please check your API key").await;
    assert!(!browser.text().await.contains("Unknown error"));
    browser.assert_no_unexpected_errors(&base, EXPECTED).await;
}

/// The enterprise profile (`examples/plugins.saas.toml`) as shipped, its plugins directory
/// pointed at the deployment's.
fn saas_profile(d: &Deployment) {
    let shipped = std::fs::read_to_string(oh_e2e::workspace().join("examples/plugins.saas.toml")).unwrap();
    let profile = shipped.replace(
        "plugins_dir = \"${OH_PLUGINS_DIR:-../target/plugins}\"",
        &format!("plugins_dir = \"{}\"", d.plugins_dir().display()),
    );
    assert_ne!(profile, shipped, "the example profile's plugins_dir line moved");
    std::fs::write(d.profile_path(), profile).unwrap();
}

/// Signs in through the web client's own sign-in (Keycloak over HTTPS), accepting the terms.
async fn sign_in(browser: &Browser, web: &str) {
    browser.goto(&format!("{web}/")).await;
    browser.click_button("Login with Enterprise SSO").await;
    browser.wait_until("the terms page", "return location.pathname == '/accept-tos'").await;
    browser.click("input[type=checkbox]").await;
    browser.click_button("Continue").await;
    browser.wait_until("the home page", "return location.pathname == '/'").await;
}

/// A SaaS deployment as the example profile makes it (PostgreSQL, Keycloak over HTTPS, the
/// deployment's LLM proxy) serving the web client, and a browser for it.
struct SaasSite {
    _db: oh_e2e::pg::TestDb,
    kc: oh_e2e::oidc::FakeKeycloak,
    _certificates: tempfile::TempDir,
    llm: FakeLlm,
    _d: Deployment,
    host: TestHost,
    browser: Browser,
    web: String,
    run: u32,
}

impl SaasSite {
    async fn start(frontend: &std::path::Path, name: &str, extra_env: &[(&str, &str)]) -> SaasSite {
        let db = oh_e2e::pg::TestDb::create().await;
        let kc = oh_e2e::oidc::FakeKeycloak::start().await;
        let certificates = tempfile::tempdir().unwrap();
        let auth_url = kc.serve_https(certificates.path()).await;
        let llm = FakeLlm::start().await;
        let d = Deployment::new();
        d.install_bundled();
        saas_profile(&d);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // The client builds its callback as http:// only for `localhost`.
        let web = format!("http://localhost:{port}");
        let bind = format!("127.0.0.1:{port}");
        let state_dir = d.state_dir();
        let mut env = vec![
            ("OH_BIND", bind.as_str()),
            // Two sites may run at once: the operators' port is any free one.
            ("OH_ADMIN_BIND", "127.0.0.1:0"),
            ("OH_STATE_DIR", state_dir.to_str().unwrap()),
            ("FRONTEND_DIRECTORY", frontend.to_str().unwrap()),
            ("JWT_SECRET", "browser-test-jwt-secret-0123456789"),
            ("KEYCLOAK_SERVER_URL", kc.base.as_str()),
            ("KEYCLOAK_REALM_NAME", oh_e2e::oidc::REALM),
            ("KEYCLOAK_CLIENT_ID", oh_e2e::oidc::CLIENT_ID),
            ("KEYCLOAK_CLIENT_SECRET", oh_e2e::oidc::CLIENT_SECRET),
            ("WEB_HOST", web.as_str()),
            ("AUTH_URL", auth_url.as_str()),
            ("ENABLE_ENTERPRISE_SSO", "1"),
            ("DB_HOST", "127.0.0.1"),
            ("DB_NAME", db.name.as_str()),
            // The deployment's LLM proxy (a user's own base URL may not be a local address).
            ("LITE_LLM_API_URL", llm.base_url.as_str()),
            ("LITE_LLM_API_KEY", "sk-proxy-key"),
        ];
        env.extend_from_slice(extra_env);
        let host = d.start_with_env(&env);
        // Users arrive once the load balancer sees it ready (its database reachable and
        // migrated): under a loaded machine the first migration can outlast a request's wait.
        host.wait_ready().await;
        let browser = Browser::start(name).await;
        SaasSite { _db: db, kc, _certificates: certificates, llm, _d: d, host, browser, web, run: std::process::id() }
    }

    /// A user of this run (the profile's rate limits count per user in the shared Redis).
    fn user(&self, name: &str) -> oh_e2e::oidc::User {
        oh_e2e::oidc::User {
            sub: format!("kc-{name}-{}", self.run),
            email: format!("{name}@example.com"),
            email_verified: true,
        }
    }
}

#[tokio::test]
async fn saas_sign_in_terms_api_keys_two_users_apart_and_sign_out() {
    let Some(frontend) = frontend_dir() else { return };
    let site = SaasSite::start(&frontend, "saas_sign_in", &[]).await;
    let (kc, llm, host, browser, web) = (&site.kc, &site.llm, &site.host, &site.browser, site.web.as_str());
    let user = |name: &str| site.user(name);
    kc.set_user(user("alice"));

    // Alice signs in, accepts the terms, and talks: new users get the deployment's LLM proxy
    // and its default model, as in OpenHands SaaS.
    sign_in(browser, web).await;
    let alices = new_conversation(browser, web, "hello from alice").await;
    browser.wait_text("Echo: hello from alice.").await;
    let (auth, body) = llm.requests().last().cloned().unwrap();
    assert_eq!((auth.as_deref(), body["model"].as_str()), (Some("sk-proxy-key"), Some("claude-sonnet-4-20250514")));

    // She names another model in the LLM settings (advanced: the defaults are a proxy's).
    browser.goto(&format!("{web}/settings")).await;
    browser.clear("[data-testid=llm-custom-model-input]").await;
    browser.type_text("[data-testid=llm-custom-model-input]", "litellm_proxy/claude-opus-4-1-20250805").await;
    browser.click("[data-testid=llm-settings-screen] [data-testid=submit-button]").await;
    browser
        .wait_until("settings saved", "return !document.querySelector('[data-testid=submit-button]:not([disabled])')")
        .await;

    // Her API keys page: a key is shown once, then listed by name.
    browser.goto(&format!("{web}/settings/api-keys")).await;
    browser.click_button("Create API Key").await;
    browser.type_text("input[name=name], [data-testid=api-key-name-input]", "ci").await;
    browser.click_button("Create").await;
    let key = browser
        .wait_until("the new key", "const m = document.body.innerText.match(/oh_[A-Za-z0-9_-]{20,}/); return m && m[0]")
        .await;
    let key = key.as_str().unwrap().to_owned();
    let hers = host.send(host.http.get(host.url("/api/settings")).bearer_auth(&key)).await;
    assert_eq!(hers.status, 200, "the key shown signs in: {}", hers.text);
    assert_eq!(hers.json()["llm_model"], "litellm_proxy/claude-opus-4-1-20250805");
    // The page also holds her own key at the LLM proxy (masked), made there for her.
    browser.wait_text("OpenHands LLM Key").await;
    let (made, _) = llm.proxy_keys();
    assert_eq!(made.len(), 1, "{made:?}");
    let byor = host.send(host.http.get(host.url("/api/keys/llm/byor")).bearer_auth(&key)).await;
    assert_eq!(byor.json(), json!({ "key": made[0] }), "stored: the same key every time");
    // Refreshing it replaces it at the proxy.
    browser.click_button("Close").await;
    browser.click_button("Refresh API Key").await;
    let started = std::time::Instant::now();
    while llm.proxy_keys().1.is_empty() && started.elapsed() < oh_e2e::browser::WAIT {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (made, deleted) = llm.proxy_keys();
    assert_eq!((made.len(), deleted.clone()), (2, vec![made[0].clone()]));

    // Sign out.
    browser.goto(&format!("{web}/")).await;
    browser.click("[data-testid=user-avatar]").await;
    browser.click("//button[normalize-space()='Logout']").await;
    browser.wait_until("signed out", "return document.body.innerText.includes('Login with Enterprise SSO') || document.body.innerText.includes('Log in')").await;

    // Bob signs in: none of Alice's settings or conversations.
    kc.set_user(user("bob"));
    sign_in(browser, web).await;
    browser.wait_text("No recent conversations").await;
    assert!(!browser.text().await.contains("hello from alice"));
    browser.goto(&format!("{web}/settings")).await;
    let model = browser
        .wait_until(
            "Bob's model",
            "const i = document.querySelector('[data-testid=llm-custom-model-input]'); return i && i.value",
        )
        .await;
    assert_eq!(model.as_str(), Some("litellm_proxy/claude-sonnet-4-20250514"), "Bob has his own settings");
    let theirs = host.send(host.http.get(host.url(&format!("/api/conversations/{alices}"))).bearer_auth(&key)).await;
    assert_eq!(theirs.json()["title"], "hello from alice", "Alice's key still sees hers");

    let seen = browser
        .assert_no_unexpected_errors(
            web,
            &[
                (401, "POST", "/api/authenticate"),
                (404, "GET", "/api/conversations/{id}/git/changes"),
                // Signed in with enterprise SSO, they have no git provider: OpenHands' answer.
                (401, "GET", "/api/user/info"),
                (401, "GET", "/api/user/suggested-tasks"),
            ],
        )
        .await;
    // Billing is off: the client asks nothing of it and offers no payment.
    assert!(!seen.iter().any(|s| s.url.contains("/api/billing")), "{seen:#?}");
    assert!(seen.iter().any(|s| s.method == "POST" && s.url.ends_with("/api/accept_tos") && s.status == 200));
}

/// Billing on, against the fake Stripe.
fn billing_env(stripe: &oh_e2e::stripe::FakeStripe) -> Vec<(&'static str, &str)> {
    vec![
        ("ENABLE_BILLING", "true"),
        ("STRIPE_API_KEY", oh_e2e::stripe::SECRET_KEY),
        ("STRIPE_WEBHOOK_SECRET", oh_e2e::stripe::WEBHOOK_SECRET),
        ("STRIPE_API_URL", stripe.base_url.as_str()),
        ("STRIPE_PUBLISHABLE_KEY", "pk_test_browser"),
    ]
}

#[tokio::test]
async fn saas_billing_buys_credits_through_checkout_and_shows_the_balance() {
    let Some(frontend) = frontend_dir() else { return };
    let stripe = oh_e2e::stripe::FakeStripe::start().await;
    let site = SaasSite::start(&frontend, "saas_billing", &billing_env(&stripe)).await;
    let (browser, web) = (&site.browser, site.web.as_str());
    site.kc.set_user(site.user("carol"));
    sign_in(browser, web).await;

    // No credits yet: the billing page says so, and a new conversation is refused with the
    // client's out-of-credits message.
    browser.goto(&format!("{web}/settings/billing")).await;
    browser
        .wait_until(
            "the balance",
            "const b = document.querySelector('[data-testid=user-balance]'); return b && b.innerText === '$0.00'",
        )
        .await;

    // Carol adds $25: Stripe's checkout page (the fake pays at once) sends her back through
    // the server, which credits the purchase and returns her to the billing page.
    browser.type_text("[data-testid=top-up-input]", "25").await;
    browser.click_button("Add credit").await;
    browser
        .wait_until(
            "back from checkout",
            "return location.pathname === '/settings/billing' && !location.search.includes('session_id')",
        )
        .await;
    browser
        .wait_until(
            "the new balance",
            "const b = document.querySelector('[data-testid=user-balance]'); return b && b.innerText === '$25.00'",
        )
        .await;
    let forms = stripe.checkout_forms();
    assert_eq!(forms.len(), 1);
    assert_eq!(forms[0]["line_items[0][price_data][unit_amount]"], "2500");
    assert_eq!(forms[0]["success_url"], format!("{web}/api/billing/success?session_id={{CHECKOUT_SESSION_ID}}"));

    // With credits she converses; what the proxy reports each answer cost is spent.
    site.llm.set_cost("1.25");
    new_conversation(browser, web, "hello with credits").await;
    browser.wait_text("Echo: hello with credits.").await;
    // The debit follows the answer (queued): the page is reloaded until it shows.
    let balance = "const b = document.querySelector('[data-testid=user-balance]'); return b && b.innerText";
    let started = std::time::Instant::now();
    loop {
        browser.goto(&format!("{web}/settings/billing")).await;
        let shown = browser.wait_until("the balance", balance).await;
        if shown == "$23.75" {
            break;
        }
        assert!(started.elapsed() < oh_e2e::browser::WAIT, "the balance stayed {shown}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }

    browser
        .assert_no_unexpected_errors(
            web,
            &[
                (401, "POST", "/api/authenticate"),
                // With billing on, the client asks for the balance before anyone signed in.
                (401, "GET", "/api/billing/credits"),
                (404, "GET", "/api/conversations/{id}/git/changes"),
                (401, "GET", "/api/user/info"),
                (401, "GET", "/api/user/suggested-tasks"),
            ],
        )
        .await;
}

#[tokio::test]
async fn saas_a_jira_admin_registers_their_site_through_atlassian_and_mentions_start_conversations() {
    use oh_e2e::providers::{
        FakeProviders, JIRA_SITE, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, WS_JIRA_EMAIL, WS_JIRA_KEY,
    };
    let Some(frontend) = frontend_dir() else { return };
    let atlassian = FakeProviders::start().await;
    let env = [
        ("ENABLE_JIRA", "true"),
        ("JIRA_WEBHOOKS_ENABLED", "1"),
        ("JIRA_CLIENT_ID", OAUTH_CLIENT_ID),
        ("JIRA_CLIENT_SECRET", OAUTH_CLIENT_SECRET),
        ("JIRA_OAUTH_URL", atlassian.base_url.as_str()),
        ("JIRA_CLOUD_API_URL", atlassian.base_url.as_str()),
    ];
    let site = SaasSite::start(&frontend, "saas_jira", &env).await;
    let (browser, web, host) = (&site.browser, site.web.as_str(), &site.host);
    site.kc.set_user(site.user("dora"));
    sign_in(browser, web).await;

    // Dora configures her Jira site in the Git settings: not registered yet, so the client
    // asks for its secret and service account, then sends her to Atlassian and back.
    browser.goto(&format!("{web}/settings/integrations")).await;
    browser.click("//*[@data-testid='jira-integration-row']//button[normalize-space()='Configure']").await;
    browser.type_text("input[placeholder='yourcompany.atlassian.net']", JIRA_SITE).await;
    browser.click_button("Connect").await;
    browser.type_text("input[placeholder='whsec_abcd1234efgh5678ijkl']", "dora-jira-secret").await;
    browser.type_text("input[placeholder='test@example.com']", WS_JIRA_EMAIL).await;
    browser.type_text("input[placeholder='sk-1234567890abcdef...']", WS_JIRA_KEY).await;
    browser.click_button("Connect").await;
    browser
        .wait_until(
            "back from Atlassian, registered",
            "const row = document.querySelector('[data-testid=jira-integration-row]'); \
             return location.pathname === '/settings/integrations' && row && row.innerText.includes('Edit')",
        )
        .await;

    // A comment mentioning the agent, from her Atlassian account and signed with the
    // secret she gave, starts a conversation for her; its answer goes back on the issue.
    let comment = json!({
        "webhookEvent": "comment_created",
        "comment": { "body": "@openhands why is the disk full?", "author": { "accountId": "jira-alice", "displayName": "Dora" } },
        "issue": { "key": "OPS-9", "self": format!("https://{JIRA_SITE}/rest/api/2/issue/10001"),
                   "fields": { "summary": "Disk full", "description": "on db-2" } },
    })
    .to_string();
    let signature = format!("sha256={}", oh_e2e::hmac_sha256_hex(b"dora-jira-secret", comment.as_bytes()));
    let delivered = host
        .send(
            host.http
                .post(host.url("/integration/jira/events"))
                .header("content-type", "application/json")
                .header("x-hub-signature", signature)
                .header("x-atlassian-webhook-identifier", "browser-1")
                .body(comment),
        )
        .await;
    assert_eq!(delivered.json()["status"], "accepted", "{}", delivered.text);
    let started = std::time::Instant::now();
    while !atlassian.posts().iter().any(|p| p.0 == "jira-workspace" && p.2.contains("disk full")) {
        assert!(started.elapsed() < oh_e2e::browser::WAIT, "no answer on the issue: {:?}", atlassian.posts());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    browser.goto(&format!("{web}/")).await;
    browser.wait_text("OPS-9: Disk full").await;

    browser
        .assert_no_unexpected_errors(
            web,
            &[
                (401, "POST", "/api/authenticate"),
                (401, "GET", "/api/user/info"),
                (401, "GET", "/api/user/suggested-tasks"),
                // Before she configured it: no link, and the site is not registered.
                (404, "GET", "/integration/jira/workspaces/link"),
                (404, "GET", "/integration/jira/workspaces/validate/acme.atlassian.net"),
            ],
        )
        .await;
}

#[tokio::test]
async fn the_agents_commands_show_in_the_terminal_tab_and_its_files_in_the_changes_tab() {
    let Some(frontend) = frontend_dir() else { return };
    let llm = FakeLlm::start().await;
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile(
        "",
        "[extensions.conversation_manager]\nlibrary = \"standalone_manager\"\nimplementation = \"StandaloneConversationManager\"\n\
         config = { llm_retry_initial_ms = 20, llm_max_retries = 0 }\n\
         [extensions.runtime]\nlibrary = \"sandbox_runtime\"\nimplementation = \"BubblewrapRuntime\"\n",
    );
    let host = d.start_with_env(&[("FRONTEND_DIRECTORY", frontend.to_str().unwrap())]);
    let settings = json!({ "llm_model": "openai/gpt-4o", "llm_base_url": llm.base_url, "llm_api_key": "sk-test-key",
                           "user_consents_to_analytics": false });
    assert_eq!(host.post_json("/api/settings", &settings).await.status, 200);
    llm.push([
        Reply::Tools(vec![(
            "str_replace_editor".into(),
            json!({ "command": "create", "path": "notes/todo.md", "file_text": "- ship it\n" }),
        )]),
        Reply::Tools(vec![("execute_bash".into(), json!({ "command": "echo terminal-says-$((6*7))" }))]),
        Reply::Tools(vec![("finish".into(), json!({ "message": "Wrote the notes." }))]),
    ]);
    let browser = Browser::start("agent_tools").await;
    let base = host.base.clone();
    new_conversation(&browser, &base, "write the notes").await;
    // The chat shows the agent's actions and its last word.
    browser.wait_text("Wrote the notes.").await;

    // The Terminal tab: the command and its output.
    browser.click("[aria-label='Terminal (read-only)']").await;
    browser
        .wait_until(
            "the command's output in the terminal",
            "const t = document.querySelector('.xterm'); return t && t.innerText.includes('terminal-says-42')",
        )
        .await;
    // The Changes tab: the file the agent made, in the tab's own diff viewer (its path
    // alone would also match the chat's "I edited the file …").
    browser.click("[aria-label='Changes']").await;
    browser
        .wait_until(
            "the changed file in the Changes tab",
            "const v = document.querySelector('[data-testid=file-diff-viewer-outer]'); return v && v.innerText.includes('notes/todo.md')",
        )
        .await;
    browser.assert_no_unexpected_errors(&base, EXPECTED).await;
}

/// GitLab's repository picker on the home page lists the projects synced into PostgreSQL at
/// sign-in (the token brokered by Keycloak), not GitLab's API on each keystroke.
#[tokio::test]
async fn saas_the_repository_picker_lists_the_gitlab_projects_synced_at_sign_in() {
    let Some(frontend) = frontend_dir() else { return };
    let gitlab = oh_e2e::git::FakeProvider::start(oh_e2e::git::Kind::GitLab, "glpat_good").await;
    let base = gitlab.api_url.trim_end_matches("/api/v4").to_owned();
    let env = [
        ("GITLAB_APP_CLIENT_ID", "gl-app-id"),
        ("GITLAB_APP_CLIENT_SECRET", "gl-app-secret"),
        ("GITLAB_BASE_URL", base.as_str()),
        // GitLab's webhooks are another test's.
        ("GITLAB_WEBHOOKS_ENABLED", "false"),
    ];
    let site = SaasSite::start(&frontend, "saas_gitlab_picker", &env).await;
    let (kc, browser, web) = (&site.kc, &site.browser, site.web.as_str());
    kc.set_user(site.user("gina"));
    sign_in(browser, web).await;
    browser.wait("[data-testid=repo-connector]").await;
    browser.click("[data-testid=git-repo-dropdown]").await;
    browser.wait_text("group/sub/project-0").await;
    let listed = gitlab.seen_at("/api/v4/projects");
    // Typing narrows the list from the stored projects.
    // A key at a time, as a person types: the picker re-renders on each.
    for key in "project-44".chars() {
        let input = "[data-testid=git-repo-dropdown] input, input[data-testid=git-repo-dropdown]";
        browser.type_text(input, &key.to_string()).await;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    browser.wait_until("the search", "return document.body.innerText.includes('group/sub/project-44') && !document.body.innerText.includes('group/sub/project-10')").await;
    assert_eq!(gitlab.seen_at("/api/v4/projects").len(), listed.len(), "the search asked GitLab");
    assert!(!listed.is_empty() && listed.iter().all(|s| s.query.get("membership").map(String::as_str) == Some("true")));
    browser
        .assert_no_unexpected_errors(
            web,
            &[(401, "POST", "/api/authenticate"), (401, "GET", "/api/user/suggested-tasks")],
        )
        .await;
}

/// A subscription bought through Stripe Checkout (subscription mode) lands on the LLM settings
/// page, where the 0.62 web client says it worked; the access is real afterwards.
#[tokio::test]
async fn saas_a_subscription_checkout_returns_to_the_page_that_confirms_it() {
    let Some(frontend) = frontend_dir() else { return };
    let stripe = oh_e2e::stripe::FakeStripe::start().await;
    let mut env = billing_env(&stripe);
    env.push(("STRIPE_SUBSCRIPTION_PRICE_ID", oh_e2e::stripe::SUBSCRIPTION_PRICE_ID));
    let site = SaasSite::start(&frontend, "saas_subscription", &env).await;
    let (browser, web) = (&site.browser, site.web.as_str());
    site.kc.set_user(site.user("sam"));
    sign_in(browser, web).await;
    let access = "return fetch('/api/billing/subscription-access').then(r => r.json()).then(a => JSON.stringify(a))";
    assert_eq!(browser.js(access, json!([])).await, "null", "no subscription yet");

    // OpenHands' redirect form of the checkout, as a link would open it.
    browser.goto(&format!("{web}/api/billing/create-subscription-checkout-session")).await;
    browser.wait_until("back from checkout", "return location.pathname === '/settings'").await;
    browser.wait_text("Subscription successful!").await;
    let form = stripe.checkout_forms().pop().unwrap();
    assert_eq!(form["mode"], "subscription");
    let now = browser.js(access, json!([])).await;
    let now: serde_json::Value = serde_json::from_str(now.as_str().unwrap()).unwrap();
    assert!(now["end_at"].is_string() && now["cancelled_at"].is_null(), "{now}");
}
