//! Conversation search, get, rename, delete and stored events, over conversations seeded in
//! the file store's on-disk layout (creating them through HTTP comes with the agent loop).

use oh_e2e::{Deployment, TestHost};
use serde_json::{json, Value};
use std::fs;

fn now_minus(days: i64) -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - days * 86_400;
    // A sortable RFC 3339 UTC timestamp, without pulling a date crate into the tests.
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S.000000Z"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn seed(d: &Deployment, id: &str, created_at: &str, title: Option<&str>, events: usize) {
    let dir = d.state_dir().join("sessions").join(id);
    fs::create_dir_all(dir.join("events")).unwrap();
    let meta = json!({ "conversation_id": id, "created_at": created_at, "title": title, "selected_repository": "org/repo",
                       "trigger": "gui", "user_id": null });
    fs::write(dir.join("metadata.json"), meta.to_string()).unwrap();
    for i in 0..events {
        let e = json!({ "id": i, "timestamp": created_at, "source": "user", "action": "message", "message": format!("m{i}"),
                        "args": { "content": format!("m{i}") } });
        fs::write(dir.join("events").join(format!("{i}.json")), e.to_string()).unwrap();
    }
}

fn deployment() -> (Deployment, TestHost) {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    seed(&d, "aaa111", &now_minus(3), Some("oldest"), 0);
    seed(&d, "bbb222", &now_minus(2), None, 5);
    seed(&d, "ccc333", &now_minus(1), Some("newest"), 0);
    seed(&d, "old999", &now_minus(30), Some("past max age"), 0);
    let host = d.start();
    (d, host)
}

fn ids(page: &Value) -> Vec<String> {
    page["results"].as_array().unwrap().iter().map(|c| c["conversation_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn search_pages_newest_first_with_openhands_shapes() {
    let (_d, host) = deployment();
    let first = host.get("/api/conversations?limit=2").await.json();
    assert_eq!(ids(&first), ["ccc333", "bbb222"]);
    let item = &first["results"][1];
    assert_eq!(item["title"], "Conversation bbb22");
    assert_eq!(item["status"], "STOPPED");
    assert_eq!(item["conversation_version"], "V0");
    assert_eq!(item["selected_repository"], "org/repo");
    let next = first["next_page_id"].as_str().unwrap();
    let second = host.get(&format!("/api/conversations?limit=2&page_id={next}")).await.json();
    // The 30-day-old one is beyond conversation_max_age (10 days) and left out.
    assert_eq!(ids(&second), ["aaa111"]);
    assert_eq!(second["next_page_id"], Value::Null);

    let filtered = host.get("/api/conversations?selected_repository=other/repo").await.json();
    assert_eq!(ids(&filtered), Vec::<String>::new());
    assert_eq!(host.get("/api/conversations?limit=0").await.status, 400);
    assert_eq!(host.get("/api/conversations?limit=abc").await.status, 400);
}

#[tokio::test]
async fn get_rename_delete_and_events() {
    let (d, host) = deployment();
    let one = host.get("/api/conversations/ccc333").await;
    assert_eq!(one.json()["title"], "newest");
    let none = host.get("/api/conversations/zzz000").await;
    assert_eq!((none.status, none.text.as_str()), (200, "null"));

    let patch = |id: &str, body: Value| host.http.patch(host.url(&format!("/api/conversations/{id}"))).json(&body);
    let renamed = host.send(patch("ccc333", json!({ "title": "renamed" }))).await;
    assert_eq!((renamed.status, renamed.text.as_str()), (200, "true"));
    assert_eq!(host.get("/api/conversations/ccc333").await.json()["title"], "renamed");
    assert_eq!(host.send(patch("ccc333", json!({ "title": "x", "extra": 1 }))).await.status, 422);
    assert_eq!(host.send(patch("ccc333", json!({ "title": "" }))).await.status, 422);
    let missing = host.send(patch("zzz000", json!({ "title": "x" }))).await;
    assert_eq!((missing.status, missing.json()["msg_id"].as_str()), (404, Some("CONVERSATION$NOT_FOUND")));

    let page = host.get("/api/conversations/bbb222/events?start_id=1&limit=2").await.json();
    let event_ids: Vec<u64> = page["events"].as_array().unwrap().iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!((event_ids, page["has_more"].as_bool()), (vec![1, 2], Some(true)));
    let rev = host.get("/api/conversations/bbb222/events?reverse=true&limit=100").await.json();
    assert_eq!(rev["events"][0]["id"], 4);
    assert_eq!(rev["has_more"], false);
    assert_eq!(host.get("/api/conversations/bbb222/events?limit=101").await.status, 400);
    assert_eq!(host.get("/api/conversations/zzz000/events").await.status, 404);

    let delete = |id: &str| host.http.delete(host.url(&format!("/api/conversations/{id}")));
    assert_eq!(host.send(delete("bbb222")).await.text, "true");
    assert_eq!(host.send(delete("bbb222")).await.text, "false");
    assert!(!d.state_dir().join("sessions/bbb222").exists());
}

#[tokio::test]
async fn hostile_ids_are_refused_before_any_store_call() {
    let (d, host) = deployment();
    let long = "a".repeat(101);
    // reqwest (like a browser) resolves `..` segments before sending; say it raw.
    let address = host.base.trim_start_matches("http://");
    let raw = host.raw(&format!("GET /api/conversations/.. HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"));
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("invalid conversation ID"), "{raw}");
    for path in [
        "/api/conversations/..%2F..%2Fetc",
        "/api/conversations/a%00b",
        "/api/conversations/a%5Cb",
        &format!("/api/conversations/{long}"),
        "/api/conversations/%FF%FE",
    ] {
        for req in [host.http.get(host.url(path)), host.http.delete(host.url(path))] {
            let r = host.send(req).await;
            assert_eq!(r.status, 400, "{path}: {}", r.text);
            assert!(r.json()["error"].as_str().unwrap().starts_with("invalid conversation ID"), "{path}: {}", r.text);
        }
    }
    assert!(d.state_dir().join("sessions/aaa111/metadata.json").exists());
    let calls = host.admin_get("/internal/plugins").await.json()["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["extension_point"] == "conversation_store")
        .unwrap()["stats"]["calls"]
        .as_u64()
        .unwrap();
    assert_eq!(calls, 0, "a refused id reached the store");
}

#[tokio::test]
async fn a_corrupt_file_fails_its_request_and_nothing_else() {
    let (d, host) = deployment();
    let path = d.state_dir().join("sessions/aaa111/metadata.json");
    fs::write(&path, b"{\"conversation_id\": \"aaa111\", ").unwrap();
    let broken = host.get("/api/conversations/aaa111").await;
    assert_eq!(broken.status, 500);
    // The cause (a path) stays in the log; the client gets an id that finds it there.
    let message = broken.json()["error"].as_str().unwrap().to_owned();
    assert!(!message.contains("metadata.json"), "{message}");
    let id = broken.json()["correlation_id"].as_str().unwrap().to_owned();
    assert!(message.contains(&id), "{message}");
    // The log is read from the host's stderr by another thread: give the line a moment.
    let named = path.display().to_string();
    for _ in 0..50 {
        if host.log().contains(&named) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(host.log().contains(&named), "the log must name the file:\n{}", host.log());
    // Everything else still works.
    let page = host.get("/api/conversations").await;
    assert_eq!(page.status, 200);
    assert_eq!(ids(&page.json()), ["ccc333", "bbb222"]);
    assert_eq!(host.get("/api/conversations/ccc333").await.status, 200);
    assert_eq!(host.get("/alive").await.status, 200);
}
