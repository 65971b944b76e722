//! Small stand-ins for the git providers' APIs (third parties we cannot call from tests), on
//! 127.0.0.1, speaking their real wire formats: GitHub REST v3 + GraphQL, GitLab REST v4 +
//! GraphQL, Bitbucket 2.0. Each serves one user whose token it checks (401 otherwise), pages
//! lists the provider's way (`Link` headers, `X-Total`, a `next` URL), and records every
//! request so tests can check what was asked.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json, Router,
};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::{json, Value};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    GitHub,
    GitLab,
    Bitbucket,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub authorization: String,
    pub body: Value,
}

struct Shared {
    kind: Kind,
    token: String,
    base: String,
    seen: Mutex<Vec<Seen>>,
    /// How many projects GitLab lists (`set_projects`).
    projects: std::sync::atomic::AtomicUsize,
}

/// A running fake provider.
pub struct FakeProvider {
    /// The API's base URL, as the profile's `*_api_url` names it.
    pub api_url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Repositories the user has: 45, `octo/repo-0` … `octo/repo-44`, `repo-0` pushed last.
pub const REPOSITORIES: usize = 45;
/// Branches of every repository: `main` and `feature-1` … `feature-34`.
pub const BRANCHES: usize = 35;

impl FakeProvider {
    /// Starts a fake that accepts `token`.
    pub async fn start(kind: Kind, token: &str) -> FakeProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = match kind {
            Kind::GitHub => format!("http://{addr}"),
            Kind::GitLab => format!("http://{addr}/api/v4"),
            Kind::Bitbucket => format!("http://{addr}/2.0"),
        };
        let shared = Arc::new(Shared {
            kind,
            token: token.to_owned(),
            base: base.clone(),
            seen: Mutex::default(),
            projects: REPOSITORIES.into(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeProvider { api_url: base, shared, task }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// GitLab lists `n` projects from now on (a user who joined or left some).
    pub fn set_projects(&self, n: usize) {
        self.shared.projects.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The requests to `path`.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

fn repo_name(i: usize) -> String {
    format!("octo/repo-{i}")
}

fn pushed_at(i: usize) -> String {
    format!("2026-10-{:02}T12:00:00Z", 28 - (i % 28))
}

fn branch_name(i: usize) -> String {
    if i == 0 {
        "main".to_owned()
    } else {
        format!("feature-{i}")
    }
}

fn page_of<T: Clone>(items: &[T], page: usize, per_page: usize) -> (Vec<T>, bool) {
    let start = (page.max(1) - 1) * per_page;
    let end = (start + per_page).min(items.len());
    let slice = if start < items.len() { items[start..end].to_vec() } else { Vec::new() };
    (slice, end < items.len())
}

fn param(q: &BTreeMap<String, String>, key: &str, default: usize) -> usize {
    q.get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn with_link(body: Value, next: Option<String>, total: Option<usize>) -> Response {
    let mut response = Json(body).into_response();
    if let Some(next) = next {
        response.headers_mut().insert("link", format!("<{next}>; rel=\"next\"").parse().unwrap());
    }
    if let Some(total) = total {
        response.headers_mut().insert("x-total", total.to_string().parse().unwrap());
    }
    response
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "message": "Not Found" }))).into_response()
}

async fn handle(State(s): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let url = reqwest::Url::parse(&format!("http://fake{uri}")).unwrap();
    let query: BTreeMap<String, String> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_owned();
    s.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        authorization: authorization.clone(),
        body: body.clone(),
    });
    let expected = format!("Bearer {}", s.token);
    if authorization != expected {
        let message = match s.kind {
            Kind::GitHub => json!({ "message": "Bad credentials" }),
            _ => json!({ "message": "401 Unauthorized" }),
        };
        return (StatusCode::UNAUTHORIZED, Json(message)).into_response();
    }
    match s.kind {
        Kind::GitHub => github(&s, &method, &path, &query, &body),
        Kind::GitLab => gitlab(&s, &path, &query, &body),
        Kind::Bitbucket => bitbucket(&s, &path, &query),
    }
}

fn github_repo(i: usize) -> Value {
    json!({
        "id": 1000 + i, "full_name": repo_name(i), "private": i % 2 == 1,
        "stargazers_count": i * 3, "pushed_at": pushed_at(i), "default_branch": "main",
        "owner": { "login": "octo", "type": if i.is_multiple_of(5) { "Organization" } else { "User" } },
    })
}

fn github(s: &Shared, method: &Method, path: &str, q: &BTreeMap<String, String>, body: &Value) -> Response {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["user"]) => Json(json!({
            "id": 583231, "login": "octocat", "avatar_url": "https://avatars.example/octocat.png",
            "company": "@github", "name": "The Octocat", "email": null,
        }))
        .into_response(),
        ("GET", ["user", "repos"]) => {
            let all: Vec<Value> = (0..REPOSITORIES).map(github_repo).collect();
            let (page, per_page) = (param(q, "page", 1), param(q, "per_page", 30));
            let (items, more) = page_of(&all, page, per_page);
            let next = more.then(|| format!("{}/user/repos?page={}&per_page={per_page}", s.base, page + 1));
            with_link(json!(items), next, None)
        }
        ("GET", ["user", "orgs"]) => Json(json!([{ "login": "octo-org" }])).into_response(),
        ("GET", ["user", "installations"]) => Json(json!({
            "total_count": 1,
            "installations": [{ "id": 1234, "account": { "login": "octo-org", "type": "Organization" } }],
        }))
        .into_response(),
        ("GET", ["user", "installations", "1234", "repositories"]) => {
            Json(json!({ "total_count": 1, "repositories": [github_repo(7)] })).into_response()
        }
        ("GET", ["search", "repositories"]) => {
            // `in:name WORD user:LOGIN` / `WORD org:ORG` / `org:X in:name WORD`.
            let text = q.get("q").cloned().unwrap_or_default();
            let word = text.split_whitespace().find(|w| !w.contains(':')).unwrap_or("").to_owned();
            let items: Vec<Value> = (0..REPOSITORIES)
                .filter(|i| repo_name(*i).contains(&word))
                .map(github_repo)
                .take(param(q, "per_page", 30))
                .collect();
            Json(json!({ "total_count": items.len(), "items": items })).into_response()
        }
        ("GET", ["repos", owner, name]) => {
            match (0..REPOSITORIES).find(|i| repo_name(*i) == format!("{owner}/{name}")) {
                Some(i) => Json(github_repo(i)).into_response(),
                None => not_found(),
            }
        }
        ("GET", ["repos", owner, name, "branches"]) => {
            if !(0..REPOSITORIES).any(|i| repo_name(i) == format!("{owner}/{name}")) {
                return not_found();
            }
            let all: Vec<Value> = (0..BRANCHES)
                .map(|i| {
                    json!({
                        "name": branch_name(i), "protected": i == 0,
                        "commit": { "sha": format!("{i:040x}"), "commit": { "committer": { "date": pushed_at(i) } } },
                    })
                })
                .collect();
            let (page, per_page) = (param(q, "page", 1), param(q, "per_page", 30));
            let (items, more) = page_of(&all, page, per_page);
            let next = more.then(|| format!("{}/repos/{owner}/{name}/branches?page={}", s.base, page + 1));
            with_link(json!(items), next, None)
        }
        ("GET", ["repos", "octo", "repo-0", "contents", ".cursorrules"]) => Json(json!({
            "type": "file", "name": ".cursorrules", "content": STANDARD.encode("Be terse.\n"),
        }))
        .into_response(),
        ("GET", ["repos", "octo", "repo-0", "contents", ".openhands", "microagents"]) => Json(json!([
            { "type": "file", "name": "deploy.md" },
            { "type": "file", "name": "README.md" },
            { "type": "dir", "name": "drafts" },
            { "type": "file", "name": "notes.txt" },
        ]))
        .into_response(),
        ("GET", ["repos", "octo", "repo-0", "contents", ".openhands", "microagents", "deploy.md"]) => {
            let file = "---\nname: deploy\ntype: knowledge\ntriggers:\n- deploy\n- ship\n---\n\nRun `make deploy`.\n";
            let encoded = STANDARD.encode(file);
            // GitHub wraps base64 at 60 columns.
            let wrapped: Vec<String> =
                encoded.as_bytes().chunks(60).map(|c| String::from_utf8(c.to_vec()).unwrap()).collect();
            Json(json!({ "type": "file", "name": "deploy.md", "encoding": "base64", "content": wrapped.join("\n") }))
                .into_response()
        }
        // Pull request 1 is open, 2 merged (closed); others do not exist.
        ("GET", ["repos", "octo", "repo-0", "pulls", n]) => match *n {
            "1" => Json(json!({ "number": 1, "state": "open" })).into_response(),
            "2" => Json(json!({ "number": 2, "state": "closed", "merged": true })).into_response(),
            _ => not_found(),
        },
        ("POST", ["graphql"]) => github_graphql(body),
        _ => not_found(),
    }
}

