//! `oh-host plugins` and `oh-host check` as an operator runs them.

use oh_e2e::Deployment;

#[test]
fn plugins_lists_every_library_with_hash_version_and_implementations() {
    let d = Deployment::new();
    d.install_bundled();
    d.install("token_auth");
    d.install_as("not_abi_stable", "plain");
    d.write_profile("", "");
    let out = d.run_cli(&["plugins"]);
    let sha = oh_e2e::sha256_hex_file(&d.plugins_dir().join("libfile_stores.so"));
    assert!(out.stdout.contains(&format!("sha256  {sha}")), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("plugin-api {}", oh_e2e::api_version())), "{}", out.stdout);
    for line in [
        "settings_store         FileSettingsStore",
        "user_auth              TokenAuth",
        "monitoring             LogMonitoringListener",
    ] {
        assert!(out.stdout.contains(line), "missing `{line}` in:\n{}", out.stdout);
    }
    assert!(out.stdout.contains("plain  REFUSED"), "{}", out.stdout);
    // A refused library makes the listing fail, so scripts notice.
    assert!(!out.status.success());
}

/// `oh-host plugins | head -1`: a reader that went away ends a command quietly (status 141,
/// what a shell shows for SIGPIPE), not with a panic's message and status 101.
#[test]
fn a_command_whose_output_nobody_reads_ends_quietly() {
    use std::process::{Command, Output, Stdio};
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    // `command` with stdout or stderr a pipe nobody reads any more: every write fails (EPIPE).
    let run = |command: &str, closed_stdout: bool| -> Output {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut c = Command::new(oh_e2e::host_binary());
        c.args([command, "--config"]).arg(d.profile_path()).env("RUST_LOG", "warn");
        if closed_stdout {
            c.stdout(writer).stderr(Stdio::piped());
        } else {
            c.stdout(Stdio::piped()).stderr(writer);
        }
        c.output().unwrap()
    };
    let listing = run("plugins", true);
    // A profile with a problem: `check` reports it on stderr.
    std::fs::write(d.profile_path(), "[server]\nbind = 3\n").unwrap();
    let refusal = run("check", false);
    for (what, out) in [("plugins, stdout closed", listing), ("check, stderr closed", refusal)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{what}: {:?}\n{stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
}

#[test]
fn check_accepts_a_good_profile_and_names_what_it_would_load() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let out = d.run_cli(&["check"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("OK"), "{}", out.stdout);
    assert!(out.stdout.contains("conversation_store     file_stores::FileConversationStore"), "{}", out.stdout);
}

#[test]
fn check_reports_profile_errors_with_file_key_and_fix() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("colour = \"blue\"", "[extensions.routes]\nlibrary = \"x\"\nimplementation = \"Y\"\nconfig = { secret = \"${OH_TEST_SURELY_UNSET_VAR}\" }\n");
    let out = d.run_cli(&["check"]);
    out.assert_refused();
    let profile = d.profile_path().display().to_string();
    assert!(out.stderr.contains(&format!("{profile}: server.colour: unknown key")), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("extensions.routes.config.secret: environment variable OH_TEST_SURELY_UNSET_VAR is not set"),
        "{}",
        out.stderr
    );
}

// Multi-threaded: the fake Keycloak answers while `check` runs (a blocking wait here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enterprise_profile_checks_with_its_environment_and_names_what_is_missing() {
    let db = oh_e2e::pg::TestDb::create().await;
    let kc = oh_e2e::oidc::FakeKeycloak::start().await;

    let profile = oh_e2e::workspace().join("examples/plugins.saas.toml");
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(oh_e2e::host_binary());
        cmd.arg("check").arg("--config").arg(&profile).env("RUST_LOG", "warn");
        for var in [
            "JWT_SECRET",
            "OH_MASTER_KEY",
            "DB_HOST",
            "DB_NAME",
            "KEYCLOAK_SERVER_URL",
            "KEYCLOAK_SERVER_URL_EXT",
            "WEB_HOST",
            "REDIS_HOST",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied()).output().unwrap()
    };
    let keycloak = [
        ("KEYCLOAK_SERVER_URL", kc.base.as_str()),
        ("KEYCLOAK_REALM_NAME", oh_e2e::oidc::REALM),
        ("KEYCLOAK_CLIENT_ID", "openhands"),
        ("KEYCLOAK_CLIENT_SECRET", "secret"),
        ("WEB_HOST", "https://app.example.com"),
        ("OH_STATE_DIR", "/tmp"),
    ];
    let mut env = keycloak.to_vec();
    env.extend([
        ("JWT_SECRET", "a-long-enough-jwt-secret-value"),
        ("DB_HOST", "127.0.0.1"),
        ("DB_NAME", db.name.as_str()),
    ]);
    let ok = run(&env);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains("settings_store         postgres_stores::SaasSettingsStore"), "{stdout}");
    assert!(stdout.contains("user_auth              saas_auth::SaasUserAuth"), "{stdout}");
    // Without REDIS_HOST the loops run in process; with it, the cluster's manager.
    assert!(stdout.contains("conversation_manager   standalone_manager::StandaloneConversationManager"), "{stdout}");
    let mut clustered = env.clone();
    clustered.push(("REDIS_HOST", "127.0.0.1"));
    let ok = run(&clustered);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains("conversation_manager   clustered_manager::ClusteredConversationManager"), "{stdout}");
    // `check` probes Keycloak's discovery document: an unreachable one is named.
    let mut unreachable = env.clone();
    unreachable[0] = ("KEYCLOAK_SERVER_URL", "http://127.0.0.1:9");
    let down = run(&unreachable);
    let out = format!("{}{}", String::from_utf8_lossy(&down.stdout), String::from_utf8_lossy(&down.stderr));
    assert!(!down.status.success() && out.contains("Keycloak at http://127.0.0.1:9/realms/"), "{out}");
    let missing = run(&keycloak);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(
        stderr.contains("extensions.user_auth.config.jwt_secret: environment variable JWT_SECRET is not set"),
        "{stderr}"
    );
}

