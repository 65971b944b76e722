//! The provider APIs' paging and answers, against local fakes.

use super::*;

#[test]
fn token_hosts_choose_the_api_address_and_saas_refuses_private_ones() {
    let urls = ApiUrls::default();
    let base = |p, host: Option<&str>, saas| Api::new(p, "t", host, &urls, saas).map(|a| a.base);
    assert_eq!(base(Provider::GitHub, None, false).unwrap(), "https://api.github.com");
    assert_eq!(base(Provider::GitHub, Some("github.com"), true).unwrap(), "https://api.github.com");
    assert_eq!(base(Provider::GitHub, Some("ghe.example.com"), false).unwrap(), "https://ghe.example.com/api/v3");
    assert_eq!(base(Provider::GitLab, Some("http://gitlab.lan"), false).unwrap(), "http://gitlab.lan/api/v4");
    assert_eq!(base(Provider::Bitbucket, Some("bb.example.com"), false).unwrap(), "https://api.bb.example.com/2.0");
    let refused = base(Provider::GitLab, Some("http://127.0.0.1:8080"), true).unwrap_err();
    assert!(refused.contains("local or private address"), "{refused}");
    assert!(base(Provider::GitLab, Some("http://127.0.0.1:8080"), false).is_ok(), "OSS: the user's own network");
}

#[test]
fn repository_names_cannot_walk_the_api() {
    for ok in ["octo/hello", "group/sub/project", "a.b/c_d-e", "o/.openhands"] {
        assert!(valid_repository(ok), "{ok}");
    }
    for bad in ["octo", "octo/../admin", "octo/./x", "/octo/x", "octo/x/", "octo/x?y", "octo/x%2F", "a b/c"] {
        assert!(!valid_repository(bad), "{bad}");
    }
    assert!(valid_file_path(".openhands/microagents/a.md"));
    for bad in ["", "../x", "a//b", "a/?x", "a/%2e%2e"] {
        assert!(!valid_file_path(bad), "{bad}");
    }
}

#[test]
fn microagent_front_matter_gives_body_and_triggers() {
    let (body, triggers) = parse_microagent("---\nname: x\ntriggers:\n  - deploy\n  - \"ship it\"\n---\n\nDo it.\n");
    assert_eq!((body.as_str(), triggers), ("Do it.", vec!["deploy".to_owned(), "ship it".to_owned()]));
    let (_, triggers) = parse_microagent("---\ntriggers: [a, 'b']\n---\nx");
    assert_eq!(triggers, vec!["a", "b"]);
    assert_eq!(parse_microagent("plain text").0, "plain text");
    assert_eq!(microagents_dir("org/.openhands"), "microagents");
    assert_eq!(microagents_dir("org/app"), ".openhands/microagents");
}