fn github_graphql(body: &Value) -> Response {
    let query = body["query"].as_str().unwrap_or("");
    let vars = &body["variables"];
    if query.contains("SearchBranches") {
        let word = vars["query"].as_str().unwrap_or("");
        let per_page = vars["perPage"].as_u64().unwrap_or(30) as usize;
        let nodes: Vec<Value> = (0..BRANCHES)
            .map(branch_name)
            .filter(|b| b.contains(word))
            .take(per_page)
            .map(|b| json!({ "name": b, "target": { "__typename": "Commit", "oid": "abc123", "committedDate": "2026-11-01T00:00:00Z" } }))
            .collect();
        return Json(json!({ "data": { "repository": { "refs": { "nodes": nodes } } } })).into_response();
    }
    if query.contains("GetUserPRs") {
        let pr = |n: i64, mergeable: &str, checks: Option<&str>, reviews: Vec<&str>| {
            json!({
                "number": n, "title": format!("PR {n}"), "repository": { "nameWithOwner": "octo/repo-1" },
                "mergeable": mergeable,
                "commits": { "nodes": [{ "commit": { "statusCheckRollup": checks.map(|c| json!({ "state": c })) } }] },
                "reviews": { "nodes": reviews.into_iter().map(|r| json!({ "state": r })).collect::<Vec<_>>() },
            })
        };
        let nodes = vec![
            pr(1, "CONFLICTING", Some("SUCCESS"), vec![]),
            pr(2, "MERGEABLE", Some("FAILURE"), vec![]),
            pr(3, "MERGEABLE", Some("SUCCESS"), vec!["CHANGES_REQUESTED"]),
            pr(4, "MERGEABLE", None, vec![]),
        ];
        return Json(json!({ "data": { "user": { "pullRequests": { "nodes": nodes } } } })).into_response();
    }
    if query.contains("GetUserIssues") {
        let nodes =
            json!([{ "number": 9, "title": "Crash on start", "repository": { "nameWithOwner": "octo/repo-2" } }]);
        return Json(json!({ "data": { "user": { "issues": { "nodes": nodes } } } })).into_response();
    }
    Json(json!({ "errors": [{ "message": "unknown query" }] })).into_response()
}

