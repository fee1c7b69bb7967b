"""The checks of scripts/validate-deploy; run through that script.

Each check prints one line per file or finding; any failure makes the exit status 1.
"""

import json
import os
import pathlib
import re
import sys

import yaml

# The Kubernetes version whose built-in schemas kubernetes-validate checks against.
K8S_VERSION = "1.30.0"

# Kinds from CRDs that kubernetes-validate has no schema for, checked here by hand.
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def check_syntax(root):
    """Parses every YAML and JSON file under deploy/ and docker-compose.yml."""
    files = [root / "docker-compose.yml"]
    files += sorted(p for p in (root / "deploy").rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(root)
        try:
            if path.suffix in (".yml", ".yaml"):
                load_yaml_docs(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            else:
                continue
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            fail(f"{rel}: {e}")
            continue
        print(f"ok   syntax {rel}")


def check_scaled_object(rel, doc):
    """Checks a KEDA ScaledObject's shape: KEDA's CRD schema is not bundled."""
    spec = doc.get("spec") or {}
    target = spec.get("scaleTargetRef") or {}
    if not target.get("name"):
        fail(f"{rel}: ScaledObject has no spec.scaleTargetRef.name")
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        fail(f"{rel}: ScaledObject has no spec.triggers")
        return
    for t in triggers:
        if not isinstance(t, dict) or not t.get("type") or not isinstance(t.get("metadata"), dict):
            fail(f"{rel}: a trigger needs a type and a metadata map")
        elif t["type"] == "prometheus":
            for key in ("serverAddress", "query", "threshold"):
                if key not in t["metadata"]:
                    fail(f"{rel}: prometheus trigger lacks metadata.{key}")


def check_k8s(root):
    """Validates the manifests under deploy/k8s/ against Kubernetes' schemas."""
    import kubernetes_validate

    names = {}
    for path in sorted((root / "deploy" / "k8s").glob("*.y*ml")):
        rel = path.relative_to(root)
        for doc in load_yaml_docs(path):
            kind = (doc.get("apiVersion"), doc.get("kind"))
            names.setdefault(kind[1], set()).add(doc.get("metadata", {}).get("name"))
            if kind in CRD_KINDS:
                check_scaled_object(rel, doc)
                print(f"ok   k8s {rel} {kind[1]} (CRD, checked by shape)")
                continue
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{rel} {kind[1]}: {e.message} at {'.'.join(map(str, e.path))}")
                continue
            except Exception as e:  # an unknown kind or version
                fail(f"{rel} {kind[1]}: {e}")
                continue
            print(f"ok   k8s {rel} {kind[1]} {doc['metadata'].get('name')}")
    return names


def check_compose(root):
    """Checks docker-compose.yml's structure: what `docker compose config` would refuse."""
    rel = "docker-compose.yml"
    compose = load_yaml_docs(root / rel)[0]
    services = compose.get("services") or {}
    volumes = set((compose.get("volumes") or {}).keys())
    secrets = set((compose.get("secrets") or {}).keys())
    for needed in ("postgres", "redis", "migrate", "gateway", "worker", "worker-gpu", "prometheus", "grafana"):
        if needed not in services:
            fail(f"{rel}: no service {needed}")
    # One-shots: services the others wait on to complete. Their exit status is their health.
    one_shots = {
        dep
        for svc in services.values()
        if isinstance(svc.get("depends_on"), dict)
        for dep, how in svc["depends_on"].items()
        if (how or {}).get("condition") == "service_completed_successfully"
    }
    for name, svc in services.items():
        if not svc.get("image") and not svc.get("build"):
            fail(f"{rel}: {name} has neither image nor build")
        hc = svc.get("healthcheck") or {}
        if name in one_shots:
            if str(svc.get("restart", "no")) != "no":
                fail(f"{rel}: one-shot {name} must not restart")
        elif not hc.get("test"):
            fail(f"{rel}: {name} has no healthcheck")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            fail(f"{rel}: {name}: depends_on must name conditions, not be a list")
            deps = {}
        for dep, how in deps.items():
            if dep not in services:
                fail(f"{rel}: {name} depends on unknown service {dep}")
            cond = (how or {}).get("condition")
            if cond not in ("service_healthy", "service_completed_successfully"):
                fail(f"{rel}: {name} -> {dep}: condition {cond!r}")
            elif cond == "service_healthy" and not (services.get(dep) or {}).get("healthcheck"):
                fail(f"{rel}: {name} waits for {dep} to be healthy, which has no healthcheck")
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source and not source.startswith((".", "/", "~")) and source not in volumes:
                fail(f"{rel}: {name} mounts undeclared volume {source}")
            if source.startswith("./") and not (root / source).exists() and source != "./models":
                fail(f"{rel}: {name} mounts missing path {source}")
        for secret in svc.get("secrets") or []:
            secret = secret if isinstance(secret, str) else secret.get("source")
            if secret not in secrets:
                fail(f"{rel}: {name} uses undeclared secret {secret}")
    gpu = services.get("worker-gpu") or {}
    if "gpu" not in (gpu.get("profiles") or []):
        fail(f"{rel}: worker-gpu is not in the gpu profile")
    devices = (((gpu.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
    if not devices or devices[0].get("driver") != "nvidia":
        fail(f"{rel}: worker-gpu reserves no NVIDIA device")
    if "--appendonly" not in (services.get("redis") or {}).get("command", []):
        fail(f"{rel}: redis runs without AOF")
    if (services.get("migrate") or {}).get("command") != ["migrate"]:
        fail(f"{rel}: the migrate service does not run `migrate`")
    for name in ("gateway", "worker", "worker-gpu"):
        deps = (services.get(name) or {}).get("depends_on") or {}
        if (deps.get("migrate") or {}).get("condition") != "service_completed_successfully":
            fail(f"{rel}: {name} starts before the migrations have run")
    print(f"ok   compose {len(services)} services, {len(volumes)} volumes, {len(secrets)} secrets")


def check_compose_cli(root):
    """Runs `docker compose config` on the file where a compose client exists.

    Compose v2 (the `docker compose` plugin) checks the file as it is. Debian's
    docker-compose 1.29 predates the top-level `name` key, so it checks a copy without that
    one line, with the same project name given by `-p`.
    """
    import shutil
    import subprocess
    import tempfile

    rel = "docker-compose.yml"
    env = {"PATH": os.environ.get("PATH", "")}
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, env=env)
        if probe.returncode == 0:
            run = subprocess.run(
                ["docker", "compose", "-f", rel, "--profile", "gpu", "config", "-q"],
                cwd=root, capture_output=True, text=True, env=env,
            )
            report(rel, "docker compose config", run)
            return
    if shutil.which("docker-compose"):
        text = (root / rel).read_text()
        name = re.search(r"^name:\s*(\S+)\s*$", text, re.M)
        stripped = re.sub(r"^name:.*\n", "", text, flags=re.M)
        # Same folder, so relative paths resolve as they do for the real file.
        with tempfile.NamedTemporaryFile("w", dir=root, prefix=".compose-check-", suffix=".yml") as f:
            f.write(stripped)
            f.flush()
            command = ["docker-compose", "-f", f.name, "--profile", "gpu", "config", "-q"]
            if name:
                command[1:1] = ["-p", name.group(1)]
            run = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
        report(rel, "docker-compose config (v1; without the top-level name)", run)
        return
    print(f"skip {rel}: no compose client (the docker compose plugin or docker-compose) to run `config`")


def report(rel, what, run):
    if run.returncode != 0:
        fail(f"{rel}: {what} refused it:\n{run.stderr.strip() or run.stdout.strip()}")
    else:
        print(f"ok   {what} {rel}")


def exported_metrics(root):
    """Metric names the Rust code registers, read from every crate's metrics.rs."""
    names = set()
    for path in sorted(root.glob("crates/*/src/metrics.rs")):
        text = path.read_text()
        prefixes = re.findall(r'new_custom\(\s*Some\("([a-z_]+)"', text)
        # A metric's name is the first argument of its constructor or its Opts.
        literals = set(re.findall(r'\bnew\(\s*"([a-z][a-z0-9_]*)"', text))
        names |= {n for n in literals if n.startswith("huaxian_")}
        names |= {f"{p}_{n}" for p in prefixes for n in literals if not n.startswith("huaxian_")}
    return names


def queried_metrics(expr):
    """The huaxian metric names a PromQL expression reads."""
    found = set()
    for name in re.findall(r"\bhuaxian_[a-z0-9_]+", expr):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        found.add(name)
    return found


def check_metrics(root):
    """Every huaxian metric a dashboard or a scaler queries must be one the code exports."""
    exported = exported_metrics(root)
    if not exported:
        fail("no metric names found in crates/*/src/metrics.rs")
        return
    queries = []
    for path in sorted((root / "deploy" / "grafana" / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in dash.get("panels", []):
            for target in panel.get("targets", []):
                queries.append((path.relative_to(root), panel.get("title"), target.get("expr", "")))
    for path in sorted((root / "deploy" / "k8s").glob("*.y*ml")):
        for doc in load_yaml_docs(path):
            for t in (doc.get("spec") or {}).get("triggers") or []:
                queries.append((path.relative_to(root), doc["metadata"]["name"], t.get("metadata", {}).get("query", "")))
    used = set()
    for rel, where, expr in queries:
        names = queried_metrics(expr)
        used |= names
        for name in sorted(names - exported):
            fail(f"{rel} ({where}): {name} is not exported by the code")
    print(f"ok   metrics: {len(queries)} queries read {len(used)} names, all among {len(exported)} exported")


def main():
    root = pathlib.Path(sys.argv[1])
    check_syntax(root)
    check_compose(root)
    check_compose_cli(root)
    check_k8s(root)
    check_metrics(root)
    if failures:
        print(f"validate-deploy: {len(failures)} failure(s)")
        sys.exit(1)
    print("validate-deploy: all checks passed")


if __name__ == "__main__":
    main()
