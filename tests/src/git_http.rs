//! A git server over HTTP on 127.0.0.1: git's own smart-HTTP CGI (`git http-backend`) behind a
//! token check, serving bare repositories made from given files. What a conversation's
//! workspace clones in the tests (a git host we cannot run here).

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::any,
    Router,
};
use base64::Engine as _;
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

pub struct GitHttp {
    /// `127.0.0.1:PORT`: what a provider token's `host` says.
    pub host: String,
    _root: tempfile::TempDir,
}

struct Served {
    root: PathBuf,
    token: String,
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.test", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The CGI's answer (`Status:` and headers, a blank line, the body) as a response.
fn cgi_response(out: &[u8]) -> Response {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let Some((end, sep)) = split else { return (StatusCode::BAD_GATEWAY, "no CGI headers").into_response() };
    let mut response = Response::builder().status(200);
    for line in String::from_utf8_lossy(&out[..end]).lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        if k.eq_ignore_ascii_case("status") {
            let code: u16 = v.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(200);
            response = response.status(code);
        } else {
            response = response.header(k.trim(), v.trim());
        }
    }
    response.body(Body::from(out[end + sep..].to_vec())).unwrap()
}

async fn serve(State(s): State<Arc<Served>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{}", s.token)));
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (StatusCode::UNAUTHORIZED, [("www-authenticate", "Basic realm=\"git\"")], "").into_response();
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut child = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &s.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", method.as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        stdin.write_all(&body).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap().stdout
    })
    .await
    .unwrap();
    cgi_response(&out)
}

impl GitHttp {
    /// Serves `<name>.git`, made of `files` committed on `main`, and a branch `feature` with
    /// one more file; clones must send `token`.
    pub async fn start(name: &str, files: &[(&str, &str)], token: &str) -> GitHttp {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);
        for (path, content) in files {
            let p = work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "first"]);
        git(&work, &["checkout", "-q", "-b", "feature"]);
        std::fs::write(work.join("FEATURE.md"), "on the feature branch\n").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "feature"]);
        git(&work, &["checkout", "-q", "main"]);
        git(root.path(), &["clone", "-q", "--bare", "work", &format!("{name}.git")]);
        let served = Arc::new(Served { root: root.path().to_path_buf(), token: token.to_owned() });
        let app = Router::new().route("/{*path}", any(serve)).with_state(served);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        GitHttp { host, _root: root }
    }
}
