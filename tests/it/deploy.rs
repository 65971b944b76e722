//! `deploy/`, validated offline (no Docker engine, no cluster on these machines): the compose
//! file by the compose specification's parser, the Kubernetes manifests against Kubernetes'
//! schemas, both through `tests/deploy/validate.py` in a virtualenv of its own under
//! `target/`; and the Dockerfile's web-client stage, which runs `deploy/web-client.sh`.

use oh_e2e::workspace;
use serde_json::Value;
use std::{fs, path::PathBuf, process::Command};

/// The Kubernetes version the manifests are checked against (the oldest we support).
const KUBERNETES: &str = "1.30.0";
/// The validators, pinned.
const VALIDATORS: &[&str] = &["compose-spec==0.2.1", "kubernetes-validate==1.37.0", "PyYAML>=6"];

/// A virtualenv with the validators, made once per `target/` (PyPI on the first run).
fn validators() -> PathBuf {
    let venv = workspace().join("target/deploy-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join(".installed");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(&VALIDATORS.join(" ")) {
        return python;
    }
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    };
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv));
    run(Command::new(&python).args(["-m", "pip", "install", "--quiet"]).args(VALIDATORS));
    fs::write(&stamp, VALIDATORS.join(" ")).unwrap();
    python
}

#[test]
fn compose_and_kubernetes_manifests_are_valid_and_keep_the_admin_port_in() {
    let out = Command::new(validators())
        .arg(workspace().join("tests/deploy/validate.py"))
        .arg(workspace())
        .arg(KUBERNETES)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy/ is not valid:\n{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap_or_default().to_owned()).collect()
    };

    // Compose: the stack the README promises, two SaaS nodes behind the proxy, only the
    // proxy and Keycloak reachable from outside.
    assert_eq!(
        strings(&summary["compose_services"]),
        ["keycloak", "migrate", "node1", "node2", "postgres", "proxy", "redis"]
    );
    assert_eq!(strings(&summary["compose_nodes"]), ["node1", "node2"]);
    assert_eq!(strings(&summary["compose_published"]), ["keycloak", "proxy"]);
    assert_eq!(strings(&summary["realm_clients"]), ["openhands"]);

    // Kubernetes: probes on /ready and /alive, one container port (3000) and a Service to
    // it alone, secrets by reference, a budget and a Service that select the pods.
    assert_eq!(strings(&summary["k8s_kinds"]), ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]);
    assert_eq!(summary["probes"]["readinessProbe"], "/ready");
    assert_eq!(summary["probes"]["livenessProbe"], "/alive");
    assert_eq!(summary["container_ports"], serde_json::json!([3000]));
    assert_eq!(summary["service_target_ports"], serde_json::json!(["http"]));
    for key in ["db-password", "jwt-secret", "master-key", "keycloak-client-secret"] {
        assert!(strings(&summary["secret_refs"]).contains(&key.to_owned()), "{}", summary["secret_refs"]);
    }
    assert_eq!(summary["pdb_selects_pods"], serde_json::json!([true]));
    assert_eq!(summary["service_selects_pods"], serde_json::json!([true]));
    let env = &summary["config_maps"]["oh-host-env"];
    assert!(env["OH_ADMIN_BIND"].as_str().unwrap().starts_with("127.0.0.1:"), "{env}");
    assert!(env.get("JWT_SECRET").is_none() && env.get("DB_PASS").is_none(), "a secret in a ConfigMap: {env}");

    // The profile the pods serve is the repository's SaaS profile, word for word.
    let saas = fs::read_to_string(workspace().join("examples/plugins.saas.toml")).unwrap();
    assert!(
        summary["config_maps"]["oh-host-profile"]["plugins.toml"] == saas.as_str(),
        "deploy/k8s/profile.yaml drifted from examples/plugins.saas.toml: copy it again"
    );
}

#[test]
fn the_image_serves_the_web_client_it_builds() {
    let dockerfile = fs::read_to_string(workspace().join("Dockerfile")).unwrap();
    // The stage that builds OpenHands' client runs the script in the repository, at 0.62.0.
    assert!(dockerfile.contains("ARG OPENHANDS_TAG=0.62.0"), "{dockerfile}");
    assert!(dockerfile.contains("COPY deploy/web-client.sh"), "{dockerfile}");
    assert!(dockerfile.contains("web-client.sh /build/openhands/frontend /out/web"), "{dockerfile}");
    // What it builds lands where the server looks for it.
    let dir = dockerfile
        .lines()
        .find_map(|l| l.trim().trim_end_matches('\\').trim().strip_prefix("FRONTEND_DIRECTORY="))
        .expect("the image sets FRONTEND_DIRECTORY");
    assert!(dockerfile.contains(&format!("COPY --from=web-client --chown=root:root /out/web {dir}")), "{dockerfile}");
    // The multi-node profiles are in the image, found with OH_PLUGINS_DIR.
    assert!(dockerfile.contains("examples/plugins.saas.toml examples/plugins.postgres.toml /etc/oh-host/"));
    assert!(dockerfile.contains("OH_PLUGINS_DIR=/opt/oh-host/plugins"));

    // The script refuses what is not a frontend checkout, saying what it wants.
    let out = Command::new("sh")
        .arg(workspace().join("deploy/web-client.sh"))
        .args([workspace().to_str().unwrap(), "/nonexistent/out"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frontend/ of OpenHands at tag 0.62.0"));
}
