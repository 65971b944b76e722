//! Workspaces: names, hosts, and the OAuth state's parts.

use super::*;

#[test]
fn workspace_names_are_checked_and_folded() {
    assert_eq!(valid_name("Acme.atlassian.net").unwrap(), "acme.atlassian.net");
    assert_eq!(valid_name("my_org-2").unwrap(), "my_org-2");
    for bad in ["", "a b", "a/b", "x?y", &"a".repeat(256)] {
        assert_eq!(valid_name(bad).unwrap_err().0, 422, "{bad:?}");
    }
    assert_eq!(host_of("https://Acme.atlassian.net/rest/api/2/issue/1").as_deref(), Some("acme.atlassian.net"));
    assert_eq!(host_of("not a url"), None);
}
