//! Bitbucket Cloud's REST API (2.0). Its lists page with a `next` URL in the body; the web
//! client reads `link_header`, so a page's `next` is restated as a `Link` header.

use super::{opt_text, text, Api, Branch, BranchPage, GitError, GitResult, Repository, User, MAX_ITEMS};
use serde_json::Value;

pub(super) async fn user(api: &Api) -> GitResult<User> {
    let u = api.get("user", &[]).await?.body;
    Ok(User {
        id: text(&u["account_id"]),
        login: text(&u["username"]),
        avatar_url: text(&u["links"]["avatar"]["href"]),
        company: None,
        name: opt_text(&u["display_name"]),
        email: None,
    })
}

fn parse_repository(r: &Value, link: Option<&str>) -> Repository {
    let (workspace, slug) = (text(&r["workspace"]["slug"]), text(&r["slug"]));
    let full_name = if workspace.is_empty() || slug.is_empty() { String::new() } else { format!("{workspace}/{slug}") };
    Repository {
        id: text(&r["uuid"]),
        full_name,
        git_provider: "bitbucket",
        is_public: !r["is_private"].as_bool().unwrap_or(true),
        stargazers_count: None,
        link_header: link.map(str::to_owned),
        pushed_at: opt_text(&r["updated_on"]),
        owner_type: Some("organization"),
        main_branch: opt_text(&r["mainbranch"]["name"]),
    }
}

fn sort_key(sort: &str) -> &'static str {
    match sort {
        "created" => "-created_on",
        "full_name" => "name",
        _ => "-updated_on",
    }
}

/// Bitbucket's query language quotes with `"`; a quote in the user's text would end it.
fn name_contains(query: &str) -> String {
    format!("name~\"{}\"", query.replace(['"', '\\'], ""))
}

pub(super) async fn repository(api: &Api, name: &str) -> GitResult<Repository> {
    Ok(parse_repository(&api.get(&format!("repositories/{name}"), &[]).await?.body, None))
}

/// The workspaces (OpenHands' Bitbucket "installations") the user can see.
pub(super) async fn workspaces(api: &Api, query: Option<&str>) -> GitResult<Vec<String>> {
    let q: Vec<(&str, String)> = query.map(|q| ("q", name_contains(q))).into_iter().collect();
    let all = api.all_values("workspaces", &q, 100).await?;
    Ok(all.iter().map(|w| text(&w["slug"])).collect())
}

/// A page of one workspace's repositories; none without a workspace.
pub(super) async fn repositories_page(
    api: &Api,
    page: u32,
    per_page: u32,
    sort: &str,
    workspace: Option<&str>,
    search: Option<&str>,
) -> GitResult<Vec<Repository>> {
    let Some(workspace) = workspace else { return Ok(Vec::new()) };
    let path = format!("repositories/{workspace}");
    let mut query =
        vec![("pagelen", per_page.to_string()), ("page", page.to_string()), ("sort", sort_key(sort).to_owned())];
    if let Some(search) = search {
        query.push(("q", name_contains(search)));
    }
    let reply = api.get(&path, &query).await?;
    let link = reply.body["next"].as_str().map(|next| {
        let page = next.split(['?', '&']).find_map(|kv| kv.strip_prefix("page="));
        match page {
            Some(page) => format!("<{}?page={page}>; rel=\"next\"", api.url(&path)),
            None => format!("<{next}>; rel=\"next\""),
        }
    });
    let link = link.unwrap_or_default();
    Ok(reply.body["values"].as_array().into_iter().flatten().map(|r| parse_repository(r, Some(&link))).collect())
}

pub(super) async fn all_repositories(api: &Api, sort: &str) -> GitResult<Vec<Repository>> {
    let mut repos = Vec::new();
    for workspace in api.all_values("workspaces", &[], MAX_ITEMS).await? {
        let slug = text(&workspace["slug"]);
        if slug.is_empty() {
            continue;
        }
        let query = [("pagelen", "100".to_owned()), ("sort", sort_key(sort).to_owned())];
        let left = MAX_ITEMS - repos.len();
        repos.extend(api.all_values(&format!("repositories/{slug}"), &query, left).await?);
        if repos.len() >= MAX_ITEMS {
            break;
        }
    }
    Ok(repos.iter().map(|r| parse_repository(r, None)).collect())
}

