//! `docs/plugin-api.md`'s "Your first plugin", followed as written: its blocks are read from
//! the file, the crate is built outside the workspace, dropped into a deployment, checked,
//! served and called.

use oh_e2e::{sha256_hex, workspace, Deployment};
use std::{os::unix::fs::PermissionsExt as _, process::Command};

/// The fenced block after `<!-- first-plugin: <name> -->`.
fn block(doc: &str, name: &str) -> String {
    let marker = format!("<!-- first-plugin: {name} -->");
    let after = doc.split(&marker).nth(1).unwrap_or_else(|| panic!("docs/plugin-api.md lost its `{marker}` block"));
    let body = after.split_once("```").and_then(|(_, rest)| rest.split_once('\n')).map(|(_, rest)| rest).unwrap();
    body.split("\n```").next().unwrap().to_owned() + "\n"
}

#[tokio::test]
async fn the_first_plugin_walkthrough_works() {
    let doc = std::fs::read_to_string(workspace().join("docs/plugin-api.md")).unwrap();
    // A crate outside the repository, as the walkthrough says ("anywhere"), kept between runs
    // so that its dependencies build once; one per checkout.
    let dir =
        std::env::temp_dir().join(format!("oh-first-plugin-{}", &sha256_hex(&workspace().display().to_string())[..12]));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let placeholder = "/path/to/oh-host/plugin-api/sdk";
    let manifest = block(&doc, "Cargo.toml") + &block(&doc, "Cargo.toml (append)");
    assert!(manifest.contains(placeholder), "the walkthrough's SDK dependency changed: update this test");
    let sdk = workspace().join("plugin-api/sdk").display().to_string();
    std::fs::write(dir.join("Cargo.toml"), manifest.replace(placeholder, &sdk)).unwrap();
    std::fs::write(dir.join("src/lib.rs"), block(&doc, "src/lib.rs")).unwrap();
    // The versions the host was built with, offline (the resolver keeps what the crate uses).
    if !dir.join("Cargo.lock").exists() {
        std::fs::copy(workspace().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    }

    // Step 3, as the shell block says (offline: the test machine's registry cache).
    let shell = block(&doc, "shell");
    let build_line = shell.lines().next().unwrap();
    assert_eq!(build_line, "cargo build --release", "the walkthrough's build line changed: update this test");
    let built = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--offline"])
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    assert!(shell.contains("install -m 0644 target/release/libhello_routes.so"), "{shell}");
    let d = Deployment::new();
    d.install_bundled();
    let lib = d.plugins_dir().join("libhello_routes.so");
    std::fs::copy(dir.join("target/release/libhello_routes.so"), &lib).unwrap();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Step 4: the profile entry, appended.
    d.write_profile("", &block(&doc, "plugins.toml (append)"));

    // Step 5.
    let check = d.run_cli(&["check"]);
    assert!(check.status.success(), "{}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("hello_routes"), "{}", check.stdout);
    let host = d.start();
    let hello = host.get("/hello/plugin").await;
    assert_eq!((hello.status, hello.text.as_str()), (200, "Hello, plugin!\n"));
}
