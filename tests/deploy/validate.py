"""Validates deploy/ offline, as `docker compose config` and `kubectl apply --dry-run=server`
would, without a Docker engine or a cluster: deploy/compose.yaml (interpolated from
deploy/.env.example as compose would) by the compose specification's parser (compose-spec),
deploy/k8s/*.yaml against the Kubernetes schemas (kubernetes-validate, strict). Then the
properties a deployment of ours must have. Prints a JSON summary; exits 1 with the problems.

usage: validate.py REPO_ROOT KUBERNETES_VERSION
"""
import json
import pathlib
import re
import sys

import yaml
from compose_spec import PyOptions
import kubernetes_validate

root = pathlib.Path(sys.argv[1])
k8s_version = sys.argv[2]
deploy = root / "deploy"
problems = []


def interpolate(text, env):
    """Compose's interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""

    def one(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        value = env.get(name)
        if op in (":?", "?") and not value:
            problems.append(f"compose.yaml: {name} is required ({arg}) and deploy/.env.example lacks it")
            return ""
        if op == ":-" and not value:
            return arg
        if op == "-" and value is None:
            return arg
        return value or ""

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|-|:\?|\?)([^}]*))?\}", one, text)


env = {}
for line in (deploy / ".env.example").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        key, _, value = line.partition("=")
        env[key.strip()] = value.strip()

# --- compose ---
compose_text = interpolate((deploy / "compose.yaml").read_text(), env)
try:
    compose = PyOptions(apply_merge=True).from_yaml(compose_text)  # YAML merge keys (<<), as compose does
    compose.validate()
    spec = compose.to_dict()
except ValueError as e:
    problems.append(f"deploy/compose.yaml: {e}")
    spec = {"services": {}}
services = spec.get("services") or {}
nodes = sorted(n for n, s in services.items() if (s.get("command") or [None])[0] == "serve")
published = {n: s.get("ports") for n, s in services.items() if s.get("ports")}
for name in nodes:
    node = services[name]
    environment = node.get("environment") or {}
    if environment.get("OPENHANDS_PLUGINS_TOML") != "/etc/oh-host/plugins.saas.toml":
        problems.append(f"compose node {name} does not serve the SaaS profile")
    if not environment.get("REDIS_HOST"):
        problems.append(f"compose node {name} has no REDIS_HOST (the clustered manager is skipped)")
    if not str(environment.get("OH_ADMIN_BIND", "")).startswith("127.0.0.1:"):
        problems.append(f"compose node {name}: the admin listener is not on loopback")
    if "healthcheck" not in node:
        problems.append(f"compose node {name} has no healthcheck")
for name in ("postgres", "redis", "keycloak", "proxy", "migrate"):
    if name not in services:
        problems.append(f"compose has no {name} service")
if sorted(published) != ["keycloak", "proxy"]:
    problems.append(f"compose publishes ports of {sorted(published)}; only the proxy and Keycloak should")
realm_mounts = [v for v in (services.get("keycloak") or {}).get("volumes") or [] if "import" in json.dumps(v)]
if not realm_mounts:
    problems.append("compose: Keycloak imports no realm")
realm = json.loads((deploy / "keycloak" / "openhands-realm.json").read_text())
clients = [c["clientId"] for c in realm.get("clients", [])]
caddy = (deploy / "Caddyfile").read_text()
for name in nodes:
    if f"{name}:3000" not in caddy:
        problems.append(f"the proxy does not send to {name}")

# --- kubernetes ---
manifests = []
for path in sorted((deploy / "k8s").glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        try:
            kubernetes_validate.validate(doc, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{path.relative_to(root)}: {doc.get('kind')}/{doc['metadata']['name']}: {e.message} at {list(e.path)}")
        except Exception as e:  # an unknown kind, a schema missing for this version
            problems.append(f"{path.relative_to(root)}: {e}")
        manifests.append(doc)
by_kind = {}
for doc in manifests:
    by_kind.setdefault(doc["kind"], []).append(doc)
deployment = (by_kind.get("Deployment") or [{}])[0]
pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
container = (pod.get("containers") or [{}])[0]
probes = {
    kind: (container.get(kind) or {}).get("httpGet", {}).get("path")
    for kind in ("readinessProbe", "livenessProbe", "startupProbe")
}
ports = [p.get("containerPort") for c in pod.get("containers", []) for p in c.get("ports", [])]
service_ports = [p.get("targetPort") for s in by_kind.get("Service", []) for p in s["spec"]["ports"]]
secret_refs = sorted(
    {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
)
config_maps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
labels = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
pdb_selects = [
    p["spec"]["selector"]["matchLabels"].items() <= labels.items() for p in by_kind.get("PodDisruptionBudget", [])
]
service_selects = [s["spec"]["selector"].items() <= labels.items() for s in by_kind.get("Service", [])]
if problems:
    print("\n".join(problems), file=sys.stderr)
print(
    json.dumps(
        {
            "compose_services": sorted(services),
            "compose_nodes": nodes,
            "compose_published": sorted(published),
            "realm_clients": clients,
            "k8s_kinds": sorted(by_kind),
            "probes": probes,
            "container_ports": ports,
            "service_target_ports": service_ports,
            "secret_refs": secret_refs,
            "config_maps": config_maps,
            "pdb_selects_pods": pdb_selects,
            "service_selects_pods": service_selects,
        }
    )
)
sys.exit(1 if problems else 0)
