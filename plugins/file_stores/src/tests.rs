//! Store behaviour through the same stable-ABI objects the host uses (no dlopen).

use plugin_sdk::{
    models::{ConversationMetadata, ConversationMetadataResultSet, EventPage, Secrets, Settings},
    plugin_api::abi_stable::std_types::{RNone, ROption, RSome, RString, RVec},
    CallContext, ErrorCode, EventQuery, Registry,
};
use std::path::Path;

fn ctx(user: Option<&str>) -> CallContext {
    CallContext { user_id: user.map(RString::from).into(), ..Default::default() }
}

fn config(root: &Path) -> String {
    serde_json::json!({ "root": root }).to_string()
}

fn grep_dir(root: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn settings_round_trip_without_plaintext_secrets_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Registry::from_register(crate::register)
        .build_settings_store("FileSettingsStore", &config(dir.path()))
        .unwrap();
    let settings = Settings {
        llm_model: Some("gpt-4o".into()),
        llm_api_key: Some("sk-very-secret-1".into()),
        search_api_key: Some("search-secret-2".into()),
        sandbox_api_key: Some("sandbox-secret-3".into()),
        ..Default::default()
    };
    let json = RString::from(serde_json::to_string(&settings).unwrap());
    let (loaded_before, loaded) = plugin_sdk::block_on_runtime(async move {
        let before = store.load(ctx(None)).await.unwrap();
        store.store(ctx(None), json).await.unwrap();
        (before, store.load(ctx(None)).await.unwrap())
    });
    assert_eq!(loaded_before, RNone);
    let loaded: Settings = serde_json::from_str(&loaded.unwrap()).unwrap();
    assert_eq!(loaded, settings);
    for secret in ["sk-very-secret-1", "search-secret-2", "sandbox-secret-3"] {
        assert_eq!(grep_dir(dir.path(), secret), Vec::<String>::new(), "{secret} found on disk");
    }
    assert!(dir.path().join("settings.json").exists());
}

#[test]
fn secrets_are_sealed_and_bound_to_their_user() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Registry::from_register(crate::register).build_secrets_store("FileSecretsStore", &config(dir.path())).unwrap();
    let mut secrets = Secrets::default();
    secrets.custom_secrets.insert(
        "API".into(),
        plugin_sdk::models::CustomSecret { secret: "xyzzy-plaintext".into(), description: "d".into() },
    );
    let json = RString::from(serde_json::to_string(&secrets).unwrap());
    let root = dir.path().to_path_buf();
    let (alice, bob_after_copy) = plugin_sdk::block_on_runtime(async move {
        store.store(ctx(Some("alice")), json).await.unwrap();
        let alice = store.load(ctx(Some("alice"))).await.unwrap();
        // A file copied into another user's directory must not decrypt there.
        std::fs::create_dir_all(root.join("users/bob")).unwrap();
        std::fs::copy(root.join("users/alice/secrets.json"), root.join("users/bob/secrets.json")).unwrap();
        (alice, store.load(ctx(Some("bob"))).await)
    });
    let alice: Secrets = serde_json::from_str(&alice.unwrap()).unwrap();
    assert_eq!(alice, secrets);
    let err = bob_after_copy.into_result().unwrap_err();
    assert_eq!(err.code, ErrorCode::INTERNAL);
    assert!(err.message.contains("corrupt"), "{}", err.message);
    assert!(grep_dir(dir.path(), "xyzzy-plaintext").is_empty());
}

fn metadata(id: &str, created_at: &str) -> RString {
    let m = ConversationMetadata {
        conversation_id: id.into(),
        created_at: created_at.into(),
        title: Some(format!("t-{id}")),
        ..Default::default()
    };
    serde_json::to_string(&m).unwrap().into()
}