/// The Dockerfile and the systemd unit name the profile with `OPENHANDS_PLUGINS_TOML`, not
/// `--config`: `check` and `serve` find it there, from any directory, and `--config` wins.
#[test]
fn the_profile_is_found_through_openhands_plugins_toml() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &std::path::Path)]| {
        let mut c = std::process::Command::new(oh_e2e::host_binary());
        c.args(args).current_dir(elsewhere.path()).env("RUST_LOG", "warn").env_remove("OPENHANDS_PLUGINS_TOML");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let profile = d.profile_path();
    let checked = run(&["check"], &[("OPENHANDS_PLUGINS_TOML", &profile)]);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}{}", String::from_utf8_lossy(&checked.stderr));
    assert!(stdout.contains("OK") && stdout.contains(&profile.display().to_string()), "{stdout}");
    // Without it (and no ./plugins.toml there), the message says where it looked and how.
    let missing = run(&["check"], &[]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && stderr.contains("OPENHANDS_PLUGINS_TOML"), "{stderr}");
    // --config wins over the variable.
    let bogus = elsewhere.path().join("nope.toml");
    let wins = run(&["check", "--config", &profile.display().to_string()], &[("OPENHANDS_PLUGINS_TOML", &bogus)]);
    assert!(wins.status.success(), "{}", String::from_utf8_lossy(&wins.stderr));
    // And the server starts with it.
    let mut serve = std::process::Command::new(oh_e2e::host_binary())
        .current_dir(elsewhere.path())
        .env("OPENHANDS_PLUGINS_TOML", &profile)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = serve.stderr.take().unwrap();
    let listening = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .take(200)
        .any(|l| l.contains("listening on http://"));
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(listening, "the server did not start from OPENHANDS_PLUGINS_TOML");
}

/// `check` reports every problem of every kind in one run: an unknown key and an unset
/// variable (the profile), a missing library (the loader), and a route overlap (a routes
/// instance that did build), each naming the file and the key.
#[test]
fn check_reports_every_kind_of_problem_in_one_run() {
    let d = Deployment::new();
    d.install_bundled();
    d.install("fixture_plugin");
    d.write_profile(
        "bogus_key = 1",
        "[[extensions.routes]]\nlibrary = \"fixture_plugin\"\nimplementation = \"FixtureRoutes\"\nconfig = { clash = true }\n\
         [extensions.user_auth]\nlibrary = \"no_such_library\"\nimplementation = \"Nope\"\n\
         [extensions.monitoring]\nlibrary = \"log_monitoring\"\nimplementation = \"LogMonitoringListener\"\n\
         config = { level = \"${OH_CHECK_UNSET_VARIABLE}\" }\n",
    );
    let out = d.run_cli(&["check"]);
    out.assert_refused();
    let profile = d.profile_path().display().to_string();
    for expected in [
        "server.bogus_key: unknown key",
        "OH_CHECK_UNSET_VARIABLE",
        "extensions.user_auth: library `no_such_library` not found",
        "route `/api/settings` overlaps the host's own `/api/settings`",
    ] {
        assert!(out.stderr.contains(expected), "missing `{expected}` in:\n{}", out.stderr);
    }
    assert!(out.stderr.matches(&profile).count() >= 3, "each names the file:\n{}", out.stderr);
}

