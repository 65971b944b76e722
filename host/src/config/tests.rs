//! The profile's parsing: defaults, variables, every problem at once.

use super::*;

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

fn parse_with(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    parse(Path::new("/etc/oh/plugins.toml"), text, &vars(env))
}

#[test]
fn empty_profile_falls_back_to_bundled_defaults() {
    let c = parse_with("", &[("HOME", "/home/u")]).unwrap();
    assert_eq!(c.server.bind.to_string(), "127.0.0.1:3000");
    assert_eq!(c.server.plugins_dir, PathBuf::from("/etc/oh/target/plugins"));
    let named: Vec<_> = c.extensions.iter().map(|e| (e.point.key(), e.implementation.as_str(), e.explicit)).collect();
    assert!(named.contains(&("settings_store", "FileSettingsStore", false)));
    assert!(named.contains(&("user_auth", "DefaultUserAuth", false)));
    assert!(!named.iter().any(|(p, _, _)| *p == "routes"));
}

#[test]
fn expands_variables_with_defaults() {
    let text = r#"
        [server]
        state_dir = "${STATE:-/var/lib/oh}"
        [extensions.settings_store]
        library = "file_stores"
        implementation = "FileSettingsStore"
        config = { root = "${ROOT}/x", port = 5, literal = "$${NOT}" }
    "#;
    let c = parse_with(text, &[("ROOT", "/data")]).unwrap();
    assert_eq!(c.server.state_dir, PathBuf::from("/var/lib/oh"));
    let e = c.extensions.iter().find(|e| e.point == ExtensionPoint::SETTINGS_STORE).unwrap();
    let json: serde_json::Value = serde_json::from_str(&e.config_json).unwrap();
    assert_eq!(json, serde_json::json!({ "root": "/data/x", "port": 5, "literal": "${NOT}" }));
    assert!(e.explicit);
}

#[test]
fn reports_every_problem_at_once_naming_file_key_and_fix() {
    let text = r#"
        [server]
        bind = "nowhere"
        colour = "blue"
        [extensions.settings_stor]
        library = "x"
        [extensions.secrets_store]
        implementation = "FileSecretsStore"
        sha256 = "abc"
        [[extensions.routes]]
        library = "integrations"
        implementation = "GithubWebhooks"
        config = { secret = "${GITHUB_APP_WEBHOOK_SECRET}" }
    "#;
    let err = parse_with(text, &[]).unwrap_err();
    let all = err.to_string();
    for needle in [
        "server.bind: `nowhere` is not an address",
        "server.colour: unknown key",
        "extensions.settings_stor: unknown extension point",
        "extensions.secrets_store.library: missing",
        "extensions.secrets_store.sha256: must be 64 hex digits",
        "extensions.routes[0].config.secret: environment variable GITHUB_APP_WEBHOOK_SECRET is not set",
    ] {
        assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
    }
    assert_eq!(err.problems.len(), 6, "{all}");
    assert!(err.problems.iter().all(|p| p.starts_with("/etc/oh/plugins.toml: ")));
}

#[test]
fn enabled_if_env_skips_the_entry_and_its_variables() {
    let text = r#"
        [[extensions.routes]]
        library = "integrations"
        implementation = "GithubWebhooks"
        enabled_if_env = "GITHUB_APP_CLIENT_ID"
        config = { secret = "${GITHUB_APP_WEBHOOK_SECRET}" }
    "#;
    let c = parse_with(text, &[]).unwrap();
    assert!(!c.extensions.iter().any(|e| e.point == ExtensionPoint::ROUTES));
    let err = parse_with(text, &[("GITHUB_APP_CLIENT_ID", "x")]).unwrap_err();
    assert!(err.to_string().contains("GITHUB_APP_WEBHOOK_SECRET is not set"));
    // A "no" is off, as `ENABLE_BILLING=false` is in OpenHands.
    for no in ["0", "false", "FALSE", "no", "off", " "] {
        let c = parse_with(text, &[("GITHUB_APP_CLIENT_ID", no)]).unwrap();
        assert!(!c.extensions.iter().any(|e| e.point == ExtensionPoint::ROUTES), "{no:?}");
    }
}