#[test]
fn conversations_search_pages_newest_first_and_events_are_dense() {
    let dir = tempfile::tempdir().unwrap();
    let store = Registry::from_register(crate::register)
        .build_conversation_store("FileConversationStore", &config(dir.path()))
        .unwrap();
    let (page1, page2, first, second, events, reversed, missing) = plugin_sdk::block_on_runtime(async move {
        for (i, id) in ["a1", "b2", "c3"].iter().enumerate() {
            store.save_metadata(ctx(None), metadata(id, &format!("2025-01-0{}T00:00:00Z", i + 1))).await.unwrap();
        }
        let page1: ConversationMetadataResultSet =
            serde_json::from_str(&store.search(ctx(None), RNone, 2).await.unwrap()).unwrap();
        let page2: ConversationMetadataResultSet = serde_json::from_str(
            &store.search(ctx(None), ROption::from(page1.next_page_id.clone().map(RString::from)), 2).await.unwrap(),
        )
        .unwrap();
        let evs = |n: usize| (0..n).map(|i| RString::from(format!("{{\"message\":\"m{i}\"}}"))).collect::<RVec<_>>();
        let first = store.append_events(ctx(None), "a1".into(), evs(3)).await.unwrap();
        let second = store.append_events(ctx(None), "a1".into(), evs(2)).await.unwrap();
        let q = |reverse| EventQuery { start_id: 1, end_id: RNone, reverse, limit: 3 };
        let events: EventPage =
            serde_json::from_str(&store.get_events(ctx(None), "a1".into(), q(false)).await.unwrap()).unwrap();
        let reversed: EventPage =
            serde_json::from_str(&store.get_events(ctx(None), "a1".into(), q(true)).await.unwrap()).unwrap();
        let missing = store.append_events(ctx(None), "nope".into(), evs(1)).await;
        (page1, page2, first, second, events, reversed, missing)
    });
    let ids =
        |p: &ConversationMetadataResultSet| p.results.iter().map(|m| m.conversation_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&page1), ["c3", "b2"]);
    assert_eq!(page1.next_page_id.as_deref(), Some("Mg=="));
    assert_eq!(ids(&page2), ["a1"]);
    assert_eq!(page2.next_page_id, None);
    assert_eq!((first, second), (0, 3));
    let event_ids = |p: &EventPage| p.events.iter().map(|e| e["id"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(event_ids(&events), [1, 2, 3]);
    assert!(events.has_more);
    assert_eq!(event_ids(&reversed), [4, 3, 2]);
    assert_eq!(missing.into_result().unwrap_err().code, ErrorCode::NOT_FOUND);
}

#[test]
fn conversations_are_scoped_by_user_and_corrupt_files_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Registry::from_register(crate::register)
        .build_conversation_store("FileConversationStore", &config(dir.path()))
        .unwrap();
    let root = dir.path().to_path_buf();
    let (bob_sees, alice_owns, bob_owns, corrupt, search_after) = plugin_sdk::block_on_runtime(async move {
        store.save_metadata(ctx(Some("alice")), metadata("c1", "2025-01-01T00:00:00Z")).await.unwrap();
        store.save_metadata(ctx(Some("alice")), metadata("c2", "2025-01-02T00:00:00Z")).await.unwrap();
        let bob_sees = store.get_metadata(ctx(Some("bob")), "c1".into()).await.unwrap();
        let alice_owns = store.validate_metadata(ctx(Some("alice")), "c1".into(), "alice".into()).await.unwrap();
        let bob_owns = store.validate_metadata(ctx(Some("bob")), "c1".into(), "bob".into()).await.unwrap();
        std::fs::write(root.join("users/alice/conversations/c2/metadata.json"), b"{not json").unwrap();
        let corrupt = store.get_metadata(ctx(Some("alice")), "c2".into()).await;
        let search: ConversationMetadataResultSet =
            serde_json::from_str(&store.search(ctx(Some("alice")), RNone, 20).await.unwrap()).unwrap();
        (bob_sees, alice_owns, bob_owns, corrupt, search)
    });
    assert_eq!(bob_sees, RNone);
    assert!(alice_owns);
    assert!(!bob_owns);
    let err = corrupt.into_result().unwrap_err();
    assert!(err.message.contains("metadata.json"), "{}", err.message);
    assert_eq!(search_after.results.len(), 1, "the corrupt one is skipped, the other listed");
    let _ = RSome(());
}
