//! What a delivery asks of the agent: a mention of it in each provider's payload (who, where,
//! what they wrote, where the answer goes), and a link command carrying a one-time code.

use serde_json::{json, Value};

/// A request to the agent found in a delivery.
#[derive(Debug, PartialEq)]
pub(crate) struct Mention {
    /// The provider and the user's id there (the key of `integration_links`).
    pub(crate) provider: &'static str,
    pub(crate) external_user: String,
    /// The first message of the conversation: the context and the request.
    pub(crate) text: String,
    /// What the person wrote (the comment, the note, the message).
    pub(crate) said: String,
    pub(crate) title: Option<String>,
    pub(crate) repository: Option<String>,
    pub(crate) git_provider: Option<&'static str>,
    /// Where answers go (`{"kind": "github", ...}`).
    pub(crate) target: Value,
}

/// The mention in a GitHub delivery: a new comment on an issue or pull request that names
/// the agent, by someone who is not a bot.
pub(crate) fn github_mention(event: &str, p: &Value, mention: &str) -> Option<Mention> {
    if event != "issue_comment" || p["action"] != "created" {
        return None;
    }
    let comment = p["comment"]["body"].as_str()?;
    if !names(comment, mention) || p["sender"]["type"] == "Bot" {
        return None;
    }
    let login = p["sender"]["login"].as_str()?;
    let repo = p["repository"]["full_name"].as_str()?;
    let number = p["issue"]["number"].as_i64()?;
    let installation = p["installation"]["id"].as_i64()?;
    let title = p["issue"]["title"].as_str().unwrap_or("").to_owned();
    let kind = if p["issue"]["pull_request"].is_object() { "pull request" } else { "issue" };
    let body = p["issue"]["body"].as_str().unwrap_or("");
    let text =
        format!("In the GitHub repository {repo}, {kind} #{number}: {title}\n\n{body}\n\n@{login} asks:\n{comment}");
    Some(Mention {
        provider: "github",
        external_user: login.to_lowercase(),
        said: comment.to_owned(),
        text,
        title: Some(format!("{repo}#{number}: {title}")),
        repository: Some(repo.to_owned()),
        git_provider: Some("github"),
        target: json!({ "kind": "github", "installation": installation, "repo": repo, "number": number, "login": login }),
    })
}

/// The mention in a Slack event: an `app_mention` (the bot named in a channel), answered in
/// its thread.
pub(crate) fn slack_mention(p: &Value) -> Option<Mention> {
    let e = &p["event"];
    if p["type"] != "event_callback" || e["type"] != "app_mention" || e["bot_id"].is_string() {
        return None;
    }
    let user = e["user"].as_str()?;
    let channel = e["channel"].as_str()?;
    let thread = e["thread_ts"].as_str().or_else(|| e["ts"].as_str())?;
    // `<@U0BOT> do this` → `do this`.
    let text = e["text"].as_str().unwrap_or("");
    let text = match (text.find("<@"), text.find('>')) {
        (Some(0), Some(end)) => text[end + 1..].trim(),
        _ => text.trim(),
    };
    Some(Mention {
        provider: "slack",
        external_user: user.to_owned(),
        said: text.to_owned(),
        text: text.to_owned(),
        title: Some(text.chars().take(60).collect()),
        repository: None,
        git_provider: None,
        target: json!({ "kind": "slack", "channel": channel, "thread_ts": thread, "user": user, "team": p["team_id"] }),
    })
}

fn names(text: &str, mention: &str) -> bool {
    text.to_lowercase().contains(&mention.to_lowercase())
}

