//! Section 13 (`make bench-openhands`, only when named): the same routes on OpenHands 0.62.0
//! itself and on oh-host, in one run, on the same conversation files: requests per second and
//! p50/p99 of `GET /api/settings`, `GET /api/conversations?limit=20` with 1,000 and 10,000
//! conversations, `/alive`; start to the first `/alive` and the idle RSS; each with the ratio.
//!
//! OpenHands runs from the virtual environment `make openhands-env` caches, with
//! `FILE_STORE=local` (its V0 file conversation store, whose layout, `sessions/<id>/
//! metadata.json`, is also the file stores'), an empty web client build where it insists on
//! one (`./frontend/build`), and two switches a launcher makes: its rate limiter (10 requests
//! per second per client) removed, and its V1 conversation service (Docker sandboxes) answering
//! "none", so the search is its file store's.

use crate::common::*;
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const LAUNCHER: &str = r#"import sys


def main() -> None:
    import uvicorn
    from openhands.app_server.app_conversation.app_conversation_models import AppConversationPage
    from openhands.server.listen import app, base_app
    from openhands.server.middleware import RateLimitMiddleware
    from openhands.server.routes import manage_conversations

    base_app.user_middleware = [m for m in base_app.user_middleware if m.cls is not RateLimitMiddleware]
    base_app.middleware_stack = None

    class NoV1Conversations:
        async def search_app_conversations(self, **_kwargs):
            return AppConversationPage(items=[])

        async def get_app_conversation(self, *_args, **_kwargs):
            return None

    async def no_v1():
        yield NoV1Conversations()

    base_app.dependency_overrides[manage_conversations.app_conversation_service_dependency.dependency] = no_v1
    uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), log_level='warning')


if __name__ == '__main__':
    main()
"#;

/// What one server did.
#[derive(Default)]
struct Figures {
    start: Duration,
    rss: f64,
    rows: Vec<(String, f64, f64, f64)>,
}

fn venv() -> PathBuf {
    std::env::var_os("OPENHANDS_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/oh-host/openhands-0.62.0")
    })
}

/// Conversations `from..to` of the single user, as both stores read them.
fn write_conversations(store: &Path, from: usize, to: usize) {
    let now = chrono::Utc::now();
    for i in from..to {
        let dir = store.join("sessions").join(format!("c{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let created = (now - chrono::Duration::seconds(i as i64)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let meta = serde_json::json!({
            "conversation_id": format!("c{i}"), "selected_repository": null, "created_at": created,
            "last_updated_at": created, "title": format!("bench {i}"),
        });
        std::fs::write(dir.join("metadata.json"), meta.to_string()).unwrap();
    }
}

