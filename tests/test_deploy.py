"""deploy/: every kustomization renders with `kubectl kustomize` and validates strictly, offline (in a network
namespace of its own where the machine allows), against the Kubernetes schemas (`kubernetes-validate --strict`,
which ships them), for the oldest release with native gRPC probes (1.27) and its newest; the rendered pods run as
non-root on a read-only root filesystem, probe with gRPC, get a termination grace period covering the drain, and
take arguments `dualvec serve` accepts; the Services, autoscaler and disruption budget select those pods. The
Dockerfile is read as text: multi-stage, a non-root user and no compiler in the final stage."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dualvec.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = ["base", "overlays/small", "overlays/production"]
SCHEMA_VERSIONS = ["1.27.0", None]  # None: the newest the validator ships
VALIDATOR = str(Path(sys.executable).with_name("kubernetes-validate"))
BUNDLE_PATH = "/bundle"
# the 1M x 300 server's measured memory (docs/performance.md): PSS summed over its processes
MEASURED_PSS_MIB = 3150

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")


def render(folder: Path) -> str:
    run = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _offline() -> list[str]:
    """A command prefix that runs a program without any network (a network namespace of its own), where this
    machine allows one: the validator must need none. Empty where it does not."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10)
    return ["unshare", "--net"] if probe.returncode == 0 else []


OFFLINE = _offline()


def validate(text: str, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(text)
    for version in SCHEMA_VERSIONS:
        cmd = [*OFFLINE, VALIDATOR, "--strict", "--quiet", *(["-k", version] if version else []), str(rendered)]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stdout}{run.stderr}"


def by_kind(text: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for doc in yaml.safe_load_all(text):
        if doc:
            out.setdefault(doc["kind"], []).append(doc)
    return out


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in a container's args."""
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> tuple[str, str]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) not installed")
    return request.param, render(DEPLOY / "k8s" / request.param)


@needs_kubectl
def test_every_kustomization_renders_and_validates_strictly(rendered, tmp_path):
    validate(rendered[1], tmp_path)


@needs_kubectl
def test_the_secrets_kustomization_renders_from_files_put_beside_it(tmp_path):
    folder = tmp_path / "secrets"
    shutil.copytree(DEPLOY / "k8s" / "secrets", folder)
    for name in ("tokens", "tls.crt", "tls.key"):
        (folder / name).write_text(f"not a real {name}\n")
    secrets = by_kind(render(folder))["Secret"]
    validate(render(folder), tmp_path)
    assert {s["metadata"]["name"]: s["type"] for s in secrets} == {"dualvec-auth": "Opaque",
                                                                   "dualvec-tls": "kubernetes.io/tls"}
    ignored = (DEPLOY / "k8s" / "secrets" / ".gitignore").read_text().split()
    assert {"tokens", "tls.crt", "tls.key"} <= set(ignored)


@needs_kubectl
def test_pods_run_as_non_root_on_a_read_only_root_with_grpc_probes_and_the_bundle_read_only(rendered):
    name, text = rendered
    objects = by_kind(text)
    (deployment,) = objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    args = container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == int(flag(args, "port")) == 50051
    # probes are native gRPC, on a port the server serves health on in plaintext: the main port, or --health-port
    # when the main port speaks TLS (the kubelet's gRPC probe cannot)
    probe_port = int(flag(args, "health-port")) if flag(args, "tls-cert") else 50051
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(container[probe]) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, (name, probe)
        assert container[probe]["grpc"]["port"] == probe_port, (name, probe)
    assert probe_port in ports.values()
    # the bundle: a read-only volume at the path the image's command serves
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert args[0] == BUNDLE_PATH and mounts[BUNDLE_PATH]["readOnly"] is True
    # every flag is one `dualvec serve` takes
    build_parser().parse_args(["serve", *args])
    # the kubelet waits for the whole drain before it kills
    drain = float(flag(args, "drain-delay")) + float(flag(args, "grace"))
    assert pod["terminationGracePeriodSeconds"] >= drain + 3, name
    # Prometheus finds the metrics port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == flag(args, "metrics-port") == str(ports["metrics"])