#[test]
fn bad_toml_is_one_clear_problem() {
    let err = parse_with("[server\nbind=", &[]).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].contains("not valid TOML"), "{}", err.problems[0]);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the text, the parser answers: a profile, or problems that each name the
        /// file (and never a panic).
        #[test]
        fn any_text_gives_a_profile_or_located_problems(text in "(?s).{0,400}") {
            if let Err(e) = parse_with(&text, &[]) {
                prop_assert!(!e.problems.is_empty());
                for p in &e.problems {
                    prop_assert!(p.starts_with("/etc/oh/plugins.toml: "), "{}", p);
                }
            }
        }

        /// `${…}` in a value: expands, or is a problem naming the key.
        #[test]
        fn variable_references_expand_or_name_the_key(value in "[a-zA-Z0-9_${}:/ .-]{0,40}", set in proptest::bool::ANY) {
            let text = format!("[server]\nstate_dir = \"/s/{value}\"\n");
            let env: Vec<(&str, &str)> = if set { vec![("A", "/a"), ("B_1", "b")] } else { vec![] };
            match parse_with(&text, &env) {
                Ok(c) => prop_assert!(c.server.state_dir.starts_with("/s")),
                Err(e) => prop_assert!(e.problems.iter().all(|p| p.contains("server.state_dir")), "{:?}", e.problems),
            }
        }

        /// Well-formed references expand to the variable, or to the default when unset.
        #[test]
        fn well_formed_references_expand(name in "[A-Z][A-Z0-9_]{0,8}", value in "[a-z0-9/]{1,12}", default in "[a-z0-9/]{0,12}") {
            let text = format!("[server]\nstate_dir = \"/r/${{{name}}}/${{UNSET_{name}:-{default}}}\"\n");
            let c = parse_with(&text, &[(name.as_str(), value.as_str())]).unwrap();
            prop_assert_eq!(c.server.state_dir, PathBuf::from(format!("/r/{value}/{default}")));
        }
    }
}

#[test]
fn single_points_refuse_arrays() {
    let err = parse_with("[[extensions.user_auth]]\nlibrary=\"a\"\nimplementation=\"b\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("takes one implementation"), "{err}");
}

#[test]
fn isolation_is_read_with_its_bounds_and_its_mistakes_named() {
    let text = r#"
        [extensions.settings_store]
        isolation = "process"
        command = ["python3", "/opt/stores/settings_store.py"]
        implementation = "PythonSettingsStore"
        memory_mb = 256
        cpu_seconds = 30
        sandbox = true
        [extensions.secrets_store]
        library = "file_stores"
        implementation = "FileSecretsStore"
        isolation = "process"
    "#;
    let c = parse_with(text, &[]).unwrap();
    let settings = c.extensions.iter().find(|e| e.point == ExtensionPoint::SETTINGS_STORE).unwrap();
    assert_eq!(settings.library, "settings_store", "a command is called after its program");
    let p = settings.process.as_ref().unwrap();
    assert_eq!((p.memory_mb, p.cpu_seconds, p.sandbox), (Some(256), Some(30), true));
    assert_eq!(p.command.as_deref().unwrap()[0], "python3");
    let secrets = c.extensions.iter().find(|e| e.point == ExtensionPoint::SECRETS_STORE).unwrap();
    assert_eq!(secrets.process.as_ref().unwrap().command, None);
    let conversations = c.extensions.iter().find(|e| e.point == ExtensionPoint::CONVERSATION_STORE).unwrap();
    assert_eq!(conversations.process, None, "in process unless the entry says");

    let bad = r#"
        [extensions.settings_store]
        library = "file_stores"
        implementation = "FileSettingsStore"
        isolation = "container"
        [extensions.secrets_store]
        library = "file_stores"
        implementation = "FileSecretsStore"
        memory_mb = 64
        sandbox = true
        [extensions.conversation_store]
        library = "file_stores"
        implementation = "FileConversationStore"
        isolation = "process"
        command = []
        cpu_seconds = -1
        sandbox = "yes"
    "#;
    let all = parse_with(bad, &[]).unwrap_err().to_string();
    for needle in [
        "extensions.settings_store.isolation: must be \"none\" (in the host's process) or \"process\"",
        "extensions.secrets_store.memory_mb: applies only with isolation = \"process\"",
        "extensions.conversation_store.command: must be a non-empty array of strings",
        "extensions.conversation_store.cpu_seconds: must be an integer > 0",
        "extensions.conversation_store.sandbox: must be true or false",
        "extensions.secrets_store.sandbox: applies only with isolation = \"process\"",
    ] {
        assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
    }
}