async fn until_alive(base: &str, started: Instant, limit: Duration) -> Duration {
    let client = reqwest::Client::new();
    loop {
        if client.get(format!("{base}/alive")).send().await.is_ok_and(|r| r.status().is_success()) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{base} did not answer /alive in {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn spawn_openhands(dir: &Path, store: &Path) -> (Child, String) {
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(cwd.join("frontend/build")).unwrap();
    std::fs::write(cwd.join("frontend/build/index.html"), "<html></html>").unwrap();
    std::fs::write(dir.join("launch.py"), LAUNCHER).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(dir.join("openhands.log")).unwrap();
    let child = Command::new(venv().join("bin/python"))
        .arg(dir.join("launch.py"))
        .arg(port.to_string())
        .current_dir(&cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("FILE_STORE", "local")
        .env("FILE_STORE_PATH", store)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    (child, format!("http://127.0.0.1:{port}"))
}

/// Measures one server, started by `start` once per size of the store.
async fn measure(
    name: &str,
    store: &Path,
    start: &dyn Fn() -> (Child, String),
    settings: &dyn Fn(&str) -> Option<reqwest::RequestBuilder>,
) -> Figures {
    let mut figures = Figures::default();
    let mut made = 0;
    for n in [1_000, 10_000] {
        write_conversations(store, made, n);
        made = n;
        let started = Instant::now();
        let (mut child, base) = start();
        let up = until_alive(&base, started, Duration::from_secs(300)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss, _) = rss_mib(child.id());
        if n == 1_000 {
            (figures.start, figures.rss) = (up, rss);
            if let Some(request) = settings(&base) {
                assert!(request.send().await.unwrap().status().is_success(), "{name}: settings not stored");
            }
            for (label, path) in [("GET /api/settings", "/api/settings"), ("GET /alive", "/alive")] {
                let url = format!("{base}{path}");
                let s = load(move |c| c.get(&url)).await;
                figures.rows.push((label.to_owned(), s.rate(), s.pct_us(0.5) / 1e3, s.p99_ms()));
            }
        }
        let url = format!("{base}/api/conversations?limit=20");
        let s = load(move |c| c.get(&url)).await;
        figures.rows.push((format!("GET /api/conversations, {n}"), s.rate(), s.pct_us(0.5) / 1e3, s.p99_ms()));
        let _ = child.kill();
        let _ = child.wait();
    }
    figures
}

pub(crate) fn compare(bin: &Path, work: &Path) {
    println!("\n13. oh-host next to OpenHands 0.62.0 itself: the same routes, the same conversation files, one run");
    if !venv().join(".oh-complete").exists() {
        println!("   skipped: no OpenHands environment at {} (make openhands-env)", venv().display());
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let ours_dir = work.join("compare-oh-host");
    let plugins = work.join("plugins");
    let profile = ours_dir.join("plugins.toml");
    std::fs::create_dir_all(&ours_dir).unwrap();
    std::fs::write(
        &profile,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\nadmin_bind = \"off\"\nplugins_dir = \"{}\"\nstate_dir = \"{}\"\n",
            plugins.display(),
            ours_dir.join("state").display()
        ),
    )
    .unwrap();
    let theirs_dir = work.join("compare-openhands");
    let theirs_store = theirs_dir.join("store");
    std::fs::create_dir_all(&theirs_store).unwrap();
    // OpenHands reads its settings from the store; ours are written through the API.
    let settings = serde_json::json!({ "llm_model": "gpt-4o", "llm_api_key": "sk-bench", "language": "en" });
    std::fs::write(theirs_store.join("settings.json"), settings.to_string()).unwrap();
    let (ours, theirs) = rt.block_on(async {
        let ours = measure(
            "oh-host",
            &ours_dir.join("state"),
            &|| {
                let (child, addr) = spawn_host(bin, &profile);
                (child, format!("http://{addr}"))
            },
            &|base| Some(reqwest::Client::new().post(format!("{base}/api/settings")).json(&settings)),
        )
        .await;
        let theirs =
            measure("OpenHands", &theirs_store, &|| spawn_openhands(&theirs_dir, &theirs_store), &|_| None).await;
        (ours, theirs)
    });
    println!("   {:<32} {:>26} {:>26} {:>8}", "", "oh-host", "OpenHands 0.62.0", "ratio");
    println!("   {:<32} {:>26} {:>26}", "route", "req/s  p50/p99 ms", "req/s  p50/p99 ms");
    for ((label, rate, p50, p99), (_, their_rate, their_p50, their_p99)) in ours.rows.iter().zip(&theirs.rows) {
        println!(
            "   {label:<32} {:>8.0}  {:>7.2}/{:<8.2} {:>8.1}  {:>7.1}/{:<8.1} {:>7.0}x",
            rate,
            p50,
            p99,
            their_rate,
            their_p50,
            their_p99,
            rate / their_rate.max(f64::MIN_POSITIVE)
        );
    }
    println!(
        "   {:<32} {:>23.1} ms {:>23.1} s {:>7.0}x",
        "start to the first /alive",
        ours.start.as_secs_f64() * 1e3,
        theirs.start.as_secs_f64(),
        theirs.start.as_secs_f64() / ours.start.as_secs_f64().max(1e-9)
    );
    println!(
        "   {:<32} {:>22.1} MiB {:>22.1} MiB {:>7.0}x",
        "RSS, idle after start",
        ours.rss,
        theirs.rss,
        theirs.rss / ours.rss.max(1e-9)
    );
}
