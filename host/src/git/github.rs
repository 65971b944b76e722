//! GitHub's REST API (v3) and, for branch search and suggested tasks, its GraphQL API.

use super::{opt_text, text, Api, Branch, BranchPage, GitError, GitResult, Repository, SuggestedTask, User, MAX_ITEMS};
use serde_json::{json, Value};

const SEARCH_BRANCHES: &str = "query SearchBranches($owner: String!, $name: String!, $query: String!, $perPage: Int!) {
  repository(owner: $owner, name: $name) {
    refs(refPrefix: \"refs/heads/\", query: $query, first: $perPage, orderBy: {field: ALPHABETICAL, direction: ASC}) {
      nodes { name target { __typename ... on Commit { oid committedDate } } }
    }
  }
}";

const USER_PRS: &str = "query GetUserPRs($login: String!) {
  user(login: $login) {
    pullRequests(first: 50, states: [OPEN], orderBy: {field: UPDATED_AT, direction: DESC}) {
      nodes {
        number title repository { nameWithOwner } mergeable
        commits(last: 1) { nodes { commit { statusCheckRollup { state } } } }
        reviews(first: 50, states: [CHANGES_REQUESTED, COMMENTED]) { nodes { state } }
      }
    }
  }
}";

const USER_ISSUES: &str = "query GetUserIssues($login: String!) {
  user(login: $login) {
    issues(first: 50, states: [OPEN], filterBy: {assignee: $login}, orderBy: {field: UPDATED_AT, direction: DESC}) {
      nodes { number title repository { nameWithOwner } }
    }
  }
}";

/// `https://api.github.com/graphql`, or `https://host/api/graphql` for an Enterprise server.
fn graphql_url(api: &Api) -> String {
    match api.base.strip_suffix("/api/v3") {
        Some(host) => format!("{host}/api/graphql"),
        None => format!("{}/graphql", api.base),
    }
}

pub(super) async fn user(api: &Api) -> GitResult<User> {
    let u = api.get("user", &[]).await?.body;
    Ok(User {
        id: text(&u["id"]),
        login: text(&u["login"]),
        avatar_url: text(&u["avatar_url"]),
        company: opt_text(&u["company"]),
        name: opt_text(&u["name"]),
        email: opt_text(&u["email"]),
    })
}

fn parse_repository(r: &Value, link: Option<&str>) -> Repository {
    Repository {
        id: text(&r["id"]),
        full_name: text(&r["full_name"]),
        git_provider: "github",
        is_public: !r["private"].as_bool().unwrap_or(true),
        stargazers_count: r["stargazers_count"].as_i64(),
        link_header: link.map(str::to_owned),
        pushed_at: opt_text(&r["pushed_at"]),
        owner_type: Some(if r["owner"]["type"] == "Organization" { "organization" } else { "user" }),
        main_branch: opt_text(&r["default_branch"]),
    }
}

pub(super) async fn repository(api: &Api, name: &str) -> GitResult<Repository> {
    Ok(parse_repository(&api.get(&format!("repos/{name}"), &[]).await?.body, None))
}

pub(super) async fn repositories_page(
    api: &Api,
    page: u32,
    per_page: u32,
    sort: &str,
    installation: Option<&str>,
) -> GitResult<Vec<Repository>> {
    let mut query = vec![("page", page.to_string()), ("per_page", per_page.to_string())];
    let (reply, list) = match installation {
        Some(id) => {
            let reply = api.get(&format!("user/installations/{id}/repositories"), &query).await?;
            let list = reply.body["repositories"].as_array().cloned().unwrap_or_default();
            (reply, list)
        }
        None => {
            query.push(("sort", sort.to_owned()));
            let reply = api.get("user/repos", &query).await?;
            let list = reply.body.as_array().cloned().unwrap_or_default();
            (reply, list)
        }
    };
    let link = reply.link.clone().unwrap_or_default();
    Ok(list.iter().map(|r| parse_repository(r, Some(&link))).collect())
}

pub(super) async fn installations(api: &Api) -> GitResult<Vec<String>> {
    let reply = api.get("user/installations", &[]).await?;
    Ok(reply.body["installations"].as_array().into_iter().flatten().map(|i| text(&i["id"])).collect())
}

