"""cluster/ and docker/ agree with the project: versions, commands, configs, GPUs.

Fast and offline: files are parsed, never built or applied (no Docker, no Kubernetes,
no cloud account here). The Ray version comes from pyproject.toml, the Python tag from
requires-python, the subcommands from the real argument parser, the configs from
configs/, and the cluster-launcher YAML is validated against Ray's own schema.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from umpo_dist.ops.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
CLUSTER, DOCKER, DOCS = REPO / "cluster", REPO / "docker", REPO / "README.md"
LAUNCHER = CLUSTER / "aws.yaml"
KUBERAY = CLUSTER / "kuberay"
COMPOSE = DOCKER / "compose.yaml"
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")


# -- what the project pins ---------------------------------------------------------------
def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def ray_version() -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError("pyproject.toml does not pin ray with ==")


def python_tag() -> str:
    m = re.search(r"(\d+)\.(\d+)", _pyproject()["project"]["requires-python"])
    return f"py{m.group(1)}{m.group(2)}"


def torch_pin() -> str:
    m = re.search(r"^TORCH \?= torch==([0-9.]+)", (REPO / "Makefile").read_text(), re.M)
    return m.group(1)


def subcommands() -> set[str]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(action.choices)


# -- the files -----------------------------------------------------------------------------
def yaml_files() -> list[Path]:
    return sorted(p for d in (CLUSTER, DOCKER) for p in d.rglob("*") if p.suffix in (".yaml", ".yml"))


def text_files() -> list[Path]:
    return sorted(p for d in (CLUSTER, DOCKER) for p in d.rglob("*") if p.is_file())


def docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kube_objects() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in docs(p)]


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """(where, RayCluster spec) for the RayCluster and each RayJob's embedded cluster."""
    out = []
    for path, obj in kube_objects():
        if obj["kind"] == "RayCluster":
            out.append((f"{path.name} RayCluster {obj['metadata']['name']}", obj["spec"]))
        elif obj["kind"] == "RayJob" and "rayClusterSpec" in obj["spec"]:
            out.append((f"{path.name} RayJob {obj['metadata']['name']}", obj["spec"]["rayClusterSpec"]))
    return out


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def dockerfile_commands(path: Path) -> list[str]:
    """RUN/CMD/ENTRYPOINT instructions, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [line.split(None, 1)[1] for line in text.splitlines()
            if line.split(None, 1)[:1] and line.split(None, 1)[0] in ("RUN", "CMD", "ENTRYPOINT")]


def launcher_commands(cfg: dict) -> list[str]:
    cmds = [c for key in COMMAND_KEYS for c in cfg.get(key) or []]
    for node in cfg["available_node_types"].values():
        cmds += [c for key in COMMAND_KEYS for c in node.get(key) or []]
    return cmds


def doc_code_lines() -> list[str]:
    if not DOCS.exists():
        return []
    lines, inside = [], False
    for line in DOCS.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def all_commands() -> list[tuple[str, str]]:
    """(where, shell command) for every command these files would run."""
    out = [(f"{LAUNCHER.name}", c) for c in launcher_commands(docs(LAUNCHER)[0])]
    for path, obj in kube_objects():
        if obj["kind"] == "RayJob":
            out.append((f"{path.name} entrypoint", obj["spec"]["entrypoint"]))
        for spec in _pod_specs(obj):
            for c in spec.get("containers", []):
                out.append((f"{path.name} {c['name']}", " ".join(c.get("command", []) + c.get("args", []))))
    for name, svc in docs(COMPOSE)[0]["services"].items():
        if "command" in svc:
            cmd = svc["command"]
            out.append((f"compose {name}", cmd if isinstance(cmd, str) else " ".join(cmd)))
    for path in sorted(DOCKER.glob("Dockerfile.*")):
        if path.suffix != ".dockerignore":
            out += [(path.name, c) for c in dockerfile_commands(path)]
    out += [(DOCS.name, line) for line in doc_code_lines()]
    return out


def _pod_specs(obj: dict) -> list[dict]:
    specs = []
    if obj["kind"] == "Deployment":
        specs.append(obj["spec"]["template"]["spec"])
    return specs


UMPO_CALL = re.compile(r"(?:^|[\s;&|(`$])(?:umpo|python -m umpo_dist\.cli)\s+([a-z][\w-]*)")
CONFIG_PATH = re.compile(r"configs/([\w.-]+\.ya?ml)")
RAY_IMAGE = re.compile(r"rayproject/ray:([\w.-]+)")
OWN_IMAGE = re.compile(r"umpo-dist:([\w.-]+)")


# -- tests -------------------------------------------------------------------------------------
def test_files_exist():
    for path in (LAUNCHER, KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml", KUBERAY / "mlflow.yaml",
                 DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu", COMPOSE):
        assert path.is_file(), path


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses(path):
    assert docs(path), f"{path} has no YAML documents"


def test_ray_images_match_the_pinned_ray_and_python():
    expected = f"{ray_version()}-{python_tag()}"
    found = []
    for path in text_files():
        for tag in RAY_IMAGE.findall(path.read_text()):
            found.append((path.name, tag))
            assert tag == expected or re.fullmatch(rf"{re.escape(expected)}-(cpu|gpu|cu\d+)", tag), \
                f"{path.relative_to(REPO)}: rayproject/ray:{tag} is not Ray {ray_version()} / {python_tag()}"
    assert ("Dockerfile.cpu", expected) in found
    assert ("Dockerfile.gpu", f"{expected}-gpu") in found
    assert any(name == LAUNCHER.name for name, _ in found)


def test_own_images_carry_the_same_versions():
    expected = f"{ray_version()}-{python_tag()}"
    for path in text_files():
        for tag in OWN_IMAGE.findall(path.read_text()):
            assert tag in (expected, f"{expected}-gpu"), f"{path.relative_to(REPO)}: umpo-dist:{tag}"


def test_kuberay_ray_version_matches_pyproject():
    specs = ray_cluster_specs()
    assert {where.split()[1] for where, _ in specs} == {"RayCluster", "RayJob"}
    for where, spec in specs:
        assert str(spec["rayVersion"]) == ray_version(), where


def test_dockerfiles_install_the_project_torch_and_mujoco():
    for name, cpu in (("Dockerfile.cpu", True), ("Dockerfile.gpu", False)):
        text = (DOCKER / name).read_text()
        assert f"TORCH_VERSION={torch_pin()}" in text, f"{name}: torch differs from the Makefile's pin"
        assert ("download.pytorch.org/whl/cpu" in text) is cpu, f"{name}: {'CPU' if cpu else 'CUDA'} torch expected"
        runs = " ".join(dockerfile_commands(DOCKER / name))
        assert "pip install --no-cache-dir ." in runs
        assert "HalfCheetah-v5" in runs  # MuJoCo steps in the image
        for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", text, re.M):
            for item in src.split():
                assert (REPO / item).exists(), f"{name} copies {item}, which is not in the repository"


def test_commands_name_real_subcommands_and_configs():
    valid = subcommands()
    seen = set()
    for where, command in all_commands():
        for sub in UMPO_CALL.findall(command):
            assert sub in valid, f"{where}: `umpo {sub}` is not a subcommand ({sorted(valid)}): {command}"
            seen.add(sub)
        for config in CONFIG_PATH.findall(command):
            assert (REPO / "configs" / config).is_file(), f"{where}: configs/{config} does not exist"
    assert {"train", "submit"} <= seen


def test_rayjob_entrypoint_is_a_valid_training_command():
    from umpo_dist import config as config_mod

    jobs = [obj for _, obj in kube_objects() if obj["kind"] == "RayJob"]
    assert jobs
    for job in jobs:
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[:2] == ["umpo", "train"] and "--no-progress" in argv
        config = CONFIG_PATH.search(argv[2])
        assert config, argv[2]
        sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        config_mod.load(REPO / "configs" / config.group(1), sets)  # every --set key exists and is valid


def test_kuberay_gpu_group_requests_gpus_and_cpu_groups_do_not():
    for where, spec in ray_cluster_specs():
        gpu_groups = []
        for group in spec["workerGroupSpecs"]:
            limits = [c.get("resources", {}).get("limits", {}) for c in containers(group)]
            gpus = sum(int(lim.get("nvidia.com/gpu", 0)) for lim in limits)
            images = [c["image"] for c in containers(group)]
            if gpus:
                gpu_groups.append(group["groupName"])
                assert all(img.endswith("-gpu") for img in images), f"{where}: GPU group without a GPU image"
                cpus = sum(float(lim.get("cpu", 0)) for lim in limits)
                assert cpus >= 2, f"{where}: the GPU group must fit both learners' CPUs (learner_cpus=1 each)"
                assert group.get("minReplicas", 0) >= 1, f"{where}: learner_gpus=auto needs the GPU at start"
            else:
                assert not any(img.endswith("-gpu") for img in images), f"{where}: CPU group with the GPU image"
        assert gpu_groups, f"{where}: no worker group requests nvidia.com/gpu"
        assert len(spec["workerGroupSpecs"]) > len(gpu_groups), f"{where}: no CPU worker group"
        head = containers(spec["headGroupSpec"])[0]
        assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})
        assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token authentication is off"


def test_kuberay_runs_log_to_the_tracking_service():
    services = {obj["metadata"]["name"]: obj for _, obj in kube_objects() if obj["kind"] == "Service"}
    for where, spec in ray_cluster_specs():
        env = {e["name"]: e.get("value") for e in containers(spec["headGroupSpec"])[0].get("env", [])}
        uri = env.get("MLFLOW_TRACKING_URI")
        m = re.fullmatch(r"http://([\w-]+):(\d+)", uri or "")
        assert m, f"{where}: head has no MLFLOW_TRACKING_URI"
        assert m.group(1) in services, f"{where}: no Service {m.group(1)}"
        assert int(m.group(2)) in [p["port"] for p in services[m.group(1)]["spec"]["ports"]]
    (deploy,) = [obj for _, obj in kube_objects() if obj["kind"] == "Deployment"]
    cmd = containers({"template": deploy["spec"]["template"]})[0]["command"]
    assert cmd[:2] == ["mlflow", "server"] and "--artifacts-destination" in cmd


def test_launcher_config_is_valid_for_ray():
    import jsonschema
    import ray.autoscaler

    cfg = docs(LAUNCHER)[0]
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_launcher_node_types_cpu_workers_and_gpu_learners():
    cfg = docs(LAUNCHER)[0]
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    cpu = {name: t for name, t in workers.items() if not t["resources"].get("GPU", 0)}
    assert gpu and cpu and not head["resources"].get("GPU")
    for name, t in cpu.items():
        assert t.get("max_workers", 0) > t.get("min_workers", 0), f"{name} does not autoscale"
        assert "docker" not in t  # the CPU image and the CPU-torch setup_commands apply
    assert "download.pytorch.org/whl/cpu" in " ".join(cfg["setup_commands"])
    for name, t in gpu.items():
        assert t["resources"]["CPU"] >= 2, f"{name}: both learners' CPUs must fit"
        assert t["docker"]["worker_image"].endswith("-gpu")
        setup = " ".join(t["worker_setup_commands"])
        assert "torch==" + torch_pin() in setup and "whl/cpu" not in setup
        assert t.get("min_workers", 0) >= 1, f"{name}: learner_gpus=auto needs the GPU at start"
    assert cfg["docker"]["image"].startswith("rayproject/ray:") and not cfg["docker"]["image"].endswith("-gpu")


def test_launcher_installs_the_project_and_starts_the_tracking_server():
    cfg = docs(LAUNCHER)[0]
    assert cfg["file_mounts"]["/home/ray/umpo-dist"] == "."
    assert {".venv", ".git", "runs", "mlruns", "mlflow.db"} <= set(cfg["rsync_exclude"])
    installs = [c for c in launcher_commands(cfg) if "pip install" in c and "/home/ray/umpo-dist" in c]
    assert len(installs) == 2  # every node: setup_commands and the GPU type's override
    head = " ".join(cfg["head_start_ray_commands"])
    assert "mlflow server" in head and "--artifacts-destination" in head
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head
    # Token authentication, the same token on every node and on the submitter's machine.
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in " ".join(cfg[key]), key


def test_compose_local_cluster():
    compose = docs(COMPOSE)[0]
    services = compose["services"]
    assert {"ray-head", "ray-worker", "mlflow"} <= set(services)
    assert "ray start --head" in services["ray-head"]["command"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve().is_file(), name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    # The tracking server keeps its data in a named volume.
    volume = services["mlflow"]["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]
    assert "--artifacts-destination" in services["mlflow"]["command"]
    assert services["ray-head"]["environment"]["RAY_AUTH_MODE"] == "token"
    gpu = [s for s in services.values()
           if any(d.get("capabilities") == ["gpu"]
                  for d in s.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", []))]
    assert gpu and all("--num-gpus=1" in s["command"] and s["image"].endswith("-gpu") for s in gpu)


def test_docs_state_what_was_and_was_not_run():
    text = DOCS.read_text()
    assert "Run on a cluster" in text
    for phrase in ("num_env_workers", "worker_cpus", "learner_cpus", "RAY_AUTH_MODE=token", "ray job submit"):
        assert phrase in text, phrase
    assert re.search(r"not (been )?(run|built|tested)", text)
