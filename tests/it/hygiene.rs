//! The repository keeps itself honest: no dependency nothing uses, a configuration reference
//! that lists every key the parsers accept and every variable the code reads, no citation of
//! a document outside the repository, a Dockerfile that builds what the Makefile bundles.
//! `make lint` runs these too.

use oh_e2e::{workspace, Deployment};
use std::{
    collections::{BTreeSet, HashSet},
    fs,
    path::{Path, PathBuf},
};

/// Every `.rs` file of a crate, leaving out nested crates (test fixtures) and `target/`.
fn crate_sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                let name = path.file_name().unwrap().to_string_lossy();
                if name != "target" && !path.join("Cargo.toml").exists() {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The crate names a piece of Rust code refers to: the first segment of each `use` path, and
/// each `name::` or `name!` not preceded by `::` (so `axum::http::X` names `axum` only), less
/// the crate's own modules.
fn referenced_crates(code: &str) -> HashSet<String> {
    // Comments out, roughly (a `//` inside a string may cut a line short: harmless here).
    let code: String = code.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut refs = HashSet::new();
    let mut modules = HashSet::new();
    let mut rest = code.as_str();
    let mut outside_use = String::new();
    // `use` statements: only their first segment names a crate.
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        outside_use.push_str(&rest[..at]);
        let after = &rest[at + 4..];
        if before.is_some_and(is_ident_char) {
            outside_use.push_str("use ");
            rest = after;
            continue;
        }
        let end = after.find(';').unwrap_or(after.len());
        let path = after[..end].trim_start().trim_start_matches("::");
        let first: String = path.chars().take_while(|c| is_ident_char(*c)).collect();
        refs.insert(first);
        rest = &after[end..];
    }
    outside_use.push_str(rest);
    let chars: Vec<char> = outside_use.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if is_ident_char(chars[i]) && (i == 0 || !is_ident_char(chars[i - 1])) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let prefixed = start >= 1 && chars[start - 1] == ':';
            let next: String = chars[i..chars.len().min(i + 2)].iter().collect();
            if !prefixed && (next == "::" || next.starts_with('!')) {
                refs.insert(word.clone());
            }
            if word == "mod" {
                let name: String =
                    chars[i..].iter().skip_while(|c| c.is_whitespace()).take_while(|c| is_ident_char(**c)).collect();
                modules.insert(name);
            }
        } else {
            i += 1;
        }
    }
    refs.retain(|r| !modules.contains(r));
    refs
}

fn members() -> Vec<PathBuf> {
    let root: toml::Table = fs::read_to_string(workspace().join("Cargo.toml")).unwrap().parse().unwrap();
    let mut dirs: Vec<PathBuf> = root["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| workspace().join(m.as_str().unwrap()))
        .collect();
    dirs.push(workspace().join("examples/token-auth"));
    dirs
}

#[test]
fn no_crate_declares_a_dependency_it_does_not_use() {
    let mut unused = Vec::new();
    for dir in members() {
        let manifest: toml::Table = fs::read_to_string(dir.join("Cargo.toml")).unwrap().parse().unwrap();
        let mut used = HashSet::new();
        for file in crate_sources(&dir) {
            used.extend(referenced_crates(&fs::read_to_string(&file).unwrap()));
        }
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) else { continue };
            for name in deps.keys() {
                if !used.contains(&name.replace('-', "_")) {
                    unused.push(format!("{}: [{section}] {name}", dir.strip_prefix(workspace()).unwrap().display()));
                }
            }
        }
    }
    assert!(unused.is_empty(), "dependencies nothing uses (remove them):\n  {}", unused.join("\n  "));
}

#[test]
fn the_scanner_sees_through_use_groups_and_local_modules() {
    let refs = referenced_crates("mod http;\nuse axum::{http::StatusCode, Json};\nfn f() { http::x(); tower_http::y(); serde_json::json!({}); }\n// gone::z()\n");
    let expected: HashSet<String> = ["axum", "tower_http", "serde_json"].iter().map(|s| s.to_string()).collect();
    assert_eq!(refs, expected);
}