/// The mention in a GitLab delivery: a note on an issue or merge request that names the agent.
pub(crate) fn gitlab_mention(p: &Value, mention: &str) -> Option<Mention> {
    if p["object_kind"] != "note" {
        return None;
    }
    let a = &p["object_attributes"];
    let note = a["note"].as_str()?;
    if !names(note, mention) {
        return None;
    }
    let user = p["user"]["username"].as_str()?;
    let project = p["project"]["id"].as_i64().or_else(|| p["project_id"].as_i64())?;
    let path = p["project"]["path_with_namespace"].as_str().unwrap_or("");
    let (noteable, item, label, sigil) = match a["noteable_type"].as_str()? {
        "Issue" => ("issues", &p["issue"], "issue", "#"),
        "MergeRequest" => ("merge_requests", &p["merge_request"], "merge request", "!"),
        _ => return None,
    };
    let iid = item["iid"].as_i64()?;
    let title = item["title"].as_str().unwrap_or("");
    let description = item["description"].as_str().unwrap_or("");
    Some(Mention {
        provider: "gitlab",
        external_user: user.to_lowercase(),
        said: note.to_owned(),
        text: format!(
            "In the GitLab project {path}, {label} {sigil}{iid}: {title}\n\n{description}\n\n@{user} asks:\n{note}"
        ),
        title: Some(format!("{path}{sigil}{iid}: {title}")),
        repository: Some(path.to_owned()).filter(|p| !p.is_empty()),
        git_provider: Some("gitlab"),
        target: json!({ "kind": "gitlab", "project": project, "noteable": noteable, "iid": iid }),
    })
}

/// The mention in a Jira (Cloud or Data Center) delivery: a new comment that names the agent.
pub(crate) fn jira_mention(source: &'static str, p: &Value, mention: &str) -> Option<Mention> {
    if p["webhookEvent"] != "comment_created" {
        return None;
    }
    let body = p["comment"]["body"].as_str()?;
    if !names(body, mention) {
        return None;
    }
    let author = &p["comment"]["author"];
    // Cloud names people by accountId, Data Center by key (or name).
    let user = author["accountId"].as_str().or_else(|| author["key"].as_str()).or_else(|| author["name"].as_str())?;
    let key = p["issue"]["key"].as_str()?;
    let fields = &p["issue"]["fields"];
    let summary = fields["summary"].as_str().unwrap_or("");
    let description = fields["description"].as_str().unwrap_or("");
    let who = author["displayName"].as_str().unwrap_or(user);
    Some(Mention {
        provider: source,
        external_user: user.to_owned(),
        said: body.to_owned(),
        text: format!("In Jira issue {key}: {summary}\n\n{description}\n\n{who} asks:\n{body}"),
        title: Some(format!("{key}: {summary}")),
        repository: None,
        git_provider: None,
        target: json!({ "kind": source, "issue": key }),
    })
}

/// The mention in a Linear delivery: a new comment that names the agent.
pub(crate) fn linear_mention(p: &Value, mention: &str) -> Option<Mention> {
    if p["type"] != "Comment" || p["action"] != "create" {
        return None;
    }
    let d = &p["data"];
    let body = d["body"].as_str()?;
    if !names(body, mention) {
        return None;
    }
    let user = d["userId"].as_str().or_else(|| d["user"]["id"].as_str())?;
    let issue_id = d["issueId"].as_str().or_else(|| d["issue"]["id"].as_str())?;
    let identifier = d["issue"]["identifier"].as_str().unwrap_or(issue_id);
    let title = d["issue"]["title"].as_str().unwrap_or("");
    Some(Mention {
        provider: "linear",
        external_user: user.to_owned(),
        said: body.to_owned(),
        text: format!("In Linear issue {identifier}: {title}\n\nA comment asks:\n{body}"),
        title: Some(format!("{identifier}: {title}")),
        repository: None,
        git_provider: None,
        target: json!({ "kind": "linear", "issue_id": issue_id }),
    })
}

/// `CODE` when a mention's text is `<mention> link CODE` (the way a user links the identity
/// they write from: the code comes from `POST /api/integrations/link-code`).
pub(crate) fn link_command(text: &str, mention: &str) -> Option<String> {
    let lower = text.to_lowercase();
    let at = lower.find(&mention.to_lowercase())?;
    let rest = text[at + mention.len()..].trim_start();
    let mut words = rest.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("link") {
        return None;
    }
    let code = words.next()?.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    (code.len() >= 6 && code.len() <= 32 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| code.to_ascii_uppercase())
}