/// In SaaS mode the repositories of the GitHub App's installations (newest push first when
/// sorted by `pushed`); otherwise the user's own list.
pub(super) async fn all_repositories(api: &Api, sort: &str) -> GitResult<Vec<Repository>> {
    let per_page = ("per_page", "100".to_owned());
    let mut repos = Vec::new();
    if api.saas {
        for id in installations(api).await? {
            let path = format!("user/installations/{id}/repositories");
            let left = MAX_ITEMS - repos.len();
            repos.extend(api.all_pages(&path, std::slice::from_ref(&per_page), Some("repositories"), left).await?);
            if repos.len() >= MAX_ITEMS {
                break;
            }
        }
        if sort == "pushed" {
            repos.sort_by(|a, b| text(&b["pushed_at"]).cmp(&text(&a["pushed_at"])));
        }
    } else {
        repos = api.all_pages("user/repos", &[per_page, ("sort", sort.to_owned())], None, MAX_ITEMS).await?;
    }
    Ok(repos.iter().map(|r| parse_repository(r, None)).collect())
}

async fn search(api: &Api, q: String, per_page: u32, sort: &str, order: &str) -> GitResult<Vec<Value>> {
    let query = [("q", q), ("per_page", per_page.to_string()), ("sort", sort.to_owned()), ("order", order.to_owned())];
    Ok(api.get("search/repositories", &query).await?.body["items"].as_array().cloned().unwrap_or_default())
}

/// OpenHands' search: a pasted URL finds that public repository; `org/name` searches the
/// organization; a bare word searches the user's repositories and those of their
/// organizations (plus two top repositories of an organization whose name matches).
pub(super) async fn search_repositories(
    api: &Api,
    query: &str,
    per_page: u32,
    sort: &str,
    order: &str,
    public: bool,
) -> GitResult<Vec<Repository>> {
    let items = if public {
        let parts: Vec<&str> = query.split('/').collect();
        if parts.len() < 5 {
            return Ok(Vec::new());
        }
        search(api, format!("in:name {}/{} is:public", parts[3], parts[4]), per_page, sort, order).await?
    } else if let Some((org, name)) = query.split_once('/') {
        search(api, format!("org:{org} in:name {name}"), per_page, sort, order).await?
    } else {
        let login = user(api).await?.login;
        let orgs = organizations(api).await;
        let mut items = Vec::new();
        let searches = std::iter::once(format!("in:name {query} user:{login}"))
            .chain(orgs.iter().map(|org| format!("{query} org:{org}")));
        for q in searches {
            match search(api, q, per_page, sort, order).await {
                Ok(found) => items.extend(found),
                Err(e) => tracing::warn!(error = %e, "a GitHub repository search failed"),
            }
        }
        for org in orgs.iter().filter(|org| fuzzy_match(query, org)) {
            match search(api, format!("org:{org}"), 2, "stars", order).await {
                Ok(found) => items.extend(found),
                Err(e) => tracing::warn!(error = %e, "a GitHub organization search failed"),
            }
        }
        items
    };
    Ok(items.iter().map(|r| parse_repository(r, None)).collect())
}

/// The organizations to search: the App's installations in SaaS mode, the user's
/// memberships otherwise. A failure here only narrows the search.
async fn organizations(api: &Api) -> Vec<String> {
    let found = if api.saas {
        api.get("user/installations", &[]).await.map(|r| {
            r.body["installations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["account"]["type"] == "Organization")
                .map(|i| text(&i["account"]["login"]))
                .collect()
        })
    } else {
        api.get("user/orgs", &[])
            .await
            .map(|r| r.body.as_array().into_iter().flatten().map(|o| text(&o["login"])).collect())
    };
    found.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot list the user's GitHub organizations");
        Vec::new()
    })
}

fn fuzzy_match(query: &str, org: &str) -> bool {
    let norm = |s: &str| s.to_lowercase().replace(['-', '_', ' '], "");
    let (q, o) = (norm(query), norm(org));
    q.contains(&o) || o.contains(&q)
}

fn parse_branch(b: &Value) -> Branch {
    Branch {
        name: text(&b["name"]),
        commit_sha: text(&b["commit"]["sha"]),
        protected: b["protected"].as_bool().unwrap_or(false),
        last_push_date: opt_text(&b["commit"]["commit"]["committer"]["date"]),
    }
}

pub(super) async fn branches_page(api: &Api, repository: &str, page: u32, per_page: u32) -> GitResult<BranchPage> {
    let query = [("per_page", per_page.to_string()), ("page", page.to_string())];
    let reply = api.get(&format!("repos/{repository}/branches"), &query).await?;
    let branches = reply.body.as_array().into_iter().flatten().map(parse_branch).collect();
    Ok(BranchPage { branches, has_next_page: reply.has_next(), current_page: page, per_page, total_count: None })
}

