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
