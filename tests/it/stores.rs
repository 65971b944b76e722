//! One store contract, run against the file stores and the PostgreSQL stores through the
//! host's registry (real dlopen), plus what only PostgreSQL does: encryption of raw rows,
//! key rotation, migrations, outages.

use oh_e2e::{pg::TestDb, Deployment};
use oh_host::registry::{Registry, StoreOperation};
use plugin_api::{
    abi_stable::std_types::{RNone, RString},
    models::{ConversationMetadata, CustomSecret, Secrets, Settings},
    CallContext, ErrorCode, EventQuery,
};
use serde_json::json;
use std::sync::Arc;

const MASTER: &str = "test-master-key-0123456789abcdef";

fn ctx(user: Option<&str>) -> CallContext {
    CallContext { user_id: user.map(RString::from).into(), ..Default::default() }
}

fn registry(d: &Deployment, stores: &str) -> Arc<Registry> {
    d.write_profile("", stores);
    let text = std::fs::read_to_string(d.profile_path()).unwrap();
    let config =
        oh_host::config::parse(&d.profile_path(), &text, &|k| std::env::var(k).ok()).unwrap_or_else(|e| panic!("{e}"));
    Registry::build(&config, tokio::runtime::Handle::current()).unwrap_or_else(|e| panic!("{e}"))
}

fn pg_stores(url: &str, master: &str, previous: &[&str]) -> String {
    let config =
        format!("{{ database_url = \"{url}\", master_key = \"{master}\", previous_master_keys = {previous:?} }}");
    format!(
        "[extensions.settings_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSettingsStore\"\nconfig = {config}\n\
         [extensions.secrets_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSecretsStore\"\nconfig = {config}\n\
         [extensions.conversation_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasConversationStore\"\nconfig = {config}\n"
    )
}

fn metadata(id: &str, day: u32) -> ConversationMetadata {
    ConversationMetadata {
        conversation_id: id.into(),
        created_at: format!("2025-01-{day:02}T00:00:00.000000Z"),
        title: Some(format!("t-{id}")),
        ..Default::default()
    }
}

fn q(start: u64, limit: u32) -> EventQuery {
    EventQuery { start_id: start, end_id: RNone, reverse: false, limit }
}

/// What every settings store must do: absent, stored, read back whole (secrets included),
/// per user; versions that refuse a stale writer.
async fn settings_contract(r: &Arc<Registry>) {
    let (a, b, single) = (|| ctx(Some("alice")), || ctx(Some("bob")), || ctx(None));
    assert_eq!(r.load_settings(a()).await.unwrap(), None);
    let s = Settings {
        llm_model: Some("m".into()),
        llm_api_key: Some("sk-alice-1".into()),
        language: Some("en".into()),
        ..Default::default()
    };
    r.store_settings(a(), &s).await.unwrap();
    assert_eq!(r.load_settings(a()).await.unwrap(), Some(s.clone()));
    assert_eq!(r.load_settings(b()).await.unwrap(), None, "bob must not see alice's settings");
    let s2 = Settings { llm_api_key: None, ..s.clone() };
    r.store_settings(a(), &s2).await.unwrap();
    assert_eq!(r.load_settings(a()).await.unwrap(), Some(s2.clone()), "store replaces the document");
    r.store_settings(single(), &s).await.unwrap();
    assert_eq!(r.load_settings(single()).await.unwrap(), Some(s.clone()));

    // Versions: the stored one is the one to name; a writer naming an older one is refused.
    let carol = || ctx(Some("carol"));
    assert_eq!(r.load_settings_versioned(carol()).await.unwrap(), None);
    let v1 = r.store_settings_versioned(carol(), &s, 0).await.unwrap();
    let stale = r.store_settings_versioned(carol(), &s, 0).await.unwrap_err();
    assert_eq!(stale.error.code, ErrorCode::CONFLICT, "{stale}");
    let v2 = r.store_settings_versioned(carol(), &s2, v1).await.unwrap();
    assert!(v2 > v1);
    let stored = r.load_settings_versioned(carol()).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.settings), (v2, s2));
}

