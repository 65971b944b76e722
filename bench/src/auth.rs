//! Section 5: the cost of authentication on a cheap authenticated route.

use crate::common::*;
use std::path::Path;

/// Section 5: the cost of authentication on a cheap authenticated route.
pub(crate) fn auth_load(bin: &Path, oss_profile: &Path, work: &Path, base_profile: &str, db_url: &str) {
    use oh_e2e::oidc::{FakeKeycloak, CLIENT_ID, CLIENT_SECRET, REALM};
    const SERVICE_KEY: &str = "bench-service-key-0123456789";
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    println!("\n5. authenticated GET /api/settings, {HTTP_CONCURRENCY} connections, file stores");
    rt.block_on(async {
        // OSS: single user, no credentials.
        let (mut child, addr) = spawn_host(bin, oss_profile);
        let url = format!("http://{addr}/api/settings");
        let body = serde_json::json!({ "llm_model": "gpt-4o", "language": "en" });
        assert!(reqwest::Client::new().post(&url).json(&body).send().await.unwrap().status().is_success());
        let u = url.clone();
        load(move |c| c.get(&u)).await.row("DefaultUserAuth (no credentials)");
        let _ = child.kill();
        let _ = child.wait();

        let kc = FakeKeycloak::start().await;
        let hash: String = {
            use sha2::Digest as _;
            sha2::Sha256::digest(SERVICE_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
        };
        let config = format!(
            "{{ database_url = \"{db_url}\", rate_limit_per_second = 0, rate_limit_per_minute = 0, keycloak_server_url = \"{}\", \
             keycloak_realm_name = \"{REALM}\", keycloak_client_id = \"{CLIENT_ID}\", keycloak_client_secret = \"{CLIENT_SECRET}\", \
             jwt_secret = \"bench-jwt-secret-0123456789\", web_host = \"http://localhost:3000\", \
             static_keys = [{{ user_id = \"svc\", sha256 = \"{hash}\" }}] }}",
            kc.base
        );
        let saas = format!(
            "{base_profile}[extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\nconfig = {config}\n\
             [[extensions.routes]]\nlibrary = \"saas_auth\"\nimplementation = \"SaasAuthRoutes\"\nconfig = {config}\n"
        );
        let saas_profile = work.join("plugins.auth.toml");
        std::fs::write(&saas_profile, saas).unwrap();
        let (mut child, addr) = spawn_host(bin, &saas_profile);
        let base = format!("http://{addr}");
        let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        // A browser session: login, Keycloak, callback, accept the TOS.
        let start = browser.get(format!("{base}/oauth/keycloak/login")).send().await.unwrap();
        let state = cookie(&start, "oh_oauth_state");
        let at_kc = browser.get(start.headers()["location"].to_str().unwrap()).send().await.unwrap();
        let query = at_kc.headers()["location"].to_str().unwrap().split_once('?').unwrap().1.to_owned();
        let back = browser
            .get(format!("{base}/oauth/keycloak/callback?{query}"))
            .header("cookie", format!("oh_oauth_state={state}"))
            .send()
            .await
            .unwrap();
        let session = cookie(&back, "keycloak_auth");
        let tos = browser.post(format!("{base}/api/accept_tos")).header("cookie", format!("keycloak_auth={session}")).send().await.unwrap();
        let session = cookie(&tos, "keycloak_auth");
        let session_header = format!("keycloak_auth={session}");
        let settings = format!("{base}/api/settings");
        let ok = browser.post(&settings).header("cookie", &session_header).json(&body).send().await.unwrap();
        assert!(ok.status().is_success(), "{}", ok.status());
        let (u, h) = (settings.clone(), session_header.clone());
        let cookie_rate = load(move |c| c.get(&u).header("cookie", &h)).await.tap_row("SaasUserAuth, keycloak_auth cookie").rate();

        // An API key from the database (not the static one), made in the browser session.
        let created: serde_json::Value = browser
            .post(format!("{base}/api/keys"))
            .header("cookie", &session_header)
            .json(&serde_json::json!({ "name": "bench" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = created["key"].as_str().expect("API key created").to_owned();
        let ok = browser.post(&settings).bearer_auth(&key).json(&body).send().await.unwrap();
        assert!(ok.status().is_success());
        let u = settings.clone();
        let key_rate = load(move |c| c.get(&u).bearer_auth(&key)).await.tap_row("SaasUserAuth, API key (PostgreSQL)").rate();
        let share = key_rate / cookie_rate * 100.0;
        target("API-key auth as a share of cookie auth", format!("{share:.0}%"), ">= 80%", share >= 80.0);
        let _ = child.kill();
        let _ = child.wait();
    });
}