/// A pasted URL finds that repository; `workspace/name` searches one workspace; a bare
/// word lists workspaces whose slug contains it and searches every workspace by name.
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
        return match segments.as_slice() {
            [workspace, name, ..] => Ok(vec![repository(api, &format!("{workspace}/{name}")).await?]),
            _ => Ok(Vec::new()),
        };
    }
    if let Some((workspace, name)) = query.split_once('/') {
        return repositories_page(api, 1, per_page, sort, Some(workspace), Some(name)).await;
    }
    let all = workspaces(api, None).await?;
    let mut repos = Vec::new();
    for workspace in all.iter().filter(|w| w.contains(query)) {
        repos.extend(repositories_page(api, 1, per_page, sort, Some(workspace), None).await.unwrap_or_default());
    }
    for workspace in &all {
        repos.extend(repositories_page(api, 1, per_page, sort, Some(workspace), Some(query)).await.unwrap_or_default());
    }
    Ok(repos)
}

fn parse_branch(b: &Value) -> Branch {
    Branch {
        name: text(&b["name"]),
        commit_sha: text(&b["target"]["hash"]),
        protected: false, // not in Bitbucket's branch answer
        last_push_date: opt_text(&b["target"]["date"]),
    }
}

fn owner_and_name(repository: &str) -> String {
    let parts: Vec<&str> = repository.split('/').collect();
    parts[parts.len().saturating_sub(2)..].join("/")
}

pub(super) async fn branches_page(api: &Api, repository: &str, page: u32, per_page: u32) -> GitResult<BranchPage> {
    let query = [("pagelen", per_page.to_string()), ("page", page.to_string()), ("sort", "-target.date".to_owned())];
    let reply = api.get(&format!("repositories/{}/refs/branches", owner_and_name(repository)), &query).await?;
    Ok(BranchPage {
        branches: reply.body["values"].as_array().into_iter().flatten().map(parse_branch).collect(),
        has_next_page: !reply.body["next"].is_null(),
        current_page: page,
        per_page,
        total_count: reply.body["size"].as_i64(),
    })
}

pub(super) async fn search_branches(api: &Api, repository: &str, query: &str, per_page: u32) -> GitResult<Vec<Branch>> {
    let q = [("pagelen", per_page.to_string()), ("q", name_contains(query)), ("sort", "-target.date".to_owned())];
    let reply = api.get(&format!("repositories/{}/refs/branches", owner_and_name(repository)), &q).await?;
    Ok(reply.body["values"].as_array().into_iter().flatten().map(parse_branch).collect())
}

/// Files live under the main branch: `src/{branch}/{path}`.
async fn main_branch(api: &Api, repository: &str) -> GitResult<String> {
    let r = api.get(&format!("repositories/{repository}"), &[]).await?.body;
    opt_text(&r["mainbranch"]["name"])
        .ok_or_else(|| GitError::NotFound(format!("{repository} has no main branch (an empty repository?)")))
}

pub(super) async fn microagent_files(
    api: &Api,
    repository: &str,
    dir: &str,
) -> (GitResult<bool>, GitResult<Vec<(String, String)>>) {
    let branch = match main_branch(api, repository).await {
        Ok(b) => b,
        Err(e) => return (Ok(false), Err(e)),
    };
    let src = format!("repositories/{repository}/src/{branch}");
    let cursorrules = api.get(&format!("{src}/.cursorrules"), &[]).await.map(|_| true);
    let listing = api.all_values(&format!("{src}/{dir}"), &[], MAX_ITEMS).await.map(|items| {
        items
            .iter()
            .filter(|i| i["type"] == "commit_file")
            .map(|i| text(&i["path"]))
            .filter(|p| p.ends_with(".md") && !p.ends_with("README.md"))
            .map(|p| (p.rsplit('/').next().unwrap_or(&p).to_owned(), p.clone()))
            .collect()
    });
    (cursorrules, listing)
}

pub(super) async fn file(api: &Api, repository: &str, path: &str) -> GitResult<String> {
    let branch = main_branch(api, repository).await?;
    match api.get(&format!("repositories/{repository}/src/{branch}/{path}"), &[]).await?.body {
        Value::String(s) => Ok(s),
        other => Ok(other.to_string()),
    }
}