/// The backticked names after "expected one of" / "expected" in a serde unknown-field error,
/// or after "known:" / "an entry has" in the profile parser's.
fn accepted_keys(stderr: &str, marker: &str) -> BTreeSet<String> {
    let line = stderr.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("no `{marker}` in:\n{stderr}"));
    let tail = &line[line.find(marker).unwrap() + marker.len()..];
    if tail.contains("there are no fields") {
        return BTreeSet::new();
    }
    if tail.contains('`') {
        tail.split('`').skip(1).step_by(2).filter(|k| *k != "zz_probe").map(str::to_owned).collect()
    } else {
        let list = tail.rsplit(':').next().unwrap_or(tail);
        list.split(',').map(|k| k.trim().trim_end_matches(['.', ')']).to_owned()).filter(|k| !k.is_empty()).collect()
    }
}

/// The part of the reference under the `###` heading that contains `title`.
fn doc_section<'a>(docs: &'a str, title: &str) -> &'a str {
    docs.split("\n### ")
        .find(|s| s.lines().next().is_some_and(|h| h.contains(title)))
        .unwrap_or_else(|| panic!("docs/configuration.md has no ### section for {title}"))
}

#[test]
fn the_configuration_reference_lists_every_key_and_variable() {
    let docs = fs::read_to_string(workspace().join("docs/configuration.md")).unwrap();
    let d = Deployment::new();
    d.install_bundled();
    let check = |server: &str, extra: &str| {
        d.write_profile(server, extra);
        let out = d.run_cli(&["check"]);
        out.assert_refused();
        out.stderr
    };
    let mut missing = Vec::new();
    let mut require = |section: &str, keys: BTreeSet<String>, what: &str| {
        assert!(!keys.is_empty() || what.contains("DefaultUserAuth"), "no keys parsed for {what}");
        for key in keys {
            if !doc_section(&docs, section).contains(&format!("`{key}`")) {
                missing.push(format!("{what}: `{key}`"));
            }
        }
    };
    require("`[server]`", accepted_keys(&check("zz_probe = 1", ""), "unknown key; known:"), "[server]");
    let entry = check(
        "",
        "[extensions.user_auth]\nlibrary = \"default_auth\"\nimplementation = \"DefaultUserAuth\"\nzz_probe = 1\n",
    );
    require("`[extensions.<point>]`", accepted_keys(&entry, "unknown key; an entry has"), "an extension entry");
    let library = check("", "[libraries.file_stores]\nzz_probe = 1\n");
    require("`[libraries.<name>]`", accepted_keys(&library, "unknown field `zz_probe`, "), "[libraries.*]");
    for (point, library, implementation) in [
        ("settings_store", "file_stores", "FileSettingsStore"),
        ("secrets_store", "file_stores", "FileSecretsStore"),
        ("conversation_store", "file_stores", "FileConversationStore"),
        ("user_auth", "default_auth", "DefaultUserAuth"),
        ("[monitoring", "log_monitoring", "LogMonitoringListener"),
        ("conversation_manager", "standalone_manager", "StandaloneConversationManager"),
        ("runtime", "sandbox_runtime", "BubblewrapRuntime"),
        ("runtime", "openhands_runtime", "OpenHandsRuntime"),
        ("settings_store", "postgres_stores", "SaasSettingsStore"),
        ("secrets_store", "postgres_stores", "SaasSecretsStore"),
        ("conversation_store", "postgres_stores", "SaasConversationStore"),
        ("user_auth", "saas_auth", "SaasUserAuth"),
        ("[routes", "saas_auth", "SaasAuthRoutes"),
    ] {
        let table = match point.strip_prefix('[') {
            Some(p) => format!("[[extensions.{p}]]"),
            None => format!("[extensions.{point}]"),
        };
        let stderr = check(
            "",
            &format!("{table}\nlibrary = \"{library}\"\nimplementation = \"{implementation}\"\nconfig = {{ zz_probe = 1 }}\n"),
        );
        require(implementation, accepted_keys(&stderr, "unknown field `zz_probe`, "), implementation);
    }

    // Environment variables: the host's list, the plugins' `env("…")` calls, the example
    // profiles' `${…}`.
    let mut variables: BTreeSet<String> = oh_host::env::ALL.iter().map(|v| v.to_string()).collect();
    for dir in [workspace().join("plugins"), workspace().join("crates"), workspace().join("plugin-api")] {
        for file in crate_sources(&dir).into_iter().chain(
            fs::read_dir(&dir).unwrap().flatten().filter(|e| e.path().is_dir()).flat_map(|e| crate_sources(&e.path())),
        ) {
            let text = fs::read_to_string(&file).unwrap();
            for piece in text.split("env(\"").skip(1) {
                let name: String =
                    piece.chars().take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit()).collect();
                if piece[name.len()..].starts_with('"') && !name.is_empty() {
                    variables.insert(name);
                }
            }
        }
    }
    for entry in fs::read_dir(workspace().join("examples")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "toml") {
            let text = fs::read_to_string(entry.path()).unwrap();
            for piece in text.split("${").skip(1) {
                let name: String = piece.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                variables.insert(name);
            }
        }
    }
    for v in &variables {
        if !docs.contains(&format!("`{v}`")) {
            missing.push(format!("environment variable `{v}`"));
        }
    }
    assert!(variables.contains("DB_HOST") && variables.contains("LITE_LLM_API_URL"), "{variables:?}");
    assert!(missing.is_empty(), "docs/configuration.md does not document:\n  {}", missing.join("\n  "));
}

