//! Integrations: signed deliveries from (fake) GitHub and Slack start conversations for linked
//! users and the agent's answer is posted back; refusals, duplicates, the rate limit; a kill
//! -9 between the acknowledgement and the processing; a provider failing until the delivery
//! is a dead letter, then replayed from the command line. Jira, Jira DC and Linear workspaces:
//! registered and linked through each provider's (fake) OAuth, deliveries verified with the
//! workspace's secret and answered with its service account.

use oh_e2e::{
    hmac_sha256_hex,
    llm::FakeLlm,
    providers::{
        app_private_key, FakeProviders, APP_ID, GITLAB_TOKEN, GITLAB_USER_TOKEN, JIRA_CLOUD_ID, JIRA_DC_TOKEN,
        JIRA_EMAIL, JIRA_SITE, JIRA_TOKEN, LINEAR_KEY, LINEAR_ORG_ID, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET,
        SLACK_BOT_TOKEN, WS_JIRA_DC_KEY, WS_JIRA_EMAIL, WS_JIRA_KEY, WS_LINEAR_KEY,
    },
    Deployment, TestHost,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ALICE: &str = "alice-integrations-key-0123456789";
const BOB: &str = "bob-integrations-key-0123456789";
const GITHUB_SECRET: &str = "github-webhook-secret-0123";
const SLACK_SECRET: &str = "slack-signing-secret-0123";
/// A GitLab signing token (`whsec_` + base64 of the key), also sent as a classic token.
const GITLAB_SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn profile(db: &str, providers: &str, extra: &str) -> String {
    let key = app_private_key().replace('\n', "\\n");
    let integrations = format!(
        "{{ database_url = \"{db}\", redis_key_prefix = \"{}\", max_attempts = 3, retry_backoff_ms = 50, \
         web_host = \"https://app.example.test\", {extra}\
         github = {{ enabled = \"1\", webhook_secret = \"{GITHUB_SECRET}\", api_url = \"{providers}\", app_id = \"{APP_ID}\", private_key = \"{key}\" }}, \
         slack = {{ enabled = \"true\", webhook_secret = \"{SLACK_SECRET}\", api_url = \"{providers}\", bot_token = \"{SLACK_BOT_TOKEN}\" }} }}",
        oh_e2e::redis::prefix("intg"),
    );
    let base = oh_e2e::saas_base_profile(db, &[("alice", ALICE), ("bob", BOB)], ", max_concurrent_conversations = 10");
    format!("{base}[[extensions.routes]]\nlibrary = \"integrations\"\nimplementation = \"Integrations\"\nconfig = {integrations}\n")
}

struct Site {
    db: oh_e2e::pg::TestDb,
    providers: FakeProviders,
    llm: FakeLlm,
}

impl Site {
    async fn new() -> Site {
        Site {
            db: oh_e2e::pg::TestDb::create().await,
            providers: FakeProviders::start().await,
            llm: FakeLlm::start().await,
        }
    }

    /// A host; `extra` adds keys to the integrations config (`workers = 0, `).
    async fn host(&self, extra: &str) -> (Deployment, TestHost) {
        self.host_with_env(extra, &[]).await
    }

    /// A host whose Slack source is `slack` (`slack = { ... }, `) instead of the default one.
    async fn host_with_slack(&self, slack: &str) -> (Deployment, TestHost) {
        let d = Deployment::new();
        d.install_bundled();
        let default_slack = format!(
            "slack = {{ enabled = \"true\", webhook_secret = \"{SLACK_SECRET}\", api_url = \"{}\", bot_token = \"{SLACK_BOT_TOKEN}\" }} }}",
            self.providers.base_url
        );
        let profile = profile(&self.db.url, &self.providers.base_url, "");
        assert!(profile.contains(&default_slack), "the default Slack source is where it is expected");
        let profile = profile.replacen(&default_slack, &format!("{} }}", slack.trim().trim_end_matches(',')), 1);
        d.write_profile("app_mode = \"saas\"\n", &profile);
        let host = d.start();
        host.wait_ready().await;
        (d, host)
    }

    async fn host_with_env(&self, extra: &str, env: &[(&str, &str)]) -> (Deployment, TestHost) {
        let d = Deployment::new();
        d.install_bundled();
        d.write_profile("app_mode = \"saas\"\n", &profile(&self.db.url, &self.providers.base_url, extra));
        let host = d.start_with_env(env);
        host.wait_ready().await;
        (d, host)
    }

    /// Alice's LLM settings, and her GitHub and Slack identities linked to her (operators).
    async fn alice(&self, host: &TestHost) {
        let settings =
            json!({ "llm_model": "openai/fake-model", "llm_base_url": self.llm.base_url, "llm_api_key": "sk-test" });
        let r = host.send(host.http.post(host.url("/api/settings")).bearer_auth(ALICE).json(&settings)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        for (provider, external) in [("github", "Alice-GH"), ("slack", "U_ALICE")] {
            let link = json!({ "provider": provider, "external_id": external, "user_id": "alice" });
            let r = host
                .send(
                    host.http.post(format!("{}/internal/integrations/links", host.admin.as_ref().unwrap())).json(&link),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
    }
}

fn issue_comment(login: &str, text: &str) -> Vec<u8> {
    json!({
        "action": "created",
        "issue": { "number": 12, "title": "The build is red", "body": "CI fails on main." },
        "comment": { "id": 99, "body": text },
        "sender": { "login": login, "type": "User" },
        "repository": { "full_name": "acme/widgets" },
        "installation": { "id": 777 },
    })
    .to_string()
    .into_bytes()
}

async fn github(host: &TestHost, delivery: &str, body: &[u8], signature: Option<String>) -> oh_e2e::Response {
    let mut req = host
        .http
        .post(host.url("/integration/github/events"))
        .header("x-github-event", "issue_comment")
        .header("x-github-delivery", delivery)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    host.send(req).await
}

fn github_signature(body: &[u8]) -> Option<String> {
    Some(format!("sha256={}", hmac_sha256_hex(GITHUB_SECRET.as_bytes(), body)))
}

async fn slack(host: &TestHost, body: &Value, timestamp: i64) -> oh_e2e::Response {
    let body = body.to_string();
    let base = format!("v0:{timestamp}:{body}");
    let signature = format!("v0={}", hmac_sha256_hex(SLACK_SECRET.as_bytes(), base.as_bytes()));
    let req = host
        .http
        .post(host.url("/slack/on-event"))
        .header("x-slack-signature", signature)
        .header("x-slack-request-timestamp", timestamp.to_string())
        .header("content-type", "application/json")
        .body(body);
    host.send(req).await
}

async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn audit(db: &oh_e2e::pg::TestDb) -> Vec<(String, Option<String>, String, Value)> {
    let mut conn = db.connect().await;
    sqlx::query_as("SELECT source, delivery_id, action, detail FROM audit_log ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_mention_is_answered_on_the_issue_and_refusals_are_audited() {
    let site = Site::new().await;
    let (_d, host) = site.host("").await;
    site.alice(&host).await;

    // Alice mentions the agent on an issue: 200 at once, then a comment with its answer.
    let body = issue_comment("alice-gh", "@OpenHands why is CI red?");
    let r = github(&host, "gh-delivery-1", &body, github_signature(&body)).await;
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("accepted")), "{}", r.text);
    let comments = wait_for("the answer on the issue", || {
        let c = site.providers.comments();
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(comments.len(), 1);
    let (repo, number, text) = &comments[0];
    assert_eq!((repo.as_str(), *number), ("acme/widgets", 12));
    assert!(text.starts_with("Echo: ") && text.contains("why is CI red?"), "{text}");
    // The agent got the issue as context; the conversation is Alice's, titled by the issue.
    let (_, first) = site.llm.requests()[0].clone();
    let prompt =
        first["messages"].as_array().unwrap().iter().rev().find(|m| m["role"] == "user").unwrap()["content"].clone();
    assert!(prompt.as_str().unwrap().contains("acme/widgets, issue #12: The build is red"), "{prompt}");
    let list = host.send(host.http.get(host.url("/api/conversations")).bearer_auth(ALICE)).await.json();
    assert_eq!(list["results"].as_array().unwrap().len(), 1);
    assert_eq!(list["results"][0]["title"], "acme/widgets#12: The build is red");
    assert_eq!(list["results"][0]["trigger"], "resolver");

    // GitHub retries the same delivery: acknowledged, nothing done twice.
    let again = github(&host, "gh-delivery-1", &body, github_signature(&body)).await;
    assert_eq!(again.json()["status"], "duplicate");

    // Refused: unsigned (401), wrong secret, tampered body (403); each audited, no secret kept.
    let forged = Some(format!("sha256={}", hmac_sha256_hex(b"not-the-secret", &body)));
    let tampered = issue_comment("alice-gh", "@OpenHands delete everything");
    for (delivery, payload, signature, status) in [
        ("gh-unsigned", body.clone(), None, 401),
        ("gh-forged", body.clone(), forged, 403),
        ("gh-tampered", tampered, github_signature(&body), 403),
    ] {
        let r = github(&host, delivery, &payload, signature).await;
        assert_eq!(r.status, status, "{delivery}: {}", r.text);
        assert!(r.json()["error"].as_str().unwrap().contains("refused"), "{}", r.text);
    }
    // Oversized: the host's body limit, before the plugin.
    let huge = vec![b' '; 4 * 1024 * 1024 + 1024];
    assert_eq!(github(&host, "gh-huge", &huge, github_signature(&huge)).await.status, 413);
    // The operators' routes are on the admin listener only.
    let public = host.send(host.http.get(host.url("/internal/webhooks/dead-letters"))).await;
    assert_eq!(public.status, 404, "{}", public.text);
    // A source that is not enabled is not there.
    let off = host.send(host.http.post(host.url("/integration/linear/events")).body("{}")).await;
    assert_eq!(off.status, 404);

    // Someone unlinked is told once how to link; no conversation is started for them.
    for (n, delivery) in ["gh-stranger-1", "gh-stranger-2"].iter().enumerate() {
        let body = issue_comment("stranger", "@openhands help");
        assert_eq!(github(&host, delivery, &body, github_signature(&body)).await.status, 200);
        if n == 0 {
            wait_for("the link notice", || (site.providers.comments().len() == 2).then_some(())).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let comments = site.providers.comments();
    assert_eq!(comments.len(), 2, "{comments:#?}");
    assert!(
        comments[1].2.contains("not linked")
            && comments[1].2.contains("https://app.example.test/settings/integrations")
    );

    let log = audit(&site.db).await;
    let actions = |delivery: &str| -> Vec<String> {
        log.iter().filter(|e| e.1.as_deref() == Some(delivery)).map(|e| e.2.clone()).collect()
    };
    assert_eq!(actions("gh-delivery-1"), ["received", "processed", "duplicate"]);
    assert_eq!(actions("gh-forged"), ["refused"]);
    assert!(log.iter().any(|e| e.2 == "answered"), "{log:#?}");
    let text = format!("{log:?}");
    assert!(!text.contains(GITHUB_SECRET) && !text.contains("sha256="), "no secret or signature in the audit log");
    let refused: Vec<&Value> = log.iter().filter(|e| e.2 == "refused").map(|e| &e.3).collect();
    assert!(refused.iter().any(|d| d["reason"] == "signature missing"));
    assert!(refused.iter().any(|d| d["reason"] == "signature does not match"));

    // The integration's health, as Prometheus series: deliveries by outcome, GitHub's API
    // calls, how long processing took.
    use oh_e2e::metrics::{histogram_count, scrape, value};
    let s = scrape(&host.admin_get("/internal/metrics").await.text);
    let deliveries =
        |outcome: &str| value(&s, "oh_webhook_deliveries_total", &[("source", "github"), ("outcome", outcome)]);
    // Stored: gh-delivery-1 and the first stranger's; its resend (same body) and GitHub's
    // retry of gh-delivery-1 are duplicates.
    assert_eq!(deliveries("received"), 2.0);
    assert_eq!(deliveries("duplicate"), 2.0);
    assert_eq!(deliveries("processed"), 2.0);
    // Unsigned, forged, tampered (the oversized one stops at the host's body limit).
    assert_eq!(deliveries("refused"), 3.0);
    assert!(value(&s, "oh_provider_api_calls_total", &[("provider", "github"), ("outcome", "ok")]) >= 2.0);
    assert_eq!(histogram_count(&s, "oh_webhook_processing_seconds", &[("source", "github")]), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_mention_is_answered_in_its_thread() {
    let site = Site::new().await;
    let (_d, host) = site.host("").await;
    site.alice(&host).await;
    let now = chrono::Utc::now().timestamp();

    // Slack's URL check, answered with its challenge once signed.
    let check = json!({ "type": "url_verification", "token": "t", "challenge": "c-12345" });
    let r = slack(&host, &check, now).await;
    assert_eq!((r.status, r.json()), (200, json!({ "challenge": "c-12345" })));

    let mention = json!({
        "type": "event_callback", "event_id": "Ev0001", "team_id": "T1",
        "event": { "type": "app_mention", "user": "U_ALICE", "channel": "C42", "ts": "1700000000.000100",
                   "text": "<@UBOT> what is the status of the release?" },
    });
    // A stale timestamp (a replay of an old request) is refused.
    assert_eq!(slack(&host, &mention, now - 301).await.status, 403);
    let r = slack(&host, &mention, now).await;
    assert_eq!(r.json()["status"], "accepted", "{}", r.text);
    let messages = wait_for("the reply in the thread", || {
        let m = site.providers.messages();
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!((messages[0].0.as_str(), messages[0].1.as_str()), ("C42", "1700000000.000100"));
    assert_eq!(messages[0].2, "Echo: what is the status of the release?.");
    // Slack retries with the same event id: acknowledged, not done again.
    assert_eq!(slack(&host, &mention, now).await.json()["status"], "duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_acknowledged_before_a_kill_9_is_processed_once_after_restart() {
    let site = Site::new().await;
    // A host that only receives (no workers): what was acknowledged waits in the inbox.
    let (d, mut receiver) = site.host("workers = 0, ").await;
    site.alice(&receiver).await;
    let body = issue_comment("alice-gh", "@openhands summarize");
    assert_eq!(github(&receiver, "gh-kill-1", &body, github_signature(&body)).await.json()["status"], "accepted");
    receiver.signal("KILL");
    assert!(site.providers.comments().is_empty());

    // Another host works the inbox: one conversation, one answer.
    let (_d2, worker) = site.host("").await;
    let comments = wait_for("the answer", || {
        let c = site.providers.comments();
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert!(comments[0].2.contains("summarize"), "{comments:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(site.providers.comments().len(), 1, "answered once");
    assert_eq!(site.llm.requests().len(), 1, "one conversation");
    let list = worker.send(worker.http.get(worker.url("/api/conversations")).bearer_auth(ALICE)).await.json();
    assert_eq!(list["results"].as_array().unwrap().len(), 1);
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failing_every_attempt_dead_letters_the_delivery_and_a_replay_delivers_it() {
    let site = Site::new().await;
    let (d, host) = site.host("").await;
    site.alice(&host).await;
    // Someone unlinked: telling them how to link is one comment, which GitHub keeps refusing.
    site.providers.fail_comments(3);
    let body = issue_comment("newcomer", "@openhands hello");
    assert_eq!(github(&host, "gh-dead-1", &body, github_signature(&body)).await.status, 200);
    let mut conn = site.db.connect().await;
    let started = Instant::now();
    loop {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE delivery_id = 'gh-dead-1'")
                .fetch_optional(&mut conn)
                .await
                .unwrap();
        if status.as_deref() == Some("dead") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "not dead-lettered: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(site.providers.failed_comments(), 3, "three attempts (max_attempts = 3)");

    // Operators see it and replay it from the command line; this time GitHub takes it.
    let admin = host.admin.clone().unwrap();
    let list = d.run_cli(&["webhooks", "list", "--admin", &admin]);
    assert!(list.status.success(), "{}", list.stderr);
    let line = list.stdout.lines().find(|l| l.contains("gh-dead-1")).unwrap_or_else(|| panic!("{}", list.stdout));
    assert!(line.contains("github") && line.contains("attempts 3") && line.contains("500"), "{line}");
    let id = line.split('\t').next().unwrap().to_owned();
    let replay = d.run_cli(&["webhooks", "replay", &id, "--admin", &admin]);
    assert!(replay.status.success(), "{}", replay.stderr);
    wait_for("the delivered notice", || (site.providers.comments().len() == 1).then_some(())).await;
    let missing = d.run_cli(&["webhooks", "replay", "999999", "--admin", &admin]);
    assert!(!missing.status.success() && missing.stderr.contains("no dead letter 999999"), "{}", missing.stderr);
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM webhook_deliveries WHERE delivery_id = 'gh-dead-1'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("done", 1));
    let actions: Vec<String> =
        audit(&site.db).await.into_iter().filter(|e| e.1.as_deref() == Some("gh-dead-1")).map(|e| e.2).collect();
    assert_eq!(actions, ["received", "retry_scheduled", "retry_scheduled", "dead_lettered", "replayed", "processed"]);
    // The same story in the metrics: two retries, a dead letter, GitHub's errors counted.
    use oh_e2e::metrics::{scrape, value};
    let s = scrape(&host.admin_get("/internal/metrics").await.text);
    let deliveries =
        |outcome: &str| value(&s, "oh_webhook_deliveries_total", &[("source", "github"), ("outcome", outcome)]);
    assert_eq!((deliveries("retried"), deliveries("dead_lettered"), deliveries("processed")), (2.0, 1.0, 1.0));
    assert_eq!(value(&s, "oh_provider_api_calls_total", &[("provider", "github"), ("outcome", "error")]), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_is_rate_limited_with_retry_after() {
    let site = Site::new().await;
    let (_d, host) = site.host("rate_limit_per_minute = 3, ").await;
    // Three a minute: the fourth is refused (unless the minute turns meanwhile, which only
    // moves the refusal one request later).
    let mut statuses = Vec::new();
    for i in 0..10 {
        let body = issue_comment("nobody", "no mention here");
        let r = github(&host, &format!("gh-rate-{i}"), &body, github_signature(&body)).await;
        statuses.push(r.status);
        if r.status == 429 {
            let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&wait), "{wait}");
            assert!(r.json()["error"].as_str().unwrap().contains("too many github deliveries"));
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(statuses.len() <= 7, "{statuses:?}");
    let refused =
        audit(&site.db).await.into_iter().filter(|e| e.2 == "refused" && e.3["reason"] == "rate limited").count();
    assert_eq!(refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_jira_jira_dc_and_linear_mentions_are_answered_where_they_were_made() {
    let site = Site::new().await;
    let api = &site.providers.base_url;
    let sources = format!(
        "gitlab = {{ enabled = \"1\", webhook_secret = \"{GITLAB_SECRET}\", api_url = \"{api}\", token = \"{GITLAB_TOKEN}\" }}, \
         jira = {{ enabled = \"1\", webhook_secret = \"jira-secret\", api_url = \"{api}\", account_email = \"{JIRA_EMAIL}\", token = \"{JIRA_TOKEN}\" }}, \
         jira_dc = {{ enabled = \"1\", webhook_secret = \"jira-dc-secret\", api_url = \"{api}\", token = \"{JIRA_DC_TOKEN}\" }}, \
         linear = {{ enabled = \"1\", webhook_secret = \"linear-secret\", api_url = \"{api}\", token = \"{LINEAR_KEY}\" }}, "
    );
    let (_d, host) = site.host(&sources).await;
    site.alice(&host).await;
    let admin = host.admin.clone().unwrap();
    for (provider, external) in
        [("gitlab", "Dana-GL"), ("jira", "acc-dana"), ("jira_dc", "JIRAUSER10"), ("linear", "u-dana")]
    {
        let link = json!({ "provider": provider, "external_id": external, "user_id": "alice" });
        let r = host.send(host.http.post(format!("{admin}/internal/integrations/links")).json(&link)).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let post = |path: &str, body: &Vec<u8>, headers: Vec<(&str, String)>| {
        let mut req = host.http.post(host.url(path)).header("content-type", "application/json").body(body.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        host.send(req)
    };

    // GitLab: a note on a merge request, with the webhook's secret token.
    let note = json!({
        "object_kind": "note", "user": { "username": "dana-gl" }, "project": { "id": 5, "path_with_namespace": "grp/app" },
        "object_attributes": { "note": "@openhands review this", "noteable_type": "MergeRequest" },
        "merge_request": { "iid": 3, "title": "Speed up", "description": "" },
    })
    .to_string()
    .into_bytes();
    let gl = |token: &str| {
        vec![
            ("x-gitlab-token", token.to_owned()),
            ("x-gitlab-event", "Note Hook".to_owned()),
            ("x-gitlab-event-uuid", "gl-1".to_owned()),
        ]
    };
    assert_eq!(post("/integration/gitlab/events", &note, gl("wrong")).await.status, 403);
    assert_eq!(post("/integration/gitlab/events", &note, gl(GITLAB_SECRET)).await.json()["status"], "accepted");
    // The same webhook signing with its token instead (GitLab 19, Standard Webhooks).
    let signed_note =
        String::from_utf8(note.clone()).unwrap().replace("review this", "and check the tests").into_bytes();
    let ts = chrono::Utc::now().timestamp().to_string();
    let standard = |key: &[u8], id: &str| {
        use base64::Engine as _;
        let mut message = format!("{id}.{ts}.").into_bytes();
        message.extend_from_slice(&signed_note);
        let raw: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hmac_sha256_hex(key, &message)[i * 2..i * 2 + 2], 16).unwrap())
            .collect();
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.clone()),
            ("webhook-signature", format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(raw))),
            ("x-gitlab-event", "Note Hook".to_owned()),
        ]
    };
    let key = b"0123456789abcdef0123456789abcdef";
    assert_eq!(post("/integration/gitlab/events", &signed_note, standard(b"another key", "gl-2")).await.status, 403);
    assert_eq!(
        post("/integration/gitlab/events", &signed_note, standard(key, "gl-2")).await.json()["status"],
        "accepted"
    );

    // Jira Cloud and Data Center: comment_created, X-Hub-Signature with each one's secret.
    let jira = |author: Value| {
        json!({
            "webhookEvent": "comment_created",
            "comment": { "body": "@openhands triage", "author": author },
            "issue": { "key": "OPS-9", "fields": { "summary": "Disk full", "description": "on db-2" } },
        })
        .to_string()
        .into_bytes()
    };
    let cloud = jira(json!({ "accountId": "acc-dana", "displayName": "Dana" }));
    let signed = |secret: &str, body: &[u8], id: &str| {
        vec![
            ("x-hub-signature", format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), body))),
            ("x-atlassian-webhook-identifier", id.to_owned()),
        ]
    };
    assert_eq!(post("/integration/jira/events", &cloud, signed("jira-dc-secret", &cloud, "j-0")).await.status, 403);
    assert_eq!(post("/integration/jira/events", &cloud, signed("jira-secret", &cloud, "j-1")).await.status, 200);
    let dc = jira(json!({ "key": "JIRAUSER10", "name": "dana" }));
    assert_eq!(post("/integration/jira-dc/events", &dc, signed("jira-dc-secret", &dc, "jdc-1")).await.status, 200);

    // Linear: Linear-Signature, and its timestamp within a minute.
    let linear = |at: i64| {
        json!({ "type": "Comment", "action": "create", "webhookTimestamp": at,
                "data": { "body": "@openhands estimate", "userId": "u-dana", "issueId": "issue-uuid-1",
                          "issue": { "identifier": "ENG-4", "title": "Login" } } })
        .to_string()
        .into_bytes()
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let headers = |body: &[u8], id: &str| {
        vec![
            ("linear-signature", hmac_sha256_hex(b"linear-secret", body)),
            ("linear-delivery", id.to_owned()),
            ("linear-event", "Comment".to_owned()),
        ]
    };
    let stale = linear(now_ms - 61_000);
    assert_eq!(post("/integration/linear/events", &stale, headers(&stale, "lin-0")).await.status, 403);
    let fresh = linear(now_ms);
    assert_eq!(post("/integration/linear/events", &fresh, headers(&fresh, "lin-1")).await.status, 200);

    // Without an OAuth app, Jira's workspace routes say what is missing (no link, no
    // workspace, and how to turn them on).
    let link = host.send(host.http.get(host.url("/integration/jira/workspaces/link")).bearer_auth(ALICE)).await;
    assert_eq!(link.status, 404, "{}", link.text);
    let register = json!({ "workspace_name": "acme.atlassian.net", "webhook_secret": "s", "svc_acc_email": "a@b.co", "svc_acc_api_key": "k" });
    let r =
        host.send(host.http.post(host.url("/integration/jira/workspaces")).bearer_auth(ALICE).json(&register)).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.json()["detail"].as_str().unwrap().contains("JIRA_CLIENT_ID"), "{}", r.text);

    // Each answered where it was asked, with the agent's reply.
    let posts = wait_for("five answers", || {
        let p = site.providers.posts();
        (p.len() >= 5).then_some(p)
    })
    .await;
    assert!(posts.iter().any(|p| p.0 == "gitlab" && p.2.contains("check the tests")), "{posts:#?}");
    let find =
        |provider: &str| posts.iter().find(|p| p.0 == provider).unwrap_or_else(|| panic!("{provider}: {posts:#?}"));
    assert_eq!(find("gitlab").1, "5/merge_requests/3");
    assert!(
        posts.iter().any(|p| p.0 == "gitlab" && p.2.starts_with("Echo: ") && p.2.contains("review this")),
        "{posts:#?}"
    );
    assert_eq!((find("jira").1.as_str(), find("jira_dc").1.as_str()), ("OPS-9", "OPS-9"));
    assert!(find("jira").2.contains("triage") && find("jira_dc").2.contains("triage"), "{posts:#?}");
    assert_eq!(find("linear").1, "issue-uuid-1");
    assert!(find("linear").2.contains("estimate"));
    let list = host.send(host.http.get(host.url("/api/conversations")).bearer_auth(ALICE)).await.json();
    assert_eq!(list["results"].as_array().unwrap().len(), 5, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_links_an_identity_by_commenting_a_one_time_code_from_it() {
    let site = Site::new().await;
    let (_d, host) = site.host("").await;
    site.alice(&host).await;
    let code = host.send(host.http.post(host.url("/api/integrations/link-code")).bearer_auth(ALICE)).await;
    assert_eq!(code.status, 200, "{}", code.text);
    let code = code.json()["code"].as_str().unwrap().to_owned();
    assert_eq!(host.send(host.http.post(host.url("/api/integrations/link-code"))).await.status, 401);

    // From the GitHub account to link: the signed delivery proves whose it is.
    let body = issue_comment("Newbie", &format!("@openhands link {}", code.to_lowercase()));
    assert_eq!(github(&host, "gh-link-1", &body, github_signature(&body)).await.status, 200);
    wait_for("the confirmation", || (site.providers.comments().len() == 1).then_some(())).await;
    assert!(site.providers.comments()[0].2.starts_with("Linked"), "{:?}", site.providers.comments());
    // A code works once.
    let body = issue_comment("mallory", &format!("@openhands link {code}"));
    assert_eq!(github(&host, "gh-link-2", &body, github_signature(&body)).await.status, 200);
    wait_for("the refusal", || (site.providers.comments().len() == 2).then_some(())).await;
    assert!(site.providers.comments()[1].2.contains("unknown or has expired"));

    // Newbie's mentions now work for Alice; Mallory's do not.
    let body = issue_comment("newbie", "@openhands fix the flaky test");
    assert_eq!(github(&host, "gh-link-3", &body, github_signature(&body)).await.status, 200);
    wait_for("the answer", || (site.providers.comments().len() == 3).then_some(())).await;
    assert!(
        site.providers.comments()[2].2.starts_with("Echo: ") && site.providers.comments()[2].2.contains("flaky test")
    );
    let mut conn = site.db.connect().await;
    let links: Vec<(String, String)> = sqlx::query_as(
        "SELECT external_id, user_id FROM integration_links WHERE provider = 'github' ORDER BY external_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(links, [("alice-gh".to_owned(), "alice".to_owned()), ("newbie".to_owned(), "alice".to_owned())]);
}

/// Goes through a workspace route that sends the user to the provider (`start`, as `key`),
/// the provider's consent, and back: the callback's answer.
async fn through_oauth(host: &TestHost, key: &str, start: &str, body: Value) -> oh_e2e::Response {
    let r = host.send(host.http.post(host.url(start)).bearer_auth(key).json(&body)).await;
    assert_eq!(r.status, 200, "{start}: {}", r.text);
    let (sent, provider) = (r.json(), oauth_client());
    assert_eq!((&sent["success"], &sent["redirect"]), (&json!(true), &json!(true)), "{sent}");
    let consent = provider.get(sent["authorizationUrl"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(consent.status(), 302, "{}", consent.text().await.unwrap());
    host.send(provider.get(host.url(&callback_path(&consent))).bearer_auth(key)).await
}

/// A client that shows redirects instead of following them (the browser's part).
fn oauth_client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The path and query the provider sent the browser back to (on the configured WEB_HOST).
fn callback_path(consent: &reqwest::Response) -> String {
    let back = reqwest::Url::parse(consent.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(back.origin().ascii_serialization(), "https://app.example.test");
    format!("{}?{}", back.path(), back.query().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jira_jira_dc_and_linear_workspaces_are_registered_linked_and_answer_with_their_own_accounts() {
    let site = Site::new().await;
    let api = &site.providers.base_url;
    let oauth = format!("oauth_client_id = \"{OAUTH_CLIENT_ID}\", oauth_client_secret = \"{OAUTH_CLIENT_SECRET}\"");
    let sources = format!(
        "master_key = \"integrations-master-key-0123456789\", \
         jira = {{ enabled = \"1\", {oauth}, oauth_url = \"{api}\", cloud_api_url = \"{api}\" }}, \
         jira_dc = {{ enabled = \"1\", {oauth}, api_url = \"{api}\" }}, \
         linear = {{ enabled = \"1\", {oauth}, oauth_url = \"{api}\", api_url = \"{api}\" }}, "
    );
    let (_d, host) = site.host(&sources).await;
    site.alice(&host).await;
    let get = |path: &str, key: &str| host.send(host.http.get(host.url(path)).bearer_auth(key));
    let registration = |name: &str, secret: &str| {
        json!({ "workspace_name": name, "webhook_secret": secret, "svc_acc_email": WS_JIRA_EMAIL,
                "svc_acc_api_key": WS_JIRA_KEY, "is_active": true })
    };

    // Alice registers her Jira site; she proves she belongs to it at Atlassian.
    assert_eq!(get(&format!("/integration/jira/workspaces/validate/{JIRA_SITE}"), ALICE).await.status, 404);
    for bad in [
        json!({ "workspace_name": "a b", "webhook_secret": "s", "svc_acc_email": WS_JIRA_EMAIL, "svc_acc_api_key": "k" }),
        json!({ "workspace_name": JIRA_SITE, "webhook_secret": "s", "svc_acc_email": "nope", "svc_acc_api_key": "k" }),
        json!({ "workspace_name": JIRA_SITE, "webhook_secret": "has space", "svc_acc_email": WS_JIRA_EMAIL, "svc_acc_api_key": "k" }),
    ] {
        let r = host.send(host.http.post(host.url("/integration/jira/workspaces")).bearer_auth(ALICE).json(&bad)).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text);
        assert!(r.json()["detail"].is_string(), "{}", r.text);
    }
    let start = host
        .send(
            host.http
                .post(host.url("/integration/jira/workspaces"))
                .bearer_auth(ALICE)
                .json(&registration(JIRA_SITE, "jira-ws-secret")),
        )
        .await;
    let url = reqwest::Url::parse(start.json()["authorizationUrl"].as_str().unwrap()).unwrap();
    let param = |k: &str| url.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
    assert_eq!(url.path(), "/authorize");
    assert_eq!(param("client_id").as_deref(), Some(OAUTH_CLIENT_ID));
    assert_eq!(param("audience").as_deref(), Some("api.atlassian.com"));
    assert_eq!(param("redirect_uri").as_deref(), Some("https://app.example.test/integration/jira/callback"));
    let consent = oauth_client().get(url.as_str()).send().await.unwrap();
    let back = callback_path(&consent);
    // The state works only for whoever asked for it, and only once.
    let bobs = host.send(oauth_client().get(host.url(&back)).bearer_auth(BOB)).await;
    assert_eq!(bobs.status, 403, "{}", bobs.text);
    let again = host.send(oauth_client().get(host.url(&back)).bearer_auth(ALICE)).await;
    assert_eq!(again.status, 400, "a state is used once: {}", again.text);
    let done =
        through_oauth(&host, ALICE, "/integration/jira/workspaces", registration(JIRA_SITE, "jira-ws-secret")).await;
    let location = done.headers.get("location").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!((done.status, location.as_deref()), (302, Some("/settings/integrations")), "{}", done.text);
    let link = get("/integration/jira/workspaces/link", ALICE).await.json();
    assert_eq!((link["status"].as_str(), link["keycloak_user_id"].as_str()), (Some("active"), Some("alice")), "{link}");
    let ws = &link["workspace"];
    assert_eq!(
        (ws["name"].as_str(), ws["jira_cloud_id"].as_str(), ws["editable"].as_bool()),
        (Some(JIRA_SITE), Some(JIRA_CLOUD_ID), Some(true)),
        "{link}"
    );
    assert_eq!(link["jira_workspace_id"], ws["id"]);
    let valid = get(&format!("/integration/jira/workspaces/validate/{JIRA_SITE}"), BOB).await;
    assert_eq!(
        valid.json(),
        json!({ "name": JIRA_SITE, "status": "active", "message": "Workspace integration is active" })
    );
    // A site her account cannot reach is not hers to register.
    let other =
        through_oauth(&host, BOB, "/integration/jira/workspaces", registration("other.atlassian.net", "x")).await;
    assert_eq!(other.status, 401, "{}", other.text);

    // Bob cannot take the workspace over; he links to it as himself.
    site.providers.sign_in("jira", "jira-bob");
    let takeover =
        through_oauth(&host, BOB, "/integration/jira/workspaces", registration(JIRA_SITE, "bobs-secret")).await;
    assert_eq!(takeover.status, 403, "{}", takeover.text);
    let linked =
        through_oauth(&host, BOB, "/integration/jira/workspaces/link", json!({ "workspace_name": JIRA_SITE })).await;
    assert_eq!(linked.status, 302, "{}", linked.text);
    assert_eq!(get("/integration/jira/workspaces/link", BOB).await.json()["workspace"]["editable"], false);

    // A comment from her Atlassian account, signed with the workspace's secret, is answered
    // on the issue by the workspace's service account.
    let post = |path: &str, body: &Vec<u8>, headers: Vec<(&str, String)>| {
        let mut req = host.http.post(host.url(path)).header("content-type", "application/json").body(body.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        host.send(req)
    };
    let jira = |site: &str, author: &str| {
        json!({
            "webhookEvent": "comment_created",
            "comment": { "body": "@openhands triage", "author": { "accountId": author, "key": author, "displayName": "Alice" } },
            "issue": { "key": "OPS-9", "self": format!("{site}/rest/api/2/issue/10001"), "fields": { "summary": "Disk full", "description": "" } },
        })
        .to_string()
        .into_bytes()
    };
    let signed = |secret: &str, body: &[u8], id: &str| {
        vec![
            ("x-hub-signature", format!("sha256={}", hmac_sha256_hex(secret.as_bytes(), body))),
            ("x-atlassian-webhook-identifier", id.to_owned()),
        ]
    };
    let cloud = jira(&format!("https://{JIRA_SITE}"), "jira-alice");
    assert_eq!(post("/integration/jira/events", &cloud, signed("bobs-secret", &cloud, "w-0")).await.status, 403);
    let unknown = jira("https://other.atlassian.net", "jira-alice");
    let r = post("/integration/jira/events", &unknown, signed("jira-ws-secret", &unknown, "w-1")).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("no registered workspace"), "{}", r.text);
    let r = post("/integration/jira/events", &cloud, signed("jira-ws-secret", &cloud, "w-2")).await;
    assert_eq!(r.json()["status"], "accepted", "{}", r.text);

    // The same for Jira Data Center (its workspace is its server) and Linear.
    site.providers.sign_in("jira_dc", "JIRAUSER-ALICE");
    let dc_host = reqwest::Url::parse(api).unwrap().host_str().unwrap().to_owned();
    let mut dc_registration = registration(&dc_host, "dc-ws-secret");
    dc_registration["svc_acc_api_key"] = json!(WS_JIRA_DC_KEY);
    let done = through_oauth(&host, ALICE, "/integration/jira-dc/workspaces", dc_registration).await;
    assert_eq!(done.status, 302, "{}", done.text);
    let dc = jira(api, "JIRAUSER-ALICE");
    assert_eq!(post("/integration/jira-dc/events", &dc, signed("dc-ws-secret", &dc, "w-3")).await.status, 200);
    let mut linear_registration = registration("acme", "linear-ws-secret");
    linear_registration["svc_acc_api_key"] = json!(WS_LINEAR_KEY);
    let done = through_oauth(&host, ALICE, "/integration/linear/workspaces", linear_registration).await;
    assert_eq!(done.status, 302, "{}", done.text);
    assert_eq!(
        get("/integration/linear/workspaces/link", ALICE).await.json()["workspace"]["linear_org_id"],
        LINEAR_ORG_ID
    );
    let comment = json!({ "type": "Comment", "action": "create", "organizationId": LINEAR_ORG_ID,
        "webhookTimestamp": chrono::Utc::now().timestamp_millis(),
        "data": { "body": "@openhands estimate", "userId": "linear-alice", "issueId": "issue-uuid-7",
                  "issue": { "identifier": "ENG-7", "title": "Login" } } })
    .to_string()
    .into_bytes();
    let headers = vec![
        ("linear-signature", hmac_sha256_hex(b"linear-ws-secret", &comment)),
        ("linear-delivery", "w-4".to_owned()),
        ("linear-event", "Comment".to_owned()),
    ];
    assert_eq!(post("/integration/linear/events", &comment, headers).await.status, 200);

    let posts = wait_for("three answers", || {
        let p = site.providers.posts();
        (p.len() >= 3).then_some(p)
    })
    .await;
    let find = |who: &str| posts.iter().find(|p| p.0 == who).unwrap_or_else(|| panic!("{who}: {posts:#?}"));
    assert_eq!(find("jira-workspace").1, "OPS-9");
    assert!(
        find("jira-workspace").2.starts_with("Echo: ") && find("jira-workspace").2.contains("triage"),
        "{posts:#?}"
    );
    assert_eq!(find("jira_dc-workspace").1, "OPS-9");
    assert_eq!(find("linear-workspace").1, "issue-uuid-7");
    assert!(find("linear-workspace").2.contains("estimate"), "{posts:#?}");

    // Secrets are sealed at rest.
    let mut conn = site.db.connect().await;
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT webhook_secret, svc_acc_api_key FROM integration_workspaces")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(stored.len(), 3);
    for (secret, key) in &stored {
        assert!(secret.starts_with("v1.") && key.starts_with("v1."), "{stored:?}");
        assert!(!secret.contains("ws-secret") && !key.contains("ws-"), "{stored:?}");
    }

    // The admin leaving turns the workspace off: nobody is linked, deliveries are ignored.
    let r = host.send(host.http.post(host.url("/integration/jira/workspaces/unlink")).bearer_auth(ALICE)).await;
    assert_eq!(r.json(), json!({ "success": true }));
    assert_eq!(get("/integration/jira/workspaces/link", BOB).await.status, 404);
    assert_eq!(get(&format!("/integration/jira/workspaces/validate/{JIRA_SITE}"), BOB).await.status, 404);
    let r = post("/integration/jira/events", &cloud, signed("jira-ws-secret", &cloud, "w-5")).await;
    assert_eq!(r.json()["status"], "ignored", "{}", r.text);
    let r = host.send(host.http.post(host.url("/integration/jira/workspaces/unlink")).bearer_auth(ALICE)).await;
    assert_eq!(r.status, 404, "{}", r.text);
    // Each registration, link and unlink is in the audit log, with no secret in it.
    let log = audit(&site.db).await;
    let actions: Vec<(&str, &str)> =
        log.iter().filter(|r| r.2.starts_with("workspace_")).map(|r| (r.0.as_str(), r.2.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("jira", "workspace_registered"),
            ("jira", "workspace_linked"),
            ("jira_dc", "workspace_registered"),
            ("linear", "workspace_registered"),
            ("jira", "workspace_deactivated"),
        ]
    );
    let text = format!("{log:?}");
    assert!(!text.contains("jira-ws-secret") && !text.contains(WS_JIRA_KEY), "{text}");

    // A new master key (the old one kept as previous): the secrets are re-sealed on request,
    // and a host with the new key alone reads them (the hosts that had the old one alone do not).
    let rotated = sources.replace("integrations-master-key-0123456789", "integrations-new-master-key-9876543210");
    let previous = [("OH_PREVIOUS_MASTER_KEYS", "integrations-master-key-0123456789")];
    let (_d2, during) = site.host_with_env(&format!("workers = 0, {rotated}"), &previous).await;
    let report = during
        .send(during.http.post(format!("{}/internal/integrations/rotate-keys", during.admin.as_ref().unwrap())))
        .await;
    assert_eq!(
        report.json(),
        json!({ "rotated": { "workspaces": 3, "gitlab_webhooks": 0, "slack_teams": 0 } }),
        "{}",
        report.text
    );
    drop(during);
    let (_d3, after) = site.host(&format!("workers = 0, {rotated}")).await;
    let valid =
        after.send(after.http.get(after.url("/integration/linear/workspaces/validate/acme")).bearer_auth(ALICE)).await;
    assert_eq!(valid.status, 200, "{}", valid.text);
    let r = after
        .send(
            after
                .http
                .post(after.url("/integration/jira/events"))
                .header("content-type", "application/json")
                .headers(reqwest::header::HeaderMap::from_iter(
                    signed("jira-ws-secret", &cloud, "w-r")
                        .into_iter()
                        .map(|(k, v)| (reqwest::header::HeaderName::from_static(k), v.parse().unwrap())),
                ))
                .body(cloud.clone()),
        )
        .await;
    assert_eq!(r.json()["status"], "ignored", "the switched-off workspace's secret opens: {}", r.text);
    drop(after);
}

/// A GitLab note delivery with `token`, naming the installed webhook `hook` if given.
async fn gitlab_note(host: &TestHost, body: &[u8], token: &str, hook: Option<&str>, uuid: &str) -> oh_e2e::Response {
    let mut req = host
        .http
        .post(host.url("/integration/gitlab/events"))
        .header("content-type", "application/json")
        .header("x-gitlab-token", token)
        .header("x-gitlab-event", "Note Hook")
        .header("x-gitlab-event-uuid", uuid)
        .body(body.to_vec());
    if let Some(hook) = hook {
        req = req.header("x-openhands-webhook-id", hook);
    }
    host.send(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_installs_a_gitlab_webhook_that_has_its_own_secret() {
    let site = Site::new().await;
    let api = &site.providers.base_url;
    // No deployment-wide GitLab secret: only webhooks installed here are accepted.
    let gitlab = format!(
        "master_key = \"integrations-master-key-0123456789\", \
         gitlab = {{ enabled = \"1\", api_url = \"{api}\", token = \"{GITLAB_TOKEN}\" }}, "
    );
    let (_d, host) = site.host(&gitlab).await;
    site.alice(&host).await;
    let admin = host.admin.clone().unwrap();
    let link = json!({ "provider": "gitlab", "external_id": "dana-gl", "user_id": "alice" });
    assert_eq!(host.send(host.http.post(format!("{admin}/internal/integrations/links")).json(&link)).await.status, 200);
    let hooks = host.url("/api/integrations/gitlab/webhooks");
    let install =
        |project: Value| host.send(host.http.post(&hooks).bearer_auth(ALICE).json(&json!({ "project": project })));

    // Without a GitLab token of hers there is nothing to install it with.
    let r = install(json!("grp/app")).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let tokens = json!({ "provider_tokens": { "gitlab": { "token": GITLAB_USER_TOKEN } } });
    let r = host.send(host.http.post(host.url("/api/add-git-providers")).bearer_auth(ALICE).json(&tokens)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(install(json!("nobody/else")).await.status, 404);
    assert_eq!(install(json!({ "x": 1 })).await.status, 422);
    let r = install(json!("grp/app")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let installed = r.json();
    let id = installed["id"].as_str().unwrap().to_owned();
    assert_eq!((installed["project_id"].as_i64(), installed["project"].as_str()), (Some(5), Some("grp/app")));
    let at_gitlab = site.providers.hooks();
    assert_eq!(at_gitlab.len(), 1);
    let sent = &at_gitlab[0].2;
    assert_eq!(sent["url"], "https://app.example.test/integration/gitlab/events");
    assert_eq!(sent["note_events"], true);
    assert_eq!(sent["custom_headers"], json!([{ "key": "X-OpenHands-Webhook-Id", "value": id }]));
    let secret = sent["token"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    assert_eq!(install(json!(5)).await.status, 409, "one webhook per project");
    let listed = host.send(host.http.get(&hooks).bearer_auth(ALICE)).await;
    assert_eq!(listed.json()["webhooks"][0]["id"], id.as_str());
    assert!(!listed.text.contains(&secret), "{}", listed.text);
    assert_eq!(host.send(host.http.get(&hooks).bearer_auth(BOB)).await.json()["webhooks"], json!([]));

    // Deliveries of that webhook are checked against its secret alone.
    let note = json!({
        "object_kind": "note", "user": { "username": "dana-gl" }, "project": { "id": 5, "path_with_namespace": "grp/app" },
        "object_attributes": { "note": "@openhands look at this", "noteable_type": "Issue" },
        "issue": { "iid": 8, "title": "Crash", "description": "" },
    })
    .to_string()
    .into_bytes();
    assert_eq!(gitlab_note(&host, &note, "wrong", Some(&id), "u-1").await.status, 403);
    assert_eq!(
        gitlab_note(&host, &note, &secret, None, "u-2").await.status,
        403,
        "no deployment-wide secret to fall back on"
    );
    assert_eq!(gitlab_note(&host, &note, &secret, Some("0123456789abcdef0123456789abcdef"), "u-3").await.status, 403);
    let r = gitlab_note(&host, &note, &secret, Some(&id), "u-4").await;
    assert_eq!(r.json()["status"], "accepted", "{}", r.text);
    let posts = wait_for("the note", || {
        let p = site.providers.posts();
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(posts[0].1, "5/issues/8");
    assert!(posts[0].2.contains("look at this"), "{posts:?}");

    // Sealed at rest, and re-sealed when the master key changes: a host with the new key
    // (the old one kept as previous) still checks deliveries, and re-seals on request; then
    // the old key is not needed any more.
    let mut conn = site.db.connect().await;
    let sealed = "SELECT webhook_secret FROM gitlab_webhooks";
    let stored: String = sqlx::query_scalar(sealed).fetch_one(&mut conn).await.unwrap();
    assert!(stored.starts_with("v1.") && !stored.contains(&secret));
    let rotated = gitlab.replace("integrations-master-key-0123456789", "integrations-new-master-key-9876543210");
    let previous = [("OH_PREVIOUS_MASTER_KEYS", "integrations-master-key-0123456789")];
    let (_d2, during) = site.host_with_env(&format!("workers = 0, {rotated}"), &previous).await;
    // Each a new note (the same body again would be a duplicate, whatever its id).
    let again = |n: &str| {
        String::from_utf8(note.clone()).unwrap().replace("look at this", &format!("look at this {n}")).into_bytes()
    };
    let r = gitlab_note(&during, &again("r1"), &secret, Some(&id), "u-r1").await;
    assert_eq!(r.json()["status"], "accepted", "the old key still opens the secret: {}", r.text);
    let report = during
        .send(during.http.post(format!("{}/internal/integrations/rotate-keys", during.admin.as_ref().unwrap())))
        .await;
    assert_eq!(
        report.json(),
        json!({ "rotated": { "workspaces": 0, "gitlab_webhooks": 1, "slack_teams": 0 } }),
        "{}",
        report.text
    );
    let resealed: String = sqlx::query_scalar(sealed).fetch_one(&mut conn).await.unwrap();
    assert_ne!(resealed.split('.').nth(1), stored.split('.').nth(1), "sealed with the new key");
    drop(during);
    let (_d3, after) = site.host(&format!("workers = 0, {rotated}")).await;
    let r = gitlab_note(&after, &again("r2"), &secret, Some(&id), "u-r2").await;
    assert_eq!(r.json()["status"], "accepted", "only the new key is needed now: {}", r.text);
    drop(after);

    // Removed at GitLab and here.
    let bobs = host.send(host.http.delete(format!("{hooks}/{id}")).bearer_auth(BOB)).await;
    assert_eq!(bobs.status, 404, "not Bob's: {}", bobs.text);
    let r = host.send(host.http.delete(format!("{hooks}/{id}")).bearer_auth(ALICE)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(site.providers.hooks().is_empty());
    assert_eq!(gitlab_note(&host, &note, &secret, Some(&id), "u-5").await.status, 403);
    let log = audit(&site.db).await;
    let kept: Vec<&str> = log
        .iter()
        .filter(|r| ["webhook_installed", "webhook_removed", "keys_rotated"].contains(&r.2.as_str()))
        .map(|r| r.2.as_str())
        .collect();
    assert_eq!(kept, ["webhook_installed", "keys_rotated", "webhook_removed"]);
    assert!(!format!("{log:?}").contains(&secret), "no secret in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_user_links_by_signing_in_with_slack_and_is_told_where_when_unlinked() {
    let site = Site::new().await;
    let api = &site.providers.base_url;
    let source = format!(
        "slack = {{ enabled = \"true\", webhook_secret = \"{SLACK_SECRET}\", api_url = \"{api}\", bot_token = \"{SLACK_BOT_TOKEN}\", \
         oauth_client_id = \"{OAUTH_CLIENT_ID}\", oauth_client_secret = \"{OAUTH_CLIENT_SECRET}\", oauth_url = \"{api}\" }}, "
    );
    let (_d, host) = site.host_with_slack(&source).await;
    site.alice(&host).await;
    let mention = |event_id: &str, user: &str, ts: &str| {
        json!({ "type": "event_callback", "event_id": event_id, "team_id": "T_ACME",
                "event": { "type": "app_mention", "user": user, "channel": "C1", "ts": ts, "text": "<@UBOT> summarize the incident" } })
    };

    // Someone unlinked mentions the bot: told, in the thread, where to sign in with Slack.
    let now = chrono::Utc::now().timestamp();
    assert_eq!(slack(&host, &mention("Ev1", "U_NEWCOMER", "1700000001.000100"), now).await.status, 200);
    let told = wait_for("the note", || site.providers.messages().first().cloned()).await;
    assert!(told.2.contains("https://app.example.test/slack/link"), "{told:?}");

    // They sign in to OpenHands (Alice's key here), then with Slack: linked.
    site.providers.sign_in("slack", "U_NEWCOMER");
    assert_eq!(
        host.send(oauth_client().get(host.url("/slack/link"))).await.status,
        401,
        "signed in to OpenHands first"
    );
    let start = host.send(oauth_client().get(host.url("/slack/link")).bearer_auth(ALICE)).await;
    assert_eq!(start.status, 302, "{}", start.text);
    let to_slack = start.headers["location"].to_str().unwrap().to_owned();
    assert!(to_slack.starts_with(&format!("{api}/openid/connect/authorize?")), "{to_slack}");
    let consent = oauth_client().get(&to_slack).send().await.unwrap();
    let back = callback_path(&consent);
    assert!(back.starts_with("/slack/link/callback?"), "{back}");
    let done = host.send(oauth_client().get(host.url(&back)).bearer_auth(ALICE)).await;
    assert_eq!(done.status, 302, "{}", done.text);
    assert_eq!(done.headers["location"], "/settings/integrations");
    let again = host.send(oauth_client().get(host.url(&back)).bearer_auth(ALICE)).await;
    assert_eq!(again.status, 400, "a state works once: {}", again.text);

    // Their next mention works for Alice.
    assert_eq!(slack(&host, &mention("Ev2", "U_NEWCOMER", "1700000002.000200"), now).await.status, 200);
    let answer = wait_for("the answer", || {
        site.providers.messages().into_iter().find(|m| m.1 == "1700000002.000200" && m.2.starts_with("Echo: "))
    })
    .await;
    assert!(answer.2.contains("summarize the incident"), "{answer:?}");
    let list = host.send(host.http.get(host.url("/api/conversations")).bearer_auth(ALICE)).await.json();
    assert_eq!(list["results"].as_array().unwrap().len(), 1, "{list}");
    let linked =
        audit(&site.db).await.into_iter().find(|r| r.2 == "linked" && r.3["external_id"] == "U_NEWCOMER").unwrap();
    assert_eq!((&linked.3["external_id"], &linked.3["through"]), (&json!("U_NEWCOMER"), &json!("sign in with Slack")));
}

/// A signed body replayed under new delivery ids (the id is not signed) is one delivery; a
/// flood of forged requests neither uses up the rate limit of real deliveries nor writes an
/// audit row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_forgery_floods_start_nothing_and_crowd_out_nothing() {
    let site = Site::new().await;
    let (_d, host) = site.host("rate_limit_per_minute = 20, ").await;
    site.alice(&host).await;
    let body = issue_comment("alice-gh", "@OpenHands once, please");
    let first = github(&host, "gh-replay-0", &body, github_signature(&body)).await;
    assert_eq!(first.json()["status"], "accepted", "{}", first.text);
    for i in 1..=3 {
        let r = github(&host, &format!("gh-replay-{i}"), &body, github_signature(&body)).await;
        assert_eq!((r.status, r.json()["status"].clone()), (200, json!("duplicate")), "{}", r.text);
    }
    let forged = Some(format!("sha256={}", hmac_sha256_hex(b"not-the-secret", &body)));
    for i in 0..60 {
        let r = github(&host, &format!("gh-flood-{i}"), &body, forged.clone()).await;
        assert_eq!(r.status, 403, "{}", r.text);
    }
    let other = issue_comment("alice-gh", "@OpenHands and this one too");
    let real = github(&host, "gh-after-flood", &other, github_signature(&other)).await;
    assert_eq!((real.status, real.json()["status"].clone()), (200, json!("accepted")), "{}", real.text);
    wait_for("both answers", || (site.providers.comments().len() == 2).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(site.providers.comments().len(), 2, "{:#?}", site.providers.comments());
    let list = host.send(host.http.get(host.url("/api/conversations")).bearer_auth(ALICE)).await.json();
    assert_eq!(list["results"].as_array().unwrap().len(), 2, "{list}");
    let refused = audit(&site.db).await.into_iter().filter(|e| e.2 == "refused").count();
    assert!(refused <= 2, "{refused} audit rows for 60 refusals");
}

/// A Slack workspace installs the app (OAuth v2) from a signed-in OpenHands session; its bot
/// token is kept sealed, and replies in its channels go out with that token (the deployment
/// has none of its own here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_workspace_installs_the_app_and_its_replies_use_its_own_token() {
    let site = Site::new().await;
    let api = &site.providers.base_url;
    // (A master key seals the workspaces' tokens.)
    let source = format!(
        "master_key = \"integrations-master-key-0123456789\", slack = {{ enabled = \"true\", webhook_secret = \"{SLACK_SECRET}\", api_url = \"{api}\", \
         oauth_client_id = \"{OAUTH_CLIENT_ID}\", oauth_client_secret = \"{OAUTH_CLIENT_SECRET}\", oauth_url = \"{api}\" }}, "
    );
    let (_d, host) = site.host_with_slack(&source).await;
    site.alice(&host).await;

    assert_eq!(host.send(oauth_client().get(host.url("/slack/install"))).await.status, 401, "signed in first");
    let start = host.send(oauth_client().get(host.url("/slack/install")).bearer_auth(ALICE)).await;
    assert_eq!(start.status, 302, "{}", start.text);
    let to_slack = start.headers["location"].to_str().unwrap().to_owned();
    assert!(to_slack.starts_with(&format!("{api}/oauth/v2/authorize?")), "{to_slack}");
    assert!(to_slack.contains("scope=app_mentions%3Aread%2Cchat%3Awrite"), "{to_slack}");
    let consent = oauth_client().get(&to_slack).send().await.unwrap();
    let back = callback_path(&consent);
    assert!(back.starts_with("/slack/install-callback?"), "{back}");
    let done = host.send(oauth_client().get(host.url(&back)).bearer_auth(ALICE)).await;
    assert_eq!(done.status, 302, "{}", done.text);
    assert_eq!(done.headers["location"], "/settings/integrations?slack=installed");
    let again = host.send(oauth_client().get(host.url(&back)).bearer_auth(ALICE)).await;
    assert_eq!(again.status, 400, "a state works once: {}", again.text);

    // Kept sealed, never in the clear.
    let mut conn = site.db.connect().await;
    let (team, sealed, by): (String, String, String) =
        sqlx::query_as("SELECT team_id, bot_token, installed_by FROM slack_teams").fetch_one(&mut conn).await.unwrap();
    assert_eq!((team.as_str(), by.as_str()), ("T_ACME", "alice"));
    assert!(sealed.starts_with("v1.") && !sealed.contains("xoxb"), "{sealed}");

    // Alice mentions the bot in that workspace: answered with the workspace's own token.
    let mention = json!({ "type": "event_callback", "event_id": "EvT1", "team_id": "T_ACME",
                          "event": { "type": "app_mention", "user": "U_ALICE", "channel": "C1", "ts": "1700000009.000100",
                                     "text": "<@UBOT> summarize the incident" } });
    assert_eq!(slack(&host, &mention, chrono::Utc::now().timestamp()).await.status, 200);
    wait_for("the answer", || {
        site.providers.messages().into_iter().find(|m| m.1 == "1700000009.000100" && m.2.starts_with("Echo: "))
    })
    .await;
    let tokens = site.providers.slack_message_tokens();
    assert!(!tokens.is_empty() && tokens.iter().all(|t| t.starts_with("xoxb-team-T_ACME-")), "{tokens:?}");
}

/// The GitHub App's install link: a signed-in user installs the App at GitHub and comes back
/// to its Setup URL; the installation, checked with GitHub as the App, is linked to them. A
/// made-up installation id, or a state used twice, links nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_installs_the_github_app_through_its_install_link() {
    let site = Site::new().await;
    let api = &site.providers.base_url;
    let d = Deployment::new();
    d.install_bundled();
    let profile = profile(&site.db.url, api, "workers = 0, ").replacen(
        "app_id = \"",
        &format!(
            "app_slug = \"openhands-app\", web_url = \"{api}\", oauth_client_id = \"{OAUTH_CLIENT_ID}\", \
             oauth_client_secret = \"{OAUTH_CLIENT_SECRET}\", app_id = \""
        ),
        1,
    );
    d.write_profile("app_mode = \"saas\"\n", &profile);
    let host = d.start();
    host.wait_ready().await;
    // The App's Setup URL, as registered at GitHub: this site's public address.
    site.providers.set_github_setup_url("https://app.example.test/integration/github/install-callback");

    assert_eq!(host.send(oauth_client().get(host.url("/integration/github/install"))).await.status, 401);
    let start = host.send(oauth_client().get(host.url("/integration/github/install")).bearer_auth(ALICE)).await;
    assert_eq!(start.status, 302, "{}", start.text);
    let to_github = start.headers["location"].to_str().unwrap().to_owned();
    assert!(to_github.starts_with(&format!("{api}/apps/openhands-app/installations/new?state=")), "{to_github}");
    let installed = oauth_client().get(&to_github).send().await.unwrap();
    let back = callback_path(&installed);
    assert!(
        back.starts_with("/integration/github/install-callback?installation_id=4201&setup_action=install"),
        "{back}"
    );
    let done = host.send(oauth_client().get(host.url(&back)).bearer_auth(ALICE)).await;
    assert_eq!(done.status, 302, "{}", done.text);
    assert_eq!(done.headers["location"], "/settings/integrations?github=installed");
    let again = host.send(oauth_client().get(host.url(&back)).bearer_auth(ALICE)).await;
    assert_eq!(again.status, 400, "a state works once: {}", again.text);

    let list = host.send(host.http.get(host.url("/api/integrations/github/installations")).bearer_auth(ALICE)).await;
    assert_eq!(
        list.json(),
        json!({ "installations": [{ "installation_id": 4201, "account": "acme", "account_type": "Organization" }] })
    );
    let bobs = host.send(host.http.get(host.url("/api/integrations/github/installations")).bearer_auth(BOB)).await;
    assert_eq!(bobs.json(), json!({ "installations": [] }));

    // An installation GitHub does not know (a forged Setup URL): refused, nothing linked.
    let start = host.send(oauth_client().get(host.url("/integration/github/install")).bearer_auth(BOB)).await;
    let state = start.headers["location"].to_str().unwrap().rsplit("state=").next().unwrap().to_owned();
    let forged = format!("/integration/github/install-callback?installation_id=999&setup_action=install&state={state}");
    let refused = host.send(oauth_client().get(host.url(&forged)).bearer_auth(BOB)).await;
    assert_eq!(refused.status, 404, "{}", refused.text);
    let bobs = host.send(host.http.get(host.url("/api/integrations/github/installations")).bearer_auth(BOB)).await;
    assert_eq!(bobs.json(), json!({ "installations": [] }));

    // The web client links straight to GitHub's page (no state): GitHub's `code` proves the
    // GitHub user who installed it can reach the installation.
    let direct = oauth_client().get(format!("{api}/apps/openhands-app/installations/new")).send().await.unwrap();
    let back = callback_path(&direct);
    assert!(!back.contains("state="), "{back}");
    let done = host.send(oauth_client().get(host.url(&back)).bearer_auth(BOB)).await;
    assert_eq!(done.status, 302, "{}", done.text);
    let bobs = host.send(host.http.get(host.url("/api/integrations/github/installations")).bearer_auth(BOB)).await;
    assert_eq!(bobs.json()["installations"].as_array().unwrap().len(), 1, "{}", bobs.text);
    let replayed = host.send(oauth_client().get(host.url(&back)).bearer_auth(BOB)).await;
    assert_eq!(replayed.status, 400, "a code works once: {}", replayed.text);
    // A real code, but for an installation its GitHub user cannot reach: refused.
    let direct = oauth_client().get(format!("{api}/apps/openhands-app/installations/new")).send().await.unwrap();
    let code = callback_path(&direct).rsplit("code=").next().unwrap().to_owned();
    let other = format!("/integration/github/install-callback?installation_id=4201&setup_action=install&code={code}");
    let elsewhere = host.send(oauth_client().get(host.url(&other.replace("4201", "777")))).await;
    assert_eq!(elsewhere.status, 401, "signed in first: {}", elsewhere.text);
    let refused = host.send(oauth_client().get(host.url(&other.replace("4201", "777"))).bearer_auth(BOB)).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    let neither = "/integration/github/install-callback?installation_id=4201&setup_action=install";
    assert_eq!(host.send(oauth_client().get(host.url(neither)).bearer_auth(BOB)).await.status, 400);
}
