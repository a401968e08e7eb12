"""Structural checks of the Containerfile and deploy/kubernetes/ (run by scripts/check-deploy.sh).

What the image and the manifests promise each other and the program:
- a multi-stage build whose runtime stage is not the build stage, a numeric non-root USER,
  `run` as the default command, the state on a VOLUME named by $STATE_DIRECTORY, secrets in
  $CREDENTIALS_DIRECTORY, the configuration at $SOCIALTALENT_SYNC_CONFIG, a HEALTHCHECK on
  /healthz, the endpoint's port exposed;
- a Deployment of exactly one replica with `strategy: Recreate` (the state is single-writer),
  a liveness probe on /livez and readiness on /healthz, non-root, the PVC, ConfigMap and Secret
  mounted where the image expects them; a CronJob running `sync` with `concurrencyPolicy: Forbid`;
- the ConfigMap's configuration passes `check-config` with the Secret's keys as files in
  $CREDENTIALS_DIRECTORY (every secret the configuration needs is in the Secret).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
FAILURES = []


def check(condition, message):
    if not condition:
        FAILURES.append(message)


def load(name):
    documents = [d for d in yaml.safe_load_all((ROOT / "deploy/kubernetes" / name).read_text()) if d]
    check(len(documents) == 1, f"{name}: expected one document, found {len(documents)}")
    return documents[0]


def containerfile():
    with tempfile.TemporaryDirectory() as work:
        parser = DockerfileParser(path=work)
        parser.content = (ROOT / "Containerfile").read_text()
        return containerfile_checks(parser)


def containerfile_checks(parser):
    instructions = parser.structure
    stages = [i for i in instructions if i["instruction"] == "FROM"]
    check(len(stages) >= 2, "Containerfile: not a multi-stage build")
    build_names = [s["value"].split()[-1] for s in stages[:-1] if " AS " in s["value"].upper()]
    final = stages[-1]["value"]
    check("AS" not in final.upper().split(), "Containerfile: the runtime stage should be the last, unnamed stage")
    check(not any(final.startswith(name) for name in build_names), "Containerfile: the runtime stage builds on the build stage")
    runtime = [i for i in instructions if i["startline"] > stages[-1]["startline"]]

    def last(kind):
        found = [i["value"] for i in runtime if i["instruction"] == kind]
        return found[-1] if found else None

    user = last("USER")
    check(user is not None, "Containerfile: no USER in the runtime stage")
    uid = (user or "0").split(":")[0]
    check(uid.isdigit() and int(uid) != 0, f"Containerfile: USER {user} is not a numeric non-root user")
    entrypoint = json.loads(last("ENTRYPOINT") or "[]")
    command = json.loads(last("CMD") or "[]")
    check(entrypoint and entrypoint[0].endswith("/socialtalent-sync"), f"Containerfile: ENTRYPOINT {entrypoint}")
    check(command == ["run"], f"Containerfile: CMD should be [\"run\"], is {command}")
    env = parser.envs
    volumes = [v for i in runtime if i["instruction"] == "VOLUME" for v in json.loads(i["value"])]
    check(env.get("STATE_DIRECTORY") in volumes, f"Containerfile: $STATE_DIRECTORY {env.get('STATE_DIRECTORY')} is not a VOLUME {volumes}")
    check(bool(env.get("CREDENTIALS_DIRECTORY")), "Containerfile: no $CREDENTIALS_DIRECTORY")
    check(bool(env.get("SOCIALTALENT_SYNC_CONFIG")), "Containerfile: no $SOCIALTALENT_SYNC_CONFIG")
    health = last("HEALTHCHECK") or ""
    check("/healthz" in health, f"Containerfile: HEALTHCHECK does not ask /healthz: {health}")
    ports = [p for i in runtime if i["instruction"] == "EXPOSE" for p in i["value"].split()]
    check("9184" in ports, f"Containerfile: port 9184 not exposed: {ports}")
    return int(uid) if uid.isdigit() else None, env


def pod_checks(name, pod, container, uid, env, names):
    context = pod.get("securityContext", {})
    check(context.get("runAsNonRoot") is True, f"{name}: runAsNonRoot is not true")
    check(context.get("runAsUser") == uid, f"{name}: runAsUser {context.get('runAsUser')} is not the image's user {uid}")
    check(context.get("fsGroup") == uid, f"{name}: fsGroup {context.get('fsGroup')} should be {uid} so the volume is writable")
    check(container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation")
    variables = {e["name"]: e.get("value") for e in container.get("env", [])}
    for key in ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "SOCIALTALENT_SYNC_CONFIG"):
        check(variables.get(key, env.get(key)) == env.get(key), f"{name}: ${key} differs from the image's")
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    by_kind = {}
    for volume_name, volume in volumes.items():
        for kind in ("persistentVolumeClaim", "configMap", "secret"):
            if kind in volume:
                by_kind[kind] = (volume_name, volume[kind])
    claim = by_kind.get("persistentVolumeClaim")
    check(claim and claim[1]["claimName"] == names["pvc"], f"{name}: the state claim is not {names['pvc']}")
    check(claim and mounts.get(claim[0]) == env["STATE_DIRECTORY"], f"{name}: the state is not mounted at {env['STATE_DIRECTORY']}")
    config = by_kind.get("configMap")
    check(config and config[1]["name"] == names["configmap"], f"{name}: the ConfigMap is not {names['configmap']}")
    check(config and os.path.join(mounts.get(config[0], ""), "config.toml") == env["SOCIALTALENT_SYNC_CONFIG"],
          f"{name}: config.toml is not mounted at {env['SOCIALTALENT_SYNC_CONFIG']}")
    secret = by_kind.get("secret")
    check(secret and secret[1]["secretName"] == names["secret"], f"{name}: the Secret is not {names['secret']}")
    check(secret and mounts.get(secret[0]) == env["CREDENTIALS_DIRECTORY"], f"{name}: secrets are not mounted at {env['CREDENTIALS_DIRECTORY']}")


def manifests(uid, env, binary):
    configmap, secret, pvc = load("configmap.yaml"), load("secret.yaml"), load("pvc.yaml")
    deployment, cronjob = load("deployment.yaml"), load("cronjob.yaml")
    names = {"configmap": configmap["metadata"]["name"], "secret": secret["metadata"]["name"], "pvc": pvc["metadata"]["name"]}
    check("ReadWriteOnce" in pvc["spec"]["accessModes"], "pvc.yaml: the state volume should be ReadWriteOnce")

    spec = deployment["spec"]
    check(spec.get("replicas") == 1, f"deployment.yaml: replicas is {spec.get('replicas')}, must be 1")
    check(spec.get("strategy", {}).get("type") == "Recreate", "deployment.yaml: strategy must be Recreate")
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    check(len(pod["containers"]) == 1, "deployment.yaml: one container")
    check(container.get("args", ["run"]) == ["run"], f"deployment.yaml: args {container.get('args')}")
    port = next((p for p in container.get("ports", []) if p["containerPort"] == 9184), None)
    check(port is not None, "deployment.yaml: container port 9184")

    def probe_path(kind):
        return container.get(kind, {}).get("httpGet", {}).get("path")

    check(probe_path("livenessProbe") == "/livez", f"deployment.yaml: liveness probe on {probe_path('livenessProbe')}, not /livez")
    check(probe_path("readinessProbe") == "/healthz", f"deployment.yaml: readiness probe on {probe_path('readinessProbe')}, not /healthz")
    pod_checks("deployment.yaml", pod, container, uid, env, names)

    job = cronjob["spec"]
    check(job.get("concurrencyPolicy") == "Forbid", "cronjob.yaml: concurrencyPolicy must be Forbid")
    job_pod = job["jobTemplate"]["spec"]["template"]["spec"]
    job_container = job_pod["containers"][0]
    check(job_container.get("args", [])[:1] == ["sync"], f"cronjob.yaml: args {job_container.get('args')} do not run sync")
    pod_checks("cronjob.yaml", job_pod, job_container, uid, env, names)

    # The ConfigMap's configuration, with the Secret's keys as credential files, through the
    # real binary: it must load, and every secret it needs must be in the Secret.
    config_text = configmap["data"]["config.toml"]
    check('listen = "0.0.0.0:9184"' in config_text, "configmap.yaml: the endpoint must listen on 0.0.0.0:9184 for the probes")
    with tempfile.TemporaryDirectory() as work:
        credentials = Path(work, "credentials")
        credentials.mkdir()
        for key, value in secret.get("stringData", {}).items():
            Path(credentials, key).write_text(value)
        config = Path(work, "config.toml")
        config.write_text(config_text)
        result = subprocess.run(
            [binary, "--config", str(config), "check-config"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CREDENTIALS_DIRECTORY": str(credentials)},
            capture_output=True, text=True, check=False,
        )
        check(result.returncode == 0,
              f"configmap.yaml: check-config exited {result.returncode}:\n{result.stdout}\n{result.stderr}")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target/debug/socialtalent-sync")
    uid, env = containerfile()
    manifests(uid, env, binary)
    for failure in FAILURES:
        print(f"FAIL {failure}", file=sys.stderr)
    if FAILURES:
        sys.exit(1)
    print("Containerfile and deploy/kubernetes/: structure and contract OK")


if __name__ == "__main__":
    main()