#[test]
fn nothing_cites_a_document_outside_the_repository() {
    let mut hits = Vec::new();
    let mut stack = vec![workspace()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if (name == ".ci" || !name.starts_with('.')) && name != "target" {
                    stack.push(path);
                }
                continue;
            }
            let checked = name.ends_with(".rs") || name.ends_with(".md") || name.ends_with(".toml");
            if !(checked || name == "Makefile" || name == "services") || path.ends_with("tests/it/hygiene.rs") {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                let outside = line.contains("DESIGN §")
                    || line.contains("DESIGN.md")
                    || line.contains("../shared/")
                    || line.contains("reference/");
                // The web client's build is found there by default (OH_FRONTEND_DIR overrides it).
                if outside && !line.contains("openhands-frontend") {
                    hits.push(format!("{}:{}: {line}", path.strip_prefix(workspace()).unwrap().display(), n + 1));
                }
            }
        }
    }
    assert!(hits.is_empty(), "cite ARCHITECTURE.md or docs/ instead:\n  {}", hits.join("\n  "));
}

#[test]
fn the_dockerfile_bundles_what_the_makefile_bundles() {
    let makefile = fs::read_to_string(workspace().join("Makefile")).unwrap();
    let bundled: BTreeSet<&str> = makefile
        .lines()
        .find_map(|l| l.strip_prefix("BUNDLED"))
        .unwrap()
        .trim_start_matches([' ', ':', '='])
        .split_whitespace()
        .collect();
    assert_eq!(bundled, oh_e2e::BUNDLED.iter().copied().collect(), "the tests' BUNDLED differs from the Makefile's");
    let dockerfile = fs::read_to_string(workspace().join("Dockerfile")).unwrap();
    for lib in &bundled {
        assert!(dockerfile.contains(&format!("lib{lib}.so")) || dockerfile.contains(lib), "Dockerfile lacks {lib}");
    }
    assert!(dockerfile.contains("USER "), "the image must not run as root");
    // The agent's tools need bubblewrap and git; the healthcheck probes the server, not `check`.
    let runtime_stage = dockerfile.rsplit("FROM ").next().unwrap();
    for package in ["bubblewrap", "git"] {
        assert!(runtime_stage.contains(&format!(" {package}")), "the image lacks {package}");
    }
    let health = dockerfile.lines().find(|l| l.starts_with("HEALTHCHECK")).unwrap();
    assert!(health.contains("/alive") && !health.contains("check"), "{health}");
}