@needs_kubectl
def test_a_headless_service_a_tool_service_an_autoscaler_and_a_disruption_budget_select_the_pods(rendered):
    objects = by_kind(rendered[1])
    (deployment,) = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    services = {s["metadata"]["name"]: s["spec"] for s in objects["Service"]}
    headless = services["dualvec-headless"]
    assert headless["clusterIP"] == "None" and not headless.get("publishNotReadyAddresses", False)
    assert "clusterIP" not in services["dualvec"] and services["dualvec"]["type"] == "ClusterIP"
    for spec in services.values():
        assert selects(spec["selector"], labels)
        assert {"name": "grpc", "port": 50051, "targetPort": "grpc"}.items() <= next(
            p for p in spec["ports"] if p["name"] == "grpc").items()
    (hpa,) = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # clients keep the pods they resolved until a connection closes: servers close theirs, so added pods get calls
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert float(flag(container["args"], "max-connection-age")) > 0
    (pdb,) = objects["PodDisruptionBudget"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["maxUnavailable"] == 1


@needs_kubectl
def test_production_is_sized_from_the_measured_memory_and_mounts_the_token_and_tls_secrets():
    objects = by_kind(render(DEPLOY / "k8s" / "overlays" / "production"))
    (deployment,) = objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    resources = container["resources"]
    assert int(resources["requests"]["memory"].removesuffix("Mi")) >= MEASURED_PSS_MIB
    assert int(flag(args, "processes")) == int(resources["requests"]["cpu"])  # a core per worker process
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert sorted(secrets.values()) == ["dualvec-auth", "dualvec-tls"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for option, secret in (("tls-cert", "dualvec-tls"), ("tls-key", "dualvec-tls"),
                           ("auth-token-file", "dualvec-auth")):
        volume = next(name for name, s in secrets.items() if s == secret)
        assert Path(flag(args, option)).parent == Path(mounts[volume]), option
    (pvc,) = objects["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]


# ---------------------------------------------------------------------------------------------------- Dockerfile

def dockerfile_stages() -> list[tuple[str, list[str]]]:
    """(FROM line, instructions) per stage; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def test_the_image_is_multi_stage_and_its_final_stage_runs_as_a_user_without_a_compiler():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    assert re.search(r"python:3\.11-slim", (DEPLOY / "Dockerfile").read_text())
    final_from, final = stages[-1]
    users = [i.split(None, 1)[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert not any(re.search(r"\b(gcc|g\+\+|clang|build-essential|make)\b", i) for i in final)
    assert any(i.startswith("COPY --from=") for i in final)
    assert any(re.search(r"\b(gcc|build-essential)\b", i) for _, body in stages[:-1] for i in body)
    exposed = {p for i in final if i.upper().startswith("EXPOSE ") for p in i.split()[1:]}
    assert {"50051", "9100"} <= exposed
    entry = next(i for i in final if i.startswith("ENTRYPOINT "))
    assert entry == 'ENTRYPOINT ["dualvec", "serve"]'  # exec form: dualvec is process 1 and gets SIGTERM
    cmd = next(i for i in final if i.startswith("CMD "))
    assert f'["{BUNDLE_PATH}"' in cmd


def test_the_build_context_sends_only_what_the_image_installs():
    lines = (line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines())
    ignore = [line for line in lines if line and not line.startswith("#")]
    assert ignore[0] == "*"  # everything left out, then the sources named back in
    sources = {src for _, body in dockerfile_stages() for i in body
               if i.startswith("COPY ") and not i.startswith("COPY --from") for src in i.split()[1:-1]}
    assert sources == {"pyproject.toml", "README.md", "dualvec", "indexer", "server", "proto"}
    for src in sources:
        assert f"!{src}/" in ignore or f"!{src}" in ignore, src