pub(super) async fn search_branches(api: &Api, repository: &str, query: &str, per_page: u32) -> GitResult<Vec<Branch>> {
    let parts: Vec<&str> = repository.split('/').collect();
    if query.is_empty() || parts.len() < 2 {
        return Ok(Vec::new());
    }
    let variables = json!({
        "owner": parts[parts.len() - 2], "name": parts[parts.len() - 1],
        "query": query, "perPage": per_page.clamp(1, 100),
    });
    let data = api.graphql(&graphql_url(api), SEARCH_BRANCHES, variables).await?;
    let nodes = data["repository"]["refs"]["nodes"].as_array().cloned().unwrap_or_default();
    Ok(nodes
        .iter()
        .map(|n| {
            let commit = n["target"]["__typename"] == "Commit";
            Branch {
                name: text(&n["name"]),
                commit_sha: if commit { text(&n["target"]["oid"]) } else { String::new() },
                protected: !n["branchProtectionRule"].is_null(),
                last_push_date: if commit { opt_text(&n["target"]["committedDate"]) } else { None },
            }
        })
        .collect())
}

/// The user's open pull requests that need work (conflicts, failing checks, review
/// comments) and their assigned open issues.
pub(super) async fn suggested_tasks(api: &Api) -> GitResult<Vec<SuggestedTask>> {
    let login = user(api).await?.login;
    let url = graphql_url(api);
    let variables = json!({ "login": login });
    let mut tasks = Vec::new();
    match api.graphql(&url, USER_PRS, variables.clone()).await {
        Ok(data) => {
            for pr in data["user"]["pullRequests"]["nodes"].as_array().into_iter().flatten() {
                let rollup = &pr["commits"]["nodes"][0]["commit"]["statusCheckRollup"]["state"];
                let reviewed = pr["reviews"]["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["state"] == "CHANGES_REQUESTED" || r["state"] == "COMMENTED");
                let task_type = if pr["mergeable"] == "CONFLICTING" {
                    "MERGE_CONFLICTS"
                } else if rollup == "FAILURE" {
                    "FAILING_CHECKS"
                } else if reviewed {
                    "UNRESOLVED_COMMENTS"
                } else {
                    continue;
                };
                tasks.push(task(task_type, &pr["repository"]["nameWithOwner"], pr));
            }
        }
        Err(e @ GitError::Unauthorized(_)) => return Err(e),
        Err(e) => tracing::info!(error = %e, "cannot read the user's pull requests for suggested tasks"),
    }
    match api.graphql(&url, USER_ISSUES, variables).await {
        Ok(data) => {
            for issue in data["user"]["issues"]["nodes"].as_array().into_iter().flatten() {
                tasks.push(task("OPEN_ISSUE", &issue["repository"]["nameWithOwner"], issue));
            }
        }
        Err(e) => tracing::info!(error = %e, "cannot read the user's issues for suggested tasks"),
    }
    Ok(tasks)
}

fn task(task_type: &'static str, repo: &Value, item: &Value) -> SuggestedTask {
    SuggestedTask {
        git_provider: "github",
        task_type,
        repo: text(repo),
        issue_number: item["number"].as_i64().unwrap_or(0),
        title: text(&item["title"]),
    }
}

/// Whether `.cursorrules` exists, and the microagent files of `dir` as `(name, path)`.
pub(super) async fn microagent_files(
    api: &Api,
    repository: &str,
    dir: &str,
) -> (GitResult<bool>, GitResult<Vec<(String, String)>>) {
    let cursorrules = api.get(&format!("repos/{repository}/contents/.cursorrules"), &[]).await.map(|_| true);
    let listing = api.get(&format!("repos/{repository}/contents/{dir}"), &[]).await.map(|reply| {
        reply
            .body
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["type"] == "file")
            .map(|i| text(&i["name"]))
            .filter(|name| name.ends_with(".md") && name != "README.md")
            .map(|name| (name.clone(), format!("{dir}/{name}")))
            .collect()
    });
    (cursorrules, listing)
}

/// A file's text (the contents API answers it base64-encoded).
pub(super) async fn file(api: &Api, repository: &str, path: &str) -> GitResult<String> {
    use base64::{engine::general_purpose::STANDARD, Engine as _};
    let reply = api.get(&format!("repos/{repository}/contents/{path}"), &[]).await?;
    let encoded: String = text(&reply.body["content"]).split_whitespace().collect();
    let bytes = STANDARD
        .decode(encoded)
        .map_err(|e| GitError::Failed(format!("GitHub answered file content that is not base64: {e}")))?;
    String::from_utf8(bytes).map_err(|_| GitError::Failed(format!("{path} is not UTF-8 text")))
}
