//! Mentions in each provider's payload, link commands, answers, conversation ids.

use super::*;

fn issue_comment(body: &str, sender_type: &str) -> Value {
    json!({
        "action": "created",
        "issue": { "number": 7, "title": "Crash on start", "body": "It crashes." },
        "comment": { "body": body },
        "sender": { "login": "Octo", "type": sender_type },
        "repository": { "full_name": "acme/app" },
        "installation": { "id": 42 },
    })
}

#[test]
fn a_github_comment_that_names_the_agent_is_a_mention() {
    let m = github_mention("issue_comment", &issue_comment("@OpenHands please fix", "User"), "@openhands").unwrap();
    assert_eq!(m.external_user, "octo");
    assert_eq!(
        m.target,
        json!({ "kind": "github", "installation": 42, "repo": "acme/app", "number": 7, "login": "Octo" })
    );
    assert!(m.text.contains("issue #7: Crash on start") && m.text.contains("@OpenHands please fix"), "{}", m.text);
    assert_eq!(github_mention("issue_comment", &issue_comment("just a note", "User"), "@openhands"), None);
    assert_eq!(github_mention("issue_comment", &issue_comment("@openhands", "Bot"), "@openhands"), None);
    assert_eq!(github_mention("issues", &issue_comment("@openhands", "User"), "@openhands"), None);
}

#[test]
fn a_slack_app_mention_is_answered_in_its_thread() {
    let p = json!({ "type": "event_callback", "event_id": "Ev1", "team_id": "T1",
                    "event": { "type": "app_mention", "user": "U1", "channel": "C1", "ts": "1.2", "text": "<@UBOT> summarize the thread" } });
    let m = slack_mention(&p).unwrap();
    assert_eq!((m.external_user.as_str(), m.text.as_str()), ("U1", "summarize the thread"));
    // The team answers with its own bot token when it installed the app.
    assert_eq!(m.target, json!({ "kind": "slack", "channel": "C1", "thread_ts": "1.2", "user": "U1", "team": "T1" }));
    let mut from_bot = p.clone();
    from_bot["event"]["bot_id"] = json!("B1");
    assert_eq!(slack_mention(&from_bot), None);
}

#[test]
fn gitlab_jira_and_linear_comments_that_name_the_agent_are_mentions() {
    let note = json!({
        "object_kind": "note", "user": { "username": "Dev" }, "project": { "id": 5, "path_with_namespace": "grp/app" },
        "object_attributes": { "note": "@openhands look", "noteable_type": "MergeRequest" },
        "merge_request": { "iid": 3, "title": "Speed up", "description": "d" },
    });
    let m = gitlab_mention(&note, "@openhands").unwrap();
    assert_eq!((m.external_user.as_str(), m.title.as_deref()), ("dev", Some("grp/app!3: Speed up")));
    assert_eq!(m.target, json!({ "kind": "gitlab", "project": 5, "noteable": "merge_requests", "iid": 3 }));
    let mut plain = note.clone();
    plain["object_attributes"]["note"] = json!("lgtm");
    assert_eq!(gitlab_mention(&plain, "@openhands"), None);

    let comment = json!({
        "webhookEvent": "comment_created",
        "comment": { "body": "[~openhands] @openhands triage this", "author": { "accountId": "acc-1", "displayName": "Dana" } },
        "issue": { "key": "OPS-9", "fields": { "summary": "Disk full", "description": "on db-2" } },
    });
    let m = jira_mention("jira", &comment, "@openhands").unwrap();
    assert_eq!((m.external_user.as_str(), m.target.clone()), ("acc-1", json!({ "kind": "jira", "issue": "OPS-9" })));
    let mut dc = comment.clone();
    dc["comment"]["author"] = json!({ "key": "JIRAUSER10", "name": "dana" });
    assert_eq!(jira_mention("jira_dc", &dc, "@openhands").unwrap().external_user, "JIRAUSER10");

    let linear = json!({ "type": "Comment", "action": "create",
                         "data": { "body": "@openhands estimate", "userId": "u-1", "issueId": "i-1",
                                   "issue": { "identifier": "ENG-4", "title": "Login" } } });
    let m = linear_mention(&linear, "@openhands").unwrap();
    assert_eq!((m.external_user.as_str(), m.target.clone()), ("u-1", json!({ "kind": "linear", "issue_id": "i-1" })));
    let mut update = linear.clone();
    update["action"] = json!("update");
    assert_eq!(linear_mention(&update, "@openhands"), None);
}

#[test]
fn the_answer_waits_for_the_end_of_the_turn() {
    let state = |s: &str| json!({ "observation": "agent_state_changed", "extras": { "agent_state": s } });
    let said = |t: &str| json!({ "source": "agent", "action": "message", "args": { "content": t } });
    assert_eq!(answer_of(&[state("running")]), None);
    assert_eq!(answer_of(&[state("running"), said("Done."), state("awaiting_user_input")]).as_deref(), Some("Done."));
    let failed = [state("running"), json!({ "observation": "error", "content": "out of credits" }), state("error")];
    assert_eq!(answer_of(&failed).as_deref(), Some("I ran into a problem: out of credits"));
}

#[test]
fn a_link_command_carries_its_code() {
    assert_eq!(link_command("@openhands link abc123XY", "@openhands").as_deref(), Some("ABC123XY"));
    assert_eq!(link_command("hey @OpenHands  LINK `QWERTY12`.", "@openhands").as_deref(), Some("QWERTY12"));
    assert_eq!(link_command("@openhands link", "@openhands"), None);
    assert_eq!(link_command("@openhands link abc", "@openhands"), None, "too short");
    assert_eq!(link_command("@openhands please link the docs", "@openhands"), None);
    assert_eq!(code_hash("abc123xy"), code_hash("ABC123XY"));
}

#[test]
fn a_delivery_always_names_the_same_conversation() {
    let a = conversation_id("github", "d-1");
    assert_eq!(a, conversation_id("github", "d-1"));
    assert_ne!(a, conversation_id("slack", "d-1"));
    assert_eq!(a.len(), 32);
}
