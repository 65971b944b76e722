//! `/api/user/*` against fake GitHub, GitLab and Bitbucket servers: the user's stored
//! provider token reaches the provider, lists page as the web client expects, and provider
//! errors come back with OpenHands' statuses.

use oh_e2e::{
    git::{FakeProvider, Kind, BRANCHES, REPOSITORIES},
    Deployment, TestHost,
};
use serde_json::{json, Value};

struct Providers {
    github: FakeProvider,
    gitlab: FakeProvider,
    bitbucket: FakeProvider,
}

async fn setup() -> (Deployment, TestHost, Providers) {
    let providers = Providers {
        github: FakeProvider::start(Kind::GitHub, "ghp_good").await,
        gitlab: FakeProvider::start(Kind::GitLab, "glpat_good").await,
        bitbucket: FakeProvider::start(Kind::Bitbucket, "bb_good").await,
    };
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile(
        &format!(
            "github_api_url = \"{}\"\ngitlab_api_url = \"{}\"\nbitbucket_api_url = \"{}\"\n",
            providers.github.api_url, providers.gitlab.api_url, providers.bitbucket.api_url
        ),
        "",
    );
    let host = d.start();
    (d, host, providers)
}

async fn set_tokens(host: &TestHost, tokens: Value) {
    let r = host.post_json("/api/add-git-providers", &json!({ "provider_tokens": tokens })).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

fn names(repos: &Value) -> Vec<String> {
    repos.as_array().unwrap().iter().map(|r| r["full_name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn without_tokens_the_answers_are_openhands_defaults() {
    let (_d, host, providers) = setup().await;
    for (path, message) in [
        ("/api/user/info", "Git provider token required. (such as GitHub)."),
        ("/api/user/repositories?sort=pushed", "Git provider token required. (such as GitHub)."),
        ("/api/user/installations?provider=github", "Git provider token required. (such as GitHub)."),
        ("/api/user/repository/branches?repository=octo/repo-0", "Git provider token required. (such as GitHub)."),
        ("/api/user/search/repositories?query=x", "Git provider token required."),
        ("/api/user/search/branches?repository=octo/repo-0&query=f", "Git provider token required."),
        ("/api/user/suggested-tasks", "No providers set."),
    ] {
        let r = host.get(path).await;
        assert_eq!((r.status, r.json()), (401, json!(message)), "{path}");
    }
    assert_eq!(host.get("/api/user/repository/octo/repo-0/microagents").await.json(), json!([]));
    assert!(providers.github.seen().is_empty(), "nothing is called without a token");
}

#[tokio::test]
async fn github_lists_page_as_the_web_client_expects() {
    let (_d, host, gh) = setup().await;
    let gh = &gh.github;
    set_tokens(&host, json!({ "github": { "token": "ghp_good", "host": "" } })).await;

    let user = host.get("/api/user/info").await;
    assert_eq!(user.status, 200, "{}", user.text);
    assert_eq!(
        user.json(),
        json!({ "id": "583231", "login": "octocat", "avatar_url": "https://avatars.example/octocat.png",
                "company": "@github", "name": "The Octocat", "email": null })
    );
    assert!(gh.seen().iter().all(|s| s.authorization == "Bearer ghp_good"));

    // The repository picker: page by page, following `link_header`.
    let first = host.get("/api/user/repositories?selected_provider=github&sort=pushed&page=1&per_page=30").await.json();
    assert_eq!(names(&first).len(), 30);
    assert_eq!(first[0]["full_name"], "octo/repo-0");
    assert_eq!(first[0]["git_provider"], "github");
    assert_eq!(first[0]["owner_type"], "organization");
    assert_eq!((first[1]["is_public"].as_bool(), first[0]["main_branch"].as_str()), (Some(false), Some("main")));
    let link = first[0]["link_header"].as_str().unwrap();
    assert!(link.contains("page=2") && link.contains("rel=\"next\""), "{link}");
    let asked = gh.seen_at("/user/repos").pop().unwrap();
    assert_eq!((asked.query["sort"].as_str(), asked.query["per_page"].as_str()), ("pushed", "30"));
    let second =
        host.get("/api/user/repositories?selected_provider=github&sort=pushed&page=2&per_page=30").await.json();
    assert_eq!(names(&second).len(), REPOSITORIES - 30);
    assert!(!second[0]["link_header"].as_str().unwrap().contains("next"), "the last page has no next");
    // Without a provider: every repository, every page walked.
    let all = host.get("/api/user/repositories?sort=pushed").await.json();
    assert_eq!(names(&all).len(), REPOSITORIES);
    let bad = host.get("/api/user/repositories?selected_provider=github&page=0&per_page=30").await;
    assert_eq!(bad.status, 400, "{}", bad.text);

    // Branches: 35 in pages of 30.
    let page = host.get("/api/user/repository/branches?repository=octo%2Frepo-0&page=1&per_page=30").await.json();
    assert_eq!((page["branches"].as_array().unwrap().len(), page["has_next_page"].as_bool()), (30, Some(true)));
    assert_eq!(
        page["branches"][0],
        json!({ "name": "main", "commit_sha": format!("{:040x}", 0), "protected": true, "last_push_date": "2026-10-28T12:00:00Z" })
    );
    let last = host.get("/api/user/repository/branches?repository=octo%2Frepo-0&page=2&per_page=30").await.json();
    assert_eq!(
        (last["branches"].as_array().unwrap().len(), last["has_next_page"].as_bool()),
        (BRANCHES - 30, Some(false))
    );
    assert_eq!((last["current_page"].as_u64(), last["per_page"].as_u64()), (Some(2), Some(30)));
    // A repository no provider knows: an empty page, as OpenHands answers.
    let none = host.get("/api/user/repository/branches?repository=octo/nope").await.json();
    assert_eq!(
        none,
        json!({ "branches": [], "has_next_page": false, "current_page": 1, "per_page": 30, "total_count": 0 })
    );
    let hostile = host.get("/api/user/repository/branches?repository=octo/../../admin").await;
    assert_eq!(hostile.status, 422);

    // Searches.
    let found = host.get("/api/user/search/repositories?query=repo-4&per_page=5&selected_provider=github").await.json();
    assert_eq!(names(&found), vec!["octo/repo-4", "octo/repo-40", "octo/repo-41", "octo/repo-42", "octo/repo-43"]);
    let queries: Vec<String> = gh.seen_at("/search/repositories").iter().map(|s| s.query["q"].clone()).collect();
    assert!(queries.contains(&"in:name repo-4 user:octocat".to_owned()), "{queries:?}");
    assert!(queries.contains(&"repo-4 org:octo-org".to_owned()), "{queries:?}");
    let pasted = host
        .get("/api/user/search/repositories?query=https://github.com/octo/repo-3&selected_provider=github")
        .await
        .json();
    assert_eq!(names(&pasted)[0], "octo/repo-3");
    let branches = host
        .get("/api/user/search/branches?repository=octo/repo-0&query=feature-3&selected_provider=github")
        .await
        .json();
    let branch_names: Vec<&str> = branches.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(branch_names, vec!["feature-3", "feature-30", "feature-31", "feature-32", "feature-33", "feature-34"]);

    // Suggested tasks: PRs that need work and assigned issues, never a PR that is fine.
    let tasks = host.get("/api/user/suggested-tasks").await.json();
    let kinds: Vec<(&str, i64)> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["task_type"].as_str().unwrap(), t["issue_number"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![("MERGE_CONFLICTS", 1), ("FAILING_CHECKS", 2), ("UNRESOLVED_COMMENTS", 3), ("OPEN_ISSUE", 9)]
    );
    assert_eq!(
        tasks[3],
        json!({ "git_provider": "github", "task_type": "OPEN_ISSUE", "repo": "octo/repo-2", "issue_number": 9, "title": "Crash on start" })
    );

    assert_eq!(host.get("/api/user/installations?provider=github").await.json(), json!(["1234"]));
    let gitlab = host.get("/api/user/installations?provider=gitlab").await;
    assert_eq!(gitlab.status, 400);

    // Microagents: .cursorrules and the .md files of .openhands/microagents, README excepted.
    let agents = host.get("/api/user/repository/octo/repo-0/microagents").await.json();
    let paths: Vec<&str> = agents.as_array().unwrap().iter().map(|m| m["path"].as_str().unwrap()).collect();
    assert_eq!(paths, vec![".cursorrules", ".openhands/microagents/deploy.md"]);
    assert_eq!(agents[1]["name"], "deploy");
    let content = host
        .get("/api/user/repository/octo/repo-0/microagents/content?file_path=.openhands/microagents/deploy.md")
        .await
        .json();
    assert_eq!(
        content,
        json!({ "content": "Run `make deploy`.", "path": ".openhands/microagents/deploy.md", "triggers": ["deploy", "ship"], "git_provider": "github" })
    );
    let missing = host.get("/api/user/repository/octo/repo-0/microagents/content?file_path=nope.md").await;
    assert_eq!((missing.status, missing.json()), (401, json!("Microagent file nope.md not found in octo/repo-0")));
}

#[tokio::test]
async fn a_refused_token_is_401_and_other_providers_still_answer() {
    let (_d, host, p) = setup().await;
    set_tokens(&host, json!({ "github": { "token": "ghp_revoked" }, "gitlab": { "token": "glpat_good" } })).await;
    let refused = host.get("/api/user/repositories?selected_provider=github&sort=pushed&page=1&per_page=30").await;
    assert_eq!((refused.status, refused.json()), (401, json!("Invalid github token")));
    // The user comes from the first provider that answers.
    assert_eq!(host.get("/api/user/info").await.json()["login"], "tanuki");
    // Lists across providers skip the one that refuses.
    let all = host.get("/api/user/repositories?sort=pushed").await.json();
    assert_eq!(names(&all).len(), REPOSITORIES);
    assert!(names(&all).iter().all(|n| n.starts_with("group/sub/")));
    assert!(p.github.seen().iter().all(|s| s.authorization == "Bearer ghp_revoked"));

    set_tokens(&host, json!({ "github": { "token": "ghp_revoked" } })).await;
    let nobody = host.get("/api/user/info").await;
    assert_eq!((nobody.status, nobody.json()), (401, json!("Need valid provider token")));
    let missing = host.get("/api/user/repositories?selected_provider=gitlab&page=1&per_page=10").await;
    assert_eq!(missing.status, 401, "{}", missing.text);
}

#[tokio::test]
async fn gitlab_and_bitbucket_page_their_own_ways() {
    let (_d, host, p) = setup().await;
    set_tokens(&host, json!({ "gitlab": { "token": "glpat_good" }, "bitbucket": { "token": "bb_good" } })).await;

    let user = host.get("/api/user/info").await.json();
    assert_eq!((user["login"].as_str(), user["company"].as_str()), (Some("tanuki"), Some("GitLab")));

    // GitLab: `Link` headers and X-Total; subgroups in names.
    let page = host.get("/api/user/repositories?selected_provider=gitlab&sort=pushed&page=1&per_page=20").await.json();
    assert_eq!(names(&page).len(), 20);
    assert_eq!(page[0]["full_name"], "group/sub/project-0");
    assert_eq!((page[0]["owner_type"].as_str(), page[0]["is_public"].as_bool()), (Some("organization"), Some(true)));
    assert!(page[0]["link_header"].as_str().unwrap().contains("rel=\"next\""));
    let asked = p.gitlab.seen_at("/api/v4/projects").pop().unwrap();
    assert_eq!((asked.query["order_by"].as_str(), asked.query["membership"].as_str()), ("last_activity_at", "true"));
    let branches =
        host.get("/api/user/repository/branches?repository=group/sub/project-0&page=1&per_page=30").await.json();
    assert_eq!(
        (branches["has_next_page"].as_bool(), branches["total_count"].as_i64()),
        (Some(true), Some(BRANCHES as i64))
    );
    let search = host
        .get("/api/user/search/branches?repository=group/sub/project-0&query=feature-2&selected_provider=gitlab")
        .await
        .json();
    assert_eq!(search.as_array().unwrap().len(), 11, "feature-2 and feature-20…29: {search}");
    let tasks = host.get("/api/user/suggested-tasks").await.json();
    let kinds: Vec<&str> = tasks.as_array().unwrap().iter().map(|t| t["task_type"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["MERGE_CONFLICTS", "UNRESOLVED_COMMENTS", "OPEN_ISSUE"]);
    assert_eq!(tasks[2]["repo"], "group/sub/project-3");

    // Bitbucket: workspaces are its installations; its `next` becomes a Link header.
    assert_eq!(host.get("/api/user/installations?provider=bitbucket").await.json(), json!(["team"]));
    let first = host
        .get("/api/user/repositories?selected_provider=bitbucket&sort=pushed&page=1&per_page=10&installation_id=team")
        .await
        .json();
    assert_eq!(names(&first)[0], "team/repo-0");
    assert_eq!(
        first[0]["link_header"].as_str().unwrap(),
        format!("<{}/repositories/team?page=2>; rel=\"next\"", p.bitbucket.api_url)
    );
    let asked = p.bitbucket.seen_at("/2.0/repositories/team").pop().unwrap();
    assert_eq!(asked.query["sort"], "-updated_on");
    let bb_branches = host.get("/api/user/repository/branches?repository=team/repo-0&page=4&per_page=10").await.json();
    assert_eq!(bb_branches["branches"].as_array().unwrap().len(), BRANCHES - 30);
    assert_eq!(bb_branches["has_next_page"], false);
}

#[tokio::test]
async fn the_microagent_page_lists_its_conversations_without_closed_pull_requests() {
    let (d, host, _p) = setup().await;
    let llm = oh_e2e::llm::FakeLlm::start().await;
    let settings = json!({ "llm_model": "fake-model", "llm_base_url": llm.base_url, "llm_api_key": "sk-test" });
    assert_eq!(host.post_json("/api/settings", &settings).await.status, 200);
    set_tokens(&host, json!({ "github": { "token": "ghp_good" } })).await;
    let create = |microagent: bool| {
        let mut body = json!({ "repository": "octo/repo-0", "git_provider": "github" });
        if microagent {
            body["create_microagent"] = json!({ "repo": "octo/repo-0", "git_provider": "github" });
        }
        body
    };
    let mut ids = Vec::new();
    for microagent in [true, true, true, false] {
        let r = host.post_json("/api/conversations", &create(microagent)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        ids.push(r.json()["conversation_id"].as_str().unwrap().to_owned());
    }
    // The agent opened pull requests from two of them: 1 (open) and 2 (merged since),
    // written into their files while the server is down (no route sets them); the restarted
    // server's first search finds the files changed and re-reads them.
    host.stop();
    for (id, pr) in [(&ids[0], 1), (&ids[1], 2)] {
        let path = oh_e2e::files_containing(&d.state_dir(), id)
            .into_iter()
            .find(|p| p.ends_with("metadata.json"))
            .expect("the conversation's metadata file");
        let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        m["pr_number"] = json!([pr]);
        std::fs::write(&path, m.to_string()).unwrap();
    }
    let host = d.start();
    let listed = host.get("/api/microagent-management/conversations?selected_repository=octo/repo-0").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let mut got: Vec<String> = listed.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversation_id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want = vec![ids[0].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(got, want, "microagent conversations of the repository, the merged one left out");
    let other = host.get("/api/microagent-management/conversations?selected_repository=octo/repo-1").await.json();
    assert_eq!(other["results"], json!([]));
    let missing = host.get("/api/microagent-management/conversations").await;
    assert_eq!(missing.status, 400, "the repository is required");
    assert!(missing.text.contains("selected_repository"), "{}", missing.text);
}

const ALICE: &str = "alice-gitlab-sync-key-0123456789";
const BOB: &str = "bob-gitlab-sync-key-0123456789";

/// SaaS: `saas_auth` keeps each user's GitLab projects in PostgreSQL; the picker and search
/// are served from there, refreshed when older than the interval.
#[tokio::test]
async fn gitlab_projects_are_synced_into_postgresql_and_the_picker_and_search_served_from_there() {
    let db = oh_e2e::pg::TestDb::create().await;
    let gitlab = FakeProvider::start(Kind::GitLab, "glpat_good").await;
    let github = FakeProvider::start(Kind::GitHub, "ghp_good").await;
    let d = Deployment::new();
    d.install_bundled();
    let stores = format!("{{ database_url = \"{}\", master_key = \"gitlab-sync-test-master-key-0123\" }}", db.url);
    let auth = format!(
        "{{ database_url = \"{}\", rate_limit_per_second = 0, rate_limit_per_minute = 0, redis_key_prefix = \"{}\", \
         static_keys = [{{ user_id = \"alice\", sha256 = \"{}\" }}, {{ user_id = \"bob\", sha256 = \"{}\" }}], \
         gitlab_repository_sync = true, gitlab_api_url = \"{}\", gitlab_sync_interval_secs = 1 }}",
        db.url,
        oh_e2e::redis::prefix("gls"),
        oh_e2e::sha256_hex(ALICE),
        oh_e2e::sha256_hex(BOB),
        gitlab.api_url
    );
    d.write_profile(
        &format!("app_mode = \"saas\"\ngithub_api_url = \"{}\"\ngitlab_api_url = \"{}\"\n", github.api_url, gitlab.api_url),
        &format!(
            "[extensions.settings_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSettingsStore\"\nconfig = {stores}\n\
             [extensions.secrets_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSecretsStore\"\nconfig = {stores}\n\
             [extensions.conversation_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasConversationStore\"\nconfig = {stores}\n\
             [extensions.user_auth]\nlibrary = \"saas_auth\"\nimplementation = \"SaasUserAuth\"\nconfig = {auth}\n\
             [[extensions.routes]]\nlibrary = \"saas_auth\"\nimplementation = \"SaasAuthRoutes\"\nconfig = {auth}\n"
        ),
    );
    let host = d.start();
    let get = |key: &'static str, path: &str| {
        let request = host.http.get(host.url(path)).bearer_auth(key);
        async { host.send(request).await }
    };
    let tokens =
        json!({ "provider_tokens": { "gitlab": { "token": "glpat_good" }, "github": { "token": "ghp_good" } } });
    let set = host.send(host.http.post(host.url("/api/add-git-providers")).bearer_auth(ALICE).json(&tokens)).await;
    assert_eq!(set.status, 200, "{}", set.text);

    // The first picker request syncs (inline), then pages from PostgreSQL.
    let first = get(ALICE, "/api/user/repositories?selected_provider=gitlab&page=1&per_page=30&sort=pushed").await;
    assert_eq!(first.status, 200, "{}", first.text);
    let repos = first.json();
    assert_eq!(repos.as_array().unwrap().len(), 30);
    assert_eq!(repos[0]["git_provider"], "gitlab");
    assert_eq!(repos[0]["full_name"], "group/sub/project-0", "most recent activity first");
    assert!(repos[0]["link_header"].as_str().unwrap().contains("page=2"), "{}", repos[0]);
    let second = get(ALICE, "/api/user/repositories?selected_provider=gitlab&page=2&per_page=30&sort=pushed").await;
    assert_eq!(second.json().as_array().unwrap().len(), REPOSITORIES - 30);
    assert_eq!(second.json()[0]["link_header"], "", "the last page names no next one");
    let listed = gitlab.seen_at("/api/v4/projects");
    assert_eq!(listed.len(), 1, "one page of 100 from GitLab, then PostgreSQL: {listed:?}");
    assert_eq!(listed[0].query.get("membership").map(String::as_str), Some("true"));
    let mut conn = db.connect().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM gitlab_projects WHERE user_id = 'alice'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, REPOSITORIES as i64);

    // Search by name among the stored projects (most stars first, as the search sorts by
    // default), without asking GitLab.
    let found = get(ALICE, "/api/user/search/repositories?query=PROJECT-4&selected_provider=gitlab&per_page=5").await;
    let expected = [
        "group/sub/project-44",
        "group/sub/project-43",
        "group/sub/project-42",
        "group/sub/project-41",
        "group/sub/project-40",
    ];
    assert_eq!(names(&found.json()), expected);
    let like = get(ALICE, "/api/user/search/repositories?query=%25&selected_provider=gitlab&per_page=5").await;
    assert_eq!(like.json(), json!([]), "a % is a character, not a wildcard");
    assert_eq!(gitlab.seen_at("/api/v4/projects").len(), 1);

    // GitLab changes; a list older than the interval is served while a sync runs behind.
    gitlab.set_projects(10);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let stale = get(ALICE, "/api/user/repositories?selected_provider=gitlab&page=1&per_page=100").await;
    assert!(stale.json().as_array().unwrap().len() >= 10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let fresh = get(ALICE, "/api/user/repositories?selected_provider=gitlab&page=1&per_page=100").await;
        if fresh.json().as_array().unwrap().len() == 10 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never refreshed: {}", fresh.text);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Every provider at once: GitHub from its API, GitLab from the stored list.
    let all = names(&get(ALICE, "/api/user/repositories?sort=pushed").await.json());
    assert_eq!(all.iter().filter(|n| n.starts_with("group/sub/")).count(), 10);
    assert!(all.iter().any(|n| n.starts_with("octo/")), "{all:?}");

    // Bob has no GitLab token: told so; nothing of Alice's reaches him.
    let set = host
        .send(
            host.http
                .post(host.url("/api/add-git-providers"))
                .bearer_auth(BOB)
                .json(&json!({ "provider_tokens": { "github": { "token": "ghp_good" } } })),
        )
        .await;
    assert_eq!(set.status, 200);
    let none = get(BOB, "/api/user/repositories?selected_provider=gitlab&page=1&per_page=30").await;
    assert_eq!(none.status, 401, "{}", none.text);
    let bobs = names(&get(BOB, "/api/user/repositories?sort=pushed").await.json());
    assert!(bobs.iter().all(|n| n.starts_with("octo/")), "{bobs:?}");

    // As an attacker: a token naming a host on this machine (SaaS: user-named hosts must be
    // public) makes the sync call nothing there.
    let local = gitlab.api_url.trim_start_matches("http://").trim_end_matches("/api/v4").to_owned();
    let tokens =
        json!({ "provider_tokens": { "gitlab": { "token": "glpat_mallory", "host": format!("http://{local}") } } });
    let set = host.send(host.http.post(host.url("/api/add-git-providers")).bearer_auth(BOB).json(&tokens)).await;
    assert_eq!(set.status, 200, "{}", set.text);
    let refused = get(BOB, "/api/user/repositories?selected_provider=gitlab&page=1&per_page=30").await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(refused.text.contains("a local or private address"), "{}", refused.text);
    // The plugin's own route (what the sign-in sync runs too) refuses it as well.
    let direct = get(BOB, "/api/user/repositories/gitlab?page=1&per_page=30").await;
    assert!(direct.status >= 400 && direct.status < 500, "{}: {}", direct.status, direct.text);
    assert!(direct.text.contains("local or private"), "{}", direct.text);
    assert!(
        gitlab.seen().iter().all(|s| s.authorization != "Bearer glpat_mallory"),
        "the sync reached a local address with the user's token"
    );
}
