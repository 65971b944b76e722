//! GitLab's REST API (v4) and, for merge requests in suggested tasks, its GraphQL API.

use super::{opt_text, text, Api, Branch, BranchPage, GitError, GitResult, Repository, SuggestedTask, User, MAX_ITEMS};
use serde_json::{json, Value};

const USER_MERGE_REQUESTS: &str = "query GetUserTasks {
  currentUser {
    authoredMergeRequests(state: opened, sort: UPDATED_DESC, first: 100) {
      nodes {
        iid title project { fullPath } conflicts
        pipelines(first: 1) { nodes { status } }
        discussions(first: 100) { nodes { notes { nodes { resolvable resolved } } } }
      }
    }
  }
}";

/// A project's id in a URL: `group/sub/name` percent-encoded, a leading domain removed.
fn project_id(repository: &str) -> String {
    let parts: Vec<&str> = repository.split('/').collect();
    let path = if parts.len() >= 3 && parts[0].contains('.') { parts[1..].join("/") } else { repository.to_owned() };
    path.replace('/', "%2F")
}

fn graphql_url(api: &Api) -> String {
    match api.base.strip_suffix("/api/v4") {
        Some(host) => format!("{host}/api/graphql"),
        None => format!("{}/graphql", api.base),
    }
}

pub(super) async fn user(api: &Api) -> GitResult<User> {
    let u = api.get("user", &[]).await?.body;
    Ok(User {
        id: text(&u["id"]),
        login: text(&u["username"]),
        avatar_url: text(&u["avatar_url"]),
        company: opt_text(&u["organization"]),
        name: opt_text(&u["name"]),
        email: opt_text(&u["email"]),
    })
}

fn parse_repository(r: &Value, link: Option<&str>) -> Repository {
    Repository {
        id: text(&r["id"]),
        full_name: text(&r["path_with_namespace"]),
        git_provider: "gitlab",
        is_public: r["visibility"] == "public",
        stargazers_count: r["star_count"].as_i64(),
        link_header: link.map(str::to_owned),
        pushed_at: opt_text(&r["last_activity_at"]),
        owner_type: Some(if r["namespace"]["kind"] == "group" { "organization" } else { "user" }),
        main_branch: opt_text(&r["default_branch"]),
    }
}

fn order_by(sort: &str) -> &'static str {
    match sort {
        "created" => "created_at",
        "full_name" => "name",
        _ => "last_activity_at",
    }
}

pub(super) async fn repository(api: &Api, name: &str) -> GitResult<Repository> {
    Ok(parse_repository(&api.get(&format!("projects/{}", project_id(name)), &[]).await?.body, None))
}

pub(super) async fn repositories_page(
    api: &Api,
    page: u32,
    per_page: u32,
    sort: &str,
    search: Option<&str>,
) -> GitResult<Vec<Repository>> {
    let mut query = vec![
        ("page", page.to_string()),
        ("per_page", per_page.to_string()),
        ("order_by", order_by(sort).to_owned()),
        ("sort", "desc".to_owned()),
        ("membership", "true".to_owned()),
    ];
    if let Some(search) = search {
        query.push(("search", search.to_owned()));
        query.push(("search_namespaces", "true".to_owned()));
    }
    let reply = api.get("projects", &query).await?;
    let link = reply.link.clone().unwrap_or_default();
    Ok(reply.body.as_array().into_iter().flatten().map(|r| parse_repository(r, Some(&link))).collect())
}

pub(super) async fn all_repositories(api: &Api, sort: &str) -> GitResult<Vec<Repository>> {
    let query = [
        ("per_page", "100".to_owned()),
        ("order_by", order_by(sort).to_owned()),
        ("sort", "desc".to_owned()),
        ("membership", "1".to_owned()),
    ];
    let repos = api.all_pages("projects", &query, None, MAX_ITEMS).await?;
    Ok(repos.iter().map(|r| parse_repository(r, None)).collect())
}

/// A pasted project URL finds that project; anything else searches the user's projects.
pub(super) async fn search_repositories(
    api: &Api,
    query: &str,
    per_page: u32,
    sort: &str,
    public: bool,
) -> GitResult<Vec<Repository>> {
    if public {
        let path = query.split_once("://").map_or(query, |(_, rest)| rest);
        let segments: Vec<&str> = path.split('/').skip(1).filter(|s| !s.is_empty()).collect();
        if segments.len() < 2 {
            return Ok(Vec::new());
        }
        return Ok(vec![repository(api, &segments.join("/")).await?]);
    }
    repositories_page(api, 1, per_page, sort, Some(query)).await
}