fn gitlab_project(i: usize) -> Value {
    json!({
        "id": 2000 + i, "path_with_namespace": format!("group/sub/project-{i}"),
        "visibility": if i.is_multiple_of(2) { "public" } else { "private" }, "star_count": i,
        "last_activity_at": pushed_at(i), "default_branch": "main",
        "namespace": { "kind": if i.is_multiple_of(3) { "group" } else { "user" } },
    })
}

fn gitlab(s: &Shared, path: &str, q: &BTreeMap<String, String>, body: &Value) -> Response {
    let rest = path.strip_prefix("/api/v4").unwrap_or(path);
    if path == "/api/graphql" {
        let nodes = json!([
            { "iid": "5", "title": "MR with conflicts", "project": { "fullPath": "group/sub/project-0" }, "conflicts": true,
              "pipelines": { "nodes": [] }, "discussions": { "nodes": [] } },
            { "iid": "6", "title": "MR to review", "project": { "fullPath": "group/sub/project-0" }, "conflicts": false,
              "pipelines": { "nodes": [{ "status": "SUCCESS" }] },
              "discussions": { "nodes": [{ "notes": { "nodes": [{ "resolvable": true, "resolved": false }] } }] } },
        ]);
        let _ = body;
        return Json(json!({ "data": { "currentUser": { "authoredMergeRequests": { "nodes": nodes } } } }))
            .into_response();
    }
    match rest {
        "/user" => Json(json!({
            "id": 42, "username": "tanuki", "avatar_url": "https://gitlab.example/t.png",
            "name": "Tan Uki", "email": "t@example.com", "organization": "GitLab",
        }))
        .into_response(),
        "/projects" => {
            let all: Vec<Value> = (0..s.projects.load(std::sync::atomic::Ordering::Relaxed))
                .filter(|i| q.get("search").is_none_or(|w| format!("project-{i}").contains(w.as_str())))
                .map(gitlab_project)
                .collect();
            let (page, per_page) = (param(q, "page", 1), param(q, "per_page", 20));
            let (items, more) = page_of(&all, page, per_page);
            let next = more.then(|| format!("{}/projects?page={}&per_page={per_page}", s.base, page + 1));
            with_link(json!(items), next, Some(all.len()))
        }
        "/projects/group%2Fsub%2Fproject-0/repository/branches" => {
            let all: Vec<Value> = (0..BRANCHES)
                .map(branch_name)
                .filter(|b| q.get("search").is_none_or(|w| b.contains(w.as_str())))
                .map(|b| json!({ "name": b, "protected": b == "main", "commit": { "id": "f00d", "committed_date": "2026-11-02T00:00:00Z" } }))
                .collect();
            let (page, per_page) = (param(q, "page", 1), param(q, "per_page", 20));
            let (items, more) = page_of(&all, page, per_page);
            let next = more.then(|| format!("{}/projects/x/repository/branches?page={}", s.base, page + 1));
            with_link(json!(items), next, Some(all.len()))
        }
        "/issues" => Json(json!([{
            "iid": 11, "title": "Fix the docs", "references": { "full": "group/sub/project-3#11" },
        }]))
        .into_response(),
        _ => not_found(),
    }
}