/// What every implementation of the three stores must do.
async fn contract(r: &Arc<Registry>) {
    let (a, b) = (|| ctx(Some("alice")), || ctx(Some("bob")));
    settings_contract(r).await;

    // Secrets.
    let mut secrets = Secrets::default();
    secrets
        .custom_secrets
        .insert("K".into(), CustomSecret { secret: "alice-secret-2".into(), description: "d".into() });
    r.store_secrets(a(), &secrets).await.unwrap();
    assert_eq!(r.load_secrets(a()).await.unwrap(), Some(secrets.clone()));
    assert_eq!(r.load_secrets(b()).await.unwrap(), None);

    // Conversations: newest first, paged, per user.
    for (id, day) in [("a1", 1), ("a2", 2), ("a3", 3)] {
        r.save_metadata(a(), &metadata(id, day)).await.unwrap();
    }
    r.save_metadata(b(), &metadata("b1", 4)).await.unwrap();
    let page = r.search_conversations(a(), None, 2).await.unwrap();
    let ids: Vec<_> = page.results.iter().map(|m| m.conversation_id.as_str()).collect();
    assert_eq!(ids, ["a3", "a2"]);
    let next = r.search_conversations(a(), page.next_page_id.as_deref(), 2).await.unwrap();
    assert_eq!(next.results.iter().map(|m| m.conversation_id.as_str()).collect::<Vec<_>>(), ["a1"]);
    assert_eq!(next.next_page_id, None);
    let bobs = r.search_conversations(b(), None, 20).await.unwrap();
    assert_eq!(bobs.results.iter().map(|m| m.conversation_id.as_str()).collect::<Vec<_>>(), ["b1"]);

    // Bob can neither read, change nor delete alice's conversation or its events.
    assert_eq!(r.get_metadata(b(), "a1").await.unwrap(), None);
    assert!(!r.delete_metadata(b(), "a1").await.unwrap());
    let err = r.append_events(b(), "a1", &[json!({ "x": 1 })], None).await.unwrap_err();
    assert_eq!(err.error.code, ErrorCode::NOT_FOUND);
    assert_eq!(r.get_events(b(), "a1", q(0, 10)).await.unwrap_err().error.code, ErrorCode::NOT_FOUND);
    let mut hijack = metadata("a1", 9);
    hijack.title = Some("hijacked".into());
    let _ = r.save_metadata(b(), &hijack).await; // may create bob's own, may be refused
    assert_eq!(r.get_metadata(a(), "a1").await.unwrap().unwrap().title.as_deref(), Some("t-a1"));

    // Events: dense ids across appends, paged.
    assert_eq!(r.append_events(a(), "a1", &[json!({ "m": 0 }), json!({ "m": 1 })], None).await.unwrap(), 0);
    assert_eq!(r.append_events(a(), "a1", &[json!({ "m": 2 })], None).await.unwrap(), 2);
    let page = r.get_events(a(), "a1", q(1, 1)).await.unwrap();
    assert_eq!((page.events[0]["id"].as_u64(), page.events[0]["m"].as_u64(), page.has_more), (Some(1), Some(1), true));
    let all = r.get_events(a(), "a1", q(0, 100)).await.unwrap();
    assert_eq!(all.events.iter().map(|e| e["id"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(!all.has_more);
    assert_eq!(r.append_events(a(), "nope", &[json!({})], None).await.unwrap_err().error.code, ErrorCode::NOT_FOUND);

    // Fencing: an owner's token is recorded with its append; a lower one is refused and
    // writes nothing; unfenced appends (a user's message from another node) still go in.
    assert_eq!(r.append_events(a(), "a1", &[json!({ "owner": 5 })], Some(5)).await.unwrap(), 3);
    assert_eq!(r.append_events(a(), "a1", &[json!({ "owner": 5 })], Some(5)).await.unwrap(), 4);
    assert_eq!(r.append_events(a(), "a1", &[json!({ "owner": 7 })], Some(7)).await.unwrap(), 5);
    let stale = r.append_events(a(), "a1", &[json!({ "owner": 5 })], Some(5)).await.unwrap_err();
    assert_eq!(stale.error.code, ErrorCode::CONFLICT, "{stale}");
    assert!(stale.error.message.as_str().contains("token 7"), "{stale}");
    assert_eq!(r.append_events(a(), "a1", &[json!({ "user": true })], None).await.unwrap(), 6);
    let owners: Vec<_> =
        r.get_events(a(), "a1", q(3, 100)).await.unwrap().events.iter().map(|e| e["owner"].clone()).collect();
    assert_eq!(owners, [json!(5), json!(5), json!(7), json!(null)], "dense, nothing from the stale owner");
    // Racing owners: of appends from tokens 8 and 9 interleaved, none of 8's lands after 9's.
    let (r8, r9) = (r.clone(), r.clone());
    let eight = tokio::spawn(async move {
        let mut landed = Vec::new();
        for _ in 0..20 {
            if let Ok(id) = r8.append_events(a(), "a1", &[json!({ "owner": 8 })], Some(8)).await {
                landed.push(id);
            }
        }
        landed
    });
    let nine = tokio::spawn(async move {
        let mut landed = Vec::new();
        for _ in 0..20 {
            landed.push(r9.append_events(a(), "a1", &[json!({ "owner": 9 })], Some(9)).await.unwrap());
        }
        landed
    });
    let (eight, nine) = (eight.await.unwrap(), nine.await.unwrap());
    assert!(eight.iter().all(|e| e < nine.iter().min().unwrap()), "8 wrote {eight:?} after 9 began at {nine:?}");

    // Delete takes the events with it.
    assert!(r.delete_metadata(a(), "a1").await.unwrap());
    assert_eq!(r.get_metadata(a(), "a1").await.unwrap(), None);
    assert_eq!(r.get_events(a(), "a1", q(0, 10)).await.unwrap_err().error.code, ErrorCode::NOT_FOUND);
    assert!(!r.delete_metadata(a(), "a1").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_stores_honour_the_store_contract() {
    let d = Deployment::new();
    d.install_bundled();
    let r = registry(&d, "");
    contract(&r).await;
}

/// The three file stores, each in a runner of its own (`isolation = "process"`), the settings
/// store's in the sandbox too (`sandbox = true`: bubblewrap, only the state directory writable).
const ISOLATED_FILE_STORES: &str = "[extensions.settings_store]\nlibrary = \"file_stores\"\nimplementation = \"FileSettingsStore\"\nisolation = \"process\"\nsandbox = true\n\
     [extensions.secrets_store]\nlibrary = \"file_stores\"\nimplementation = \"FileSecretsStore\"\nisolation = \"process\"\n\
     [extensions.conversation_store]\nlibrary = \"file_stores\"\nimplementation = \"FileConversationStore\"\nisolation = \"process\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_file_stores_honour_the_store_contract() {
    let d = Deployment::new();
    d.install_bundled();
    let r = registry(&d, ISOLATED_FILE_STORES);
    contract(&r).await;
    r.shutdown(std::time::Duration::from_secs(2)).await;
}

/// `examples/python-settings-store`: a store in another language, speaking the protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_settings_store_honours_the_settings_contract() {
    let d = Deployment::new();
    d.install_bundled();
    let script = oh_e2e::workspace().join("examples/python-settings-store/settings_store.py");
    let entry = format!(
        "[extensions.settings_store]\nisolation = \"process\"\ncommand = [\"python3\", \"{}\"]\nimplementation = \"PythonSettingsStore\"\n",
        script.display()
    );
    let r = registry(&d, &entry);
    settings_contract(&r).await;
    // Its files are where it says, one per user.
    assert!(d.state_dir().join("python-settings/single-user.json").is_file());
    r.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_honour_the_store_contract() {
    let db = TestDb::create().await;
    let d = Deployment::new();
    d.install_bundled();
    let r = registry(&d, &pg_stores(&db.url, MASTER, &[]));
    contract(&r).await;
    // The migrations were applied to the empty database, once.
    let mut conn = db.connect().await;
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version").fetch_all(&mut conn).await.unwrap();
    assert_eq!(versions, all_migrations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_rows_hold_no_plaintext_and_do_not_move_between_users() {
    let db = TestDb::create().await;
    let d = Deployment::new();
    d.install_bundled();
    let r = registry(&d, &pg_stores(&db.url, MASTER, &[]));
    let alice = || ctx(Some("alice"));
    r.store_settings(alice(), &Settings { llm_api_key: Some("sk-raw-plaintext-7".into()), ..Default::default() })
        .await
        .unwrap();
    let mut secrets = Secrets::default();
    secrets
        .custom_secrets
        .insert("TOKEN".into(), CustomSecret { secret: "raw-secret-value-8".into(), description: String::new() });
    r.store_secrets(alice(), &secrets).await.unwrap();

    let mut conn = db.connect().await;
    let mut dump = Vec::new();
    for table in ["user_settings", "user_secrets", "user_custom_secrets", "user_provider_tokens"] {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM (SELECT * FROM {table}) t"))
                .fetch_all(&mut conn)
                .await
                .unwrap();
        dump.extend(rows);
    }
    assert_eq!(dump.len(), 2, "{dump:?}");
    for secret in ["sk-raw-plaintext-7", "raw-secret-value-8"] {
        assert!(dump.iter().all(|row| !row.contains(secret)), "{secret} found in a raw row: {dump:?}");
    }

    // A row copied to another user's id, or to another secret's name, does not decrypt there.
    sqlx::query(
        "INSERT INTO user_custom_secrets (user_id, name, sealed) SELECT 'mallory', name, sealed FROM user_custom_secrets WHERE user_id = 'alice'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let err = r.load_secrets(ctx(Some("mallory"))).await.unwrap_err();
    assert!(err.error.message.contains("does not decrypt"), "{}", err.error.message);
    sqlx::query(
        "INSERT INTO user_custom_secrets (user_id, name, sealed) SELECT user_id, 'OTHER', sealed FROM user_custom_secrets WHERE user_id = 'alice'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let err = r.load_secrets(alice()).await.unwrap_err();
    assert!(err.error.message.contains("does not decrypt"), "{}", err.error.message);
    sqlx::query("DELETE FROM user_custom_secrets WHERE name = 'OTHER'").execute(&mut conn).await.unwrap();
    assert_eq!(r.load_secrets(alice()).await.unwrap(), Some(secrets));
}

/// Secrets stored as one sealed document per user (before per-row secrets) stay readable, are
/// split into rows by the next change without losing one, and by `oh-host migrate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_document_secrets_are_split_into_rows_without_losing_any() {
    let db = TestDb::create().await;
    let d = Deployment::new();
    d.install_bundled();
    let r = registry(&d, &pg_stores(&db.url, MASTER, &[]));
    assert_eq!(r.load_secrets(ctx(Some("warmup"))).await.unwrap(), None); // migrations applied
    let keys = pg_common::crypto::Keyring::new(MASTER, &[]).unwrap();
    let mut conn = db.connect().await;
    for user in ["old1", "old2"] {
        let mut doc = Secrets::default();
        for name in ["A", "B"] {
            doc.custom_secrets
                .insert(name.into(), CustomSecret { secret: format!("{user}-{name}"), description: "d".into() });
        }
        doc.provider_tokens.insert(
            "github".into(),
            plugin_api::models::ProviderToken {
                token: Some(format!("ghp-{user}")),
                host: Some("github.com".into()),
                user_id: None,
            },
        );
        let at = pg_common::crypto::Binding { table: "user_secrets", field: "sealed", user_id: user };
        let sealed = keys.seal(&serde_json::to_vec(&doc).unwrap(), &at).unwrap();
        sqlx::query("INSERT INTO user_secrets (user_id, sealed) VALUES ($1, $2)")
            .bind(user)
            .bind(sealed)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let before = r.load_secrets(ctx(Some("old1"))).await.unwrap().unwrap();
    assert_eq!(before.custom_secrets.len(), 2);
    // A change splits the document first: creating an existing name is refused, a new one added.
    let dup = models_change("A");
    assert_eq!(r.update_secrets(ctx(Some("old1")), &dup).await.unwrap_err().error.code, ErrorCode::ALREADY_EXISTS);
    r.update_secrets(ctx(Some("old1")), &models_change("C")).await.unwrap();
    let after = r.load_secrets(ctx(Some("old1"))).await.unwrap().unwrap();
    assert_eq!(after.custom_secrets.keys().collect::<Vec<_>>(), ["A", "B", "C"]);
    assert_eq!(after.custom_secrets["A"].secret, "old1-A");
    assert_eq!(after.provider_tokens["github"].token.as_deref(), Some("ghp-old1"));
    // migrate splits the rest.
    let report = r.operate(StoreOperation::Migrate).await;
    let split: u64 =
        report.iter().filter_map(|(_, r)| r.as_ref().unwrap().as_ref()?["split_secret_documents"].as_u64()).sum();
    assert_eq!(split, 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM user_secrets").fetch_one(&mut conn).await.unwrap();
    assert_eq!(left, 0);
    assert_eq!(r.load_secrets(ctx(Some("old2"))).await.unwrap().unwrap().custom_secrets["B"].secret, "old2-B");
}

fn models_change(name: &str) -> plugin_api::models::SecretsChange {
    plugin_api::models::SecretsChange::CreateCustomSecret {
        name: name.into(),
        secret: format!("new-{name}"),
        description: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_everything_readable_and_reseals_every_row() {
    let db = TestDb::create().await;
    let d = Deployment::new();
    d.install_bundled();
    let old = registry(&d, &pg_stores(&db.url, MASTER, &[]));
    for user in ["u1", "u2", "u3"] {
        let mut s = Secrets::default();
        s.custom_secrets
            .insert("K".into(), CustomSecret { secret: format!("{user}-secret"), description: String::new() });
        old.store_secrets(ctx(Some(user)), &s).await.unwrap();
        old.store_settings(
            ctx(Some(user)),
            &Settings { llm_api_key: Some(format!("{user}-key")), ..Default::default() },
        )
        .await
        .unwrap();
    }
    let new_master = "rotated-master-key-fedcba9876543210";
    // The procedure: the process with only the old key goes before a rotation (rotate-keys
    // refuses while it is connected; see the README's rotation test).
    old.shutdown(std::time::Duration::from_secs(2)).await;
    drop(old);
    let both = registry(&d, &pg_stores(&db.url, new_master, &[MASTER]));
    let mut conn = db.connect().await;
    // Processes announcing keys without the new one's id (the first 8 hex digits of its SHA-256).
    let lacking = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND application_name LIKE 'oh-host keys=%' AND application_name NOT LIKE $1";
    let new_id = format!("%{}%", &oh_e2e::sha256_hex(new_master)[..8]);
    let started = std::time::Instant::now();
    while sqlx::query_scalar::<_, i64>(lacking).bind(&new_id).fetch_one(&mut conn).await.unwrap() > 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "the old process's connection stays");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Readable with the old key as "previous", before any rotation.
    assert_eq!(both.load_settings(ctx(Some("u2"))).await.unwrap().unwrap().llm_api_key.as_deref(), Some("u2-key"));
    let report = both.operate(StoreOperation::RotateKeys).await;
    let rotated: Vec<(String, serde_json::Value)> =
        report.into_iter().filter_map(|(k, r)| r.unwrap().map(|v| (k, v))).collect();
    assert_eq!(rotated.len(), 2, "{rotated:?}");
    for (_, r) in &rotated {
        assert_eq!((r["rotated"].as_u64(), r["remaining"].as_i64()), (Some(3), Some(0)), "{r}");
    }
    // A second run has nothing to do (resumable, idempotent).
    for (_, r) in both.operate(StoreOperation::RotateKeys).await {
        if let Some(r) = r.unwrap() {
            assert_eq!(r["rotated"], 0);
        }
    }
    // Now the old key is not needed at all.
    let only_new = registry(&d, &pg_stores(&db.url, new_master, &[]));
    for user in ["u1", "u2", "u3"] {
        let s = only_new.load_secrets(ctx(Some(user))).await.unwrap().unwrap();
        assert_eq!(s.custom_secrets["K"].secret, format!("{user}-secret"));
        assert_eq!(
            only_new.load_settings(ctx(Some(user))).await.unwrap().unwrap().llm_api_key,
            Some(format!("{user}-key"))
        );
    }
    // And a registry that knows only the old key cannot read what was re-sealed.
    let stale = registry(&d, &pg_stores(&db.url, MASTER, &[]));
    assert!(stale.load_secrets(ctx(Some("u1"))).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_migrating_together_apply_each_migration_once() {
    let db = TestDb::create().await;
    let d1 = Deployment::new();
    d1.install_bundled();
    let d2 = Deployment::new();
    d2.install_bundled();
    let r1 = registry(&d1, &pg_stores(&db.url, MASTER, &[]));
    let r2 = registry(&d2, &pg_stores(&db.url, MASTER, &[]));
    let (a, b) = tokio::join!(r1.operate(StoreOperation::Migrate), r2.operate(StoreOperation::Migrate));
    let applied: Vec<i64> = a
        .into_iter()
        .chain(b)
        .filter_map(|(_, r)| r.unwrap())
        .flat_map(|v| v["applied"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_i64())
        .collect();
    assert_eq!(applied, all_migrations(), "each migration applied exactly once across both hosts");
}

#[tokio::test]
async fn an_unreachable_database_fails_ready_and_requests_fast_with_503() {
    let d = Deployment::new();
    d.install_bundled();
    let stores = pg_stores("postgres://postgres@127.0.0.1:9/none", MASTER, &[]).replacen(
        "{ database_url",
        "{ acquire_timeout_ms = 500, database_url",
        3,
    );
    d.write_profile("", &stores);
    let host = d.start();
    let ready = host.get("/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    let started = std::time::Instant::now();
    let r = host.get("/api/settings").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.json()["error"].as_str().unwrap().contains("PostgreSQL is unreachable"), "{}", r.text);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(host.get("/alive").await.status, 200);
}

/// Stops and restarts a PostgreSQL of the test's own under write load: during the outage
/// requests fail fast with 503 and `/ready` says so; after it the pool recovers without a
/// host restart; every write that was acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_recovers_after_an_outage_and_no_acknowledged_write_is_lost() {
    let pg = oh_e2e::pg::OwnPostgres::start();
    let d = Deployment::new();
    d.install_bundled();
    let stores =
        pg_stores(&pg.url(), MASTER, &[]).replacen("{ database_url", "{ acquire_timeout_ms = 500, database_url", 3);
    d.write_profile("", &stores);
    let host = d.start();
    assert_eq!(host.get("/ready").await.status, 200);

    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let write = |i: usize| {
        let req = host
            .http
            .post(host.url("/api/secrets"))
            .json(&json!({ "name": format!("S{i}"), "value": format!("v{i}") }));
        let host = &host;
        async move { host.send(req).await }
    };
    for i in 0..20 {
        let r = write(i).await;
        assert_eq!(r.status, 201, "{}", r.text);
        acknowledged.push(format!("S{i}"));
    }
    pg.stop();
    let outage = std::time::Instant::now();
    for i in 20..30 {
        let started = std::time::Instant::now();
        let r = write(i).await;
        match r.status {
            201 => acknowledged.push(format!("S{i}")),
            503 => {
                refused += 1;
                assert!(r.json()["error"].as_str().unwrap().contains("PostgreSQL"), "{}", r.text);
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "a request hung during the outage");
    }
    assert!(refused > 0, "the outage was not noticed");
    assert_eq!(host.get("/ready").await.status, 503);
    assert!(outage.elapsed() < std::time::Duration::from_secs(40));

    pg.start_again();
    let mut recovered = false;
    for _ in 0..100 {
        if host.get("/ready").await.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "the pool did not recover");
    for i in 30..40 {
        let r = write(i).await;
        assert_eq!(r.status, 201, "{}", r.text);
        acknowledged.push(format!("S{i}"));
    }
    let listed: Vec<String> = host.get("/api/secrets").await.json()["custom_secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    for name in &acknowledged {
        assert!(listed.contains(name), "acknowledged write {name} was lost");
    }
}

/// The versions of `migrations/*.sql`, in order (`0001_init.sql` is 1).
fn all_migrations() -> Vec<i64> {
    let mut versions: Vec<i64> = std::fs::read_dir(oh_e2e::workspace().join("migrations"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.split('_').next()?.parse().ok())
        .collect();
    versions.sort();
    versions
}

/// Hosts keep decrypted settings and secrets; a change made behind the stores' back (an
/// operator's SQL, a host of an older version) still shows on the next load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_documents_follow_changes_made_behind_the_stores_back() {
    let db = TestDb::create().await;
    let d = Deployment::new();
    d.install_bundled();
    let r = registry(&d, &pg_stores(&db.url, MASTER, &[]));
    let alice = || ctx(Some("alice"));
    r.store_settings(alice(), &Settings { llm_model: Some("first".into()), ..Default::default() }).await.unwrap();
    let mut secrets = Secrets::default();
    secrets.custom_secrets.insert("TOKEN".into(), CustomSecret { secret: "v".into(), description: String::new() });
    r.store_secrets(alice(), &secrets).await.unwrap();
    // Loaded twice: the second is served from the cache.
    for _ in 0..2 {
        assert_eq!(r.load_settings(alice()).await.unwrap().unwrap().llm_model.as_deref(), Some("first"));
        assert!(r.load_secrets(alice()).await.unwrap().unwrap().custom_secrets.contains_key("TOKEN"));
    }
    let mut conn = db.connect().await;
    sqlx::query(
        "UPDATE user_settings SET settings = jsonb_set(settings, '{llm_model}', '\"edited\"') WHERE user_id = 'alice'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("DELETE FROM user_custom_secrets WHERE user_id = 'alice'").execute(&mut conn).await.unwrap();
    assert_eq!(r.load_settings(alice()).await.unwrap().unwrap().llm_model.as_deref(), Some("edited"));
    let left = r.load_secrets(alice()).await.unwrap();
    assert!(left.as_ref().is_none_or(|s| s.custom_secrets.is_empty()), "{left:?}");
    // A user without secrets is cached as such, and sees the first one at once.
    assert!(r.load_secrets(ctx(Some("bob"))).await.unwrap().is_none());
    assert!(r.load_secrets(ctx(Some("bob"))).await.unwrap().is_none());
    r.store_secrets(ctx(Some("bob")), &secrets).await.unwrap();
    assert!(r.load_secrets(ctx(Some("bob"))).await.unwrap().unwrap().custom_secrets.contains_key("TOKEN"));
}