/// `make run` serves the profile `OPENHANDS_PLUGINS_TOML` names (the example profiles' usage
/// lines say `OPENHANDS_PLUGINS_TOML=examples/plugins.saas.toml make run`), and passes ARGS on.
#[test]
fn make_run_honours_openhands_plugins_toml_and_args() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let out = std::process::Command::new("make")
            .args(["-n", "--no-print-directory", "run"])
            .args(args)
            .current_dir(oh_e2e::workspace())
            .envs(env.iter().copied())
            .env_remove("MAKEFLAGS")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim_end().to_owned()
    };
    let by_default = run(&[], &[]);
    assert!(by_default.ends_with("oh-host --config plugins.toml"), "{by_default}");
    let saas = run(&[("OPENHANDS_PLUGINS_TOML", "examples/plugins.saas.toml")], &["ARGS=--bind 127.0.0.1:3001"]);
    assert!(saas.ends_with("oh-host --config examples/plugins.saas.toml --bind 127.0.0.1:3001"), "{saas}");
}

/// A second instance of one profile starts with `--bind` and `--admin-bind` (the operators'
/// port of the first is taken); `--admin-bind off` serves no operators' routes.
#[tokio::test]
async fn a_second_instance_starts_with_bind_and_admin_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let profile = std::fs::read_to_string(d.profile_path()).unwrap();
    let profile = profile.replace("admin_bind = \"127.0.0.1:0\"", &format!("admin_bind = \"127.0.0.1:{port}\""));
    std::fs::write(d.profile_path(), profile).unwrap();
    // The profile's admin port is in use: without --admin-bind the server cannot start.
    let refused = d.run_cli(&["serve", "--bind", "127.0.0.1:0"]);
    assert!(!refused.status.success() && refused.stderr.contains(&format!("127.0.0.1:{port}")), "{}", refused.stderr);
    let second = d.start_with(&["--bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"], &[]);
    assert_eq!(second.get("/alive").await.status, 200);
    assert_eq!(second.admin_get("/internal/ready").await.status, 200);
    let third = d.start_with(&["--admin-bind", "off"], &[]);
    assert_eq!(third.get("/alive").await.status, 200);
    assert!(!third.log().contains("operators' routes (/internal/*) on"), "{}", third.log());
    let bad = d.run_cli(&["serve", "--admin-bind", "nowhere"]);
    assert!(!bad.status.success() && bad.stderr.contains("--admin-bind `nowhere`"), "{}", bad.stderr);
    drop(taken);
}

/// `oh-host check` reads and probes, and writes nothing: no state file, no key file, no
/// migration (`oh-host migrate` migrates).
#[tokio::test]
async fn check_writes_nothing() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let out = d.run_cli(&["check"]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let made: Vec<_> = oh_e2e::files_under(&d.state_dir());
    assert!(made.is_empty(), "check wrote {made:?}");

    let db = oh_e2e::pg::TestDb::create().await;
    let config = format!("{{ database_url = \"{}\", master_key = \"check-master-key-0123456789abcdef\" }}", db.url);
    d.write_profile(
        "",
        &format!(
            "[extensions.settings_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSettingsStore\"\nconfig = {config}\n\
             [extensions.secrets_store]\nlibrary = \"postgres_stores\"\nimplementation = \"SaasSecretsStore\"\nconfig = {config}\n"
        ),
    );
    let out = d.run_cli(&["check"]);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let mut conn = db.connect().await;
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, 0, "check migrated the database");
    let migrated = d.run_cli(&["migrate"]);
    assert!(migrated.status.success(), "{}{}", migrated.stdout, migrated.stderr);
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(tables > 0);
}

/// `check` probes the deployment's LLM proxy (`LITE_LLM_API_URL`) when one is set: down, it is
/// named; up, it is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_the_llm_proxy() {
    let d = Deployment::new();
    d.install_bundled();
    d.write_profile("", "");
    let down = d.run_cli_env(&["check"], &[("LITE_LLM_API_URL", "http://127.0.0.1:9/v1")]);
    down.assert_refused();
    let out = format!("{}{}", down.stdout, down.stderr);
    assert!(out.contains("the LLM proxy LITE_LLM_API_URL=http://127.0.0.1:9/v1 is unreachable"), "{out}");
    let llm = oh_e2e::llm::FakeLlm::start().await;
    let up = d.run_cli_env(&["check"], &[("LITE_LLM_API_URL", llm.base_url.as_str())]);
    assert!(up.status.success(), "{}{}", up.stdout, up.stderr);
    assert!(up.stdout.contains("LLM proxy"), "{}", up.stdout);
}