fn bitbucket_repo(i: usize) -> Value {
    json!({
        "uuid": format!("{{repo-{i}}}"), "slug": format!("repo-{i}"), "workspace": { "slug": "team" },
        "is_private": i % 2 == 1, "updated_on": pushed_at(i), "mainbranch": { "name": "main" },
    })
}

fn bitbucket(s: &Shared, path: &str, q: &BTreeMap<String, String>) -> Response {
    let rest = path.strip_prefix("/2.0").unwrap_or(path);
    match rest {
        "/user" => Json(json!({
            "account_id": "557058:abc", "username": "bucketeer", "display_name": "Bucket Eer",
            "links": { "avatar": { "href": "https://bitbucket.example/a.png" } },
        }))
        .into_response(),
        "/workspaces" => {
            Json(json!({ "values": [{ "slug": "team" }], "pagelen": 10, "page": 1, "size": 1 })).into_response()
        }
        "/repositories/team" => {
            let all: Vec<Value> = (0..REPOSITORIES).map(bitbucket_repo).collect();
            let (page, per_page) = (param(q, "page", 1), param(q, "pagelen", 10));
            let (items, more) = page_of(&all, page, per_page);
            let mut body = json!({ "values": items, "page": page, "pagelen": per_page, "size": all.len() });
            if more {
                body["next"] = json!(format!("{}/repositories/team?pagelen={per_page}&page={}", s.base, page + 1));
            }
            Json(body).into_response()
        }
        "/repositories/team/repo-0/refs/branches" => {
            let all: Vec<Value> = (0..BRANCHES)
                .map(|i| json!({ "name": branch_name(i), "target": { "hash": "beef", "date": pushed_at(i) } }))
                .collect();
            let (page, per_page) = (param(q, "page", 1), param(q, "pagelen", 10));
            let (items, more) = page_of(&all, page, per_page);
            let mut body = json!({ "values": items, "page": page, "pagelen": per_page, "size": all.len() });
            if more {
                body["next"] = json!(format!("{}/repositories/team/repo-0/refs/branches?page={}", s.base, page + 1));
            }
            Json(body).into_response()
        }
        _ => not_found(),
    }
}