fn parse_branch(b: &Value) -> Branch {
    Branch {
        name: text(&b["name"]),
        commit_sha: text(&b["commit"]["id"]),
        protected: b["protected"].as_bool().unwrap_or(false),
        last_push_date: opt_text(&b["commit"]["committed_date"]),
    }
}

pub(super) async fn branches_page(api: &Api, repository: &str, page: u32, per_page: u32) -> GitResult<BranchPage> {
    let query = [("per_page", per_page.to_string()), ("page", page.to_string())];
    let reply = api.get(&format!("projects/{}/repository/branches", project_id(repository)), &query).await?;
    let branches = reply.body.as_array().into_iter().flatten().map(parse_branch).collect();
    Ok(BranchPage { branches, has_next_page: reply.has_next(), current_page: page, per_page, total_count: reply.total })
}

pub(super) async fn search_branches(api: &Api, repository: &str, query: &str, per_page: u32) -> GitResult<Vec<Branch>> {
    let q = [("per_page", per_page.to_string()), ("search", query.to_owned())];
    let reply = api.get(&format!("projects/{}/repository/branches", project_id(repository)), &q).await?;
    Ok(reply.body.as_array().into_iter().flatten().map(parse_branch).collect())
}

/// Authored merge requests that need work, and assigned open issues.
pub(super) async fn suggested_tasks(api: &Api) -> GitResult<Vec<SuggestedTask>> {
    let username = user(api).await?.login;
    let mut tasks = Vec::new();
    let data = api.graphql(&graphql_url(api), USER_MERGE_REQUESTS, json!({})).await?;
    for mr in data["currentUser"]["authoredMergeRequests"]["nodes"].as_array().into_iter().flatten() {
        let unresolved = mr["discussions"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["notes"]["nodes"].as_array().cloned().unwrap_or_default())
            .any(|n| n["resolvable"] == true && n["resolved"] != true);
        let task_type = if mr["conflicts"] == true {
            "MERGE_CONFLICTS"
        } else if mr["pipelines"]["nodes"][0]["status"] == "FAILED" {
            "FAILING_CHECKS"
        } else if unresolved {
            "UNRESOLVED_COMMENTS"
        } else {
            continue;
        };
        tasks.push(SuggestedTask {
            git_provider: "gitlab",
            task_type,
            repo: text(&mr["project"]["fullPath"]),
            issue_number: text(&mr["iid"]).parse().unwrap_or(0),
            title: text(&mr["title"]),
        });
    }
    let query =
        [("assignee_username", username), ("state", "opened".to_owned()), ("scope", "assigned_to_me".to_owned())];
    for issue in api.get("issues", &query).await?.body.as_array().into_iter().flatten() {
        let reference = text(&issue["references"]["full"]);
        tasks.push(SuggestedTask {
            git_provider: "gitlab",
            task_type: "OPEN_ISSUE",
            repo: reference.split('#').next().unwrap_or("").trim().to_owned(),
            issue_number: issue["iid"].as_i64().unwrap_or(0),
            title: text(&issue["title"]),
        });
    }
    Ok(tasks)
}

pub(super) async fn microagent_files(
    api: &Api,
    repository: &str,
    dir: &str,
) -> (GitResult<bool>, GitResult<Vec<(String, String)>>) {
    let id = project_id(repository);
    let cursorrules = api.get(&format!("projects/{id}/repository/files/.cursorrules/raw"), &[]).await.map(|_| true);
    let query = [("path", dir.to_owned()), ("recursive", "true".to_owned())];
    let listing = api.get(&format!("projects/{id}/repository/tree"), &query).await.map(|reply| {
        reply
            .body
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["type"] == "blob")
            .filter(|i| text(&i["name"]).ends_with(".md") && i["name"] != "README.md")
            .map(|i| (text(&i["name"]), text(&i["path"])))
            .collect()
    });
    (cursorrules, listing)
}

pub(super) async fn file(api: &Api, repository: &str, path: &str) -> GitResult<String> {
    let url = format!("projects/{}/repository/files/{}/raw", project_id(repository), path.replace('/', "%2F"));
    match api.get(&url, &[]).await?.body {
        Value::String(s) => Ok(s),
        other => Err(GitError::Failed(format!("GitLab answered {path} as JSON, not its text: {other}"))),
    }
}
