"""deploy/: every manifest parses, and every option it hands mooncake-master, mooncake-worker or
mooncake-admin (a flag, a MOONCAKE_* variable, a key of a --config file) is one that program
has, with a value it accepts. The daemons ignore MOONCAKE_* variables they do not know, so a
misspelt one in a unit's environment file or a manifest would otherwise pass unnoticed."""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mooncake_client import admin
from mooncake_master import main as master_main
from mooncake_proto.cli import ENV_PREFIX, load_settings
from mooncake_proto.units import parse_duration
from mooncake_worker import main as worker_main

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml", ".json"))
SEPARATORS = {"&&", "||", ";", "|", "&"}


def _daemon_options(options):
    flags = {o.flag for o in options} | {"--config", "--help", "-h"}
    return {"flags": flags, "env": {ENV_PREFIX + o.dest.upper() for o in options},
            "config": {o.flag[2:] for o in options} | {o.dest for o in options}}


def _admin_options():
    parser = admin.build_parser()
    parsers = [parser] + [sub for action in parser._actions  # argparse has no public walk
                          if isinstance(action, argparse._SubParsersAction)
                          for sub in action.choices.values()]
    flags = {s for p in parsers for a in p._actions for s in a.option_strings}
    return {"flags": flags, "env": set(admin.ENV_VARS), "config": set()}


PROGRAMS = {"mooncake-master": _daemon_options(master_main.OPTIONS),
            "mooncake-worker": _daemon_options(worker_main.OPTIONS),
            "mooncake-admin": _admin_options()}
DAEMON_OPTIONS = {"mooncake-master": master_main.OPTIONS, "mooncake-worker": worker_main.OPTIONS}


def invocations(argv: list[str]) -> list[tuple[str, list[str]]]:
    """(program, the words after it) for each of our programs a command line runs."""
    found: list[tuple[str, list[str]]] = []
    current = None
    for word in argv:
        if os.path.basename(word) in PROGRAMS:
            current = (os.path.basename(word), [])
            found.append(current)
        elif word in SEPARATORS:
            current = None
        elif current is not None:
            current[1].append(word)
    return found


def flags_of(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--") and w != "--"]


def _words(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


# ---- where deploy/ runs our programs, and with what ----

def systemd_units():
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        for line in unit.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload"):
                yield unit, invocations(shlex.split(value.lstrip("-@+!:")))


def env_file(path: Path) -> dict[str, str]:
    """MOONCAKE_* settings of an environment file, commented-out examples included."""
    return dict(re.findall(r"^\s*#?\s*(MOONCAKE_\w+)=(.*)$", path.read_text(), re.MULTILINE))


def compose_services():
    for path in sorted((DEPLOY / "compose").glob("*.y*ml")):
        for name, service in yaml.safe_load(path.read_text())["services"].items():
            argv = _words(service.get("entrypoint")) + _words(service.get("command"))
            env = service.get("environment") or {}
            if not isinstance(env, dict):
                env = dict(e.split("=", 1) for e in env)
            yield f"{path.name}:{name}", invocations(argv), {k: str(v) for k, v in env.items()}


def kubernetes_docs():
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def kubernetes_containers():
    for path, doc in kubernetes_docs():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            argv = _words(container.get("command")) + _words(container.get("args"))
            # a value from the downward API is known only in the pod: stand in an address
            env = {e["name"]: e.get("value", "10.0.0.1") for e in container.get("env", [])}
            yield f"{path.name}:{container['name']}", invocations(argv), env


def kubernetes_config_files() -> dict[str, dict]:
    """Every ConfigMap file that is YAML: its name -> its parsed content."""
    files = {}
    for _, doc in kubernetes_docs():
        if doc.get("kind") == "ConfigMap":
            for name, text in doc.get("data", {}).items():
                if name.endswith((".yaml", ".yml")):
                    files[name] = yaml.safe_load(text) or {}
    return files


def _check(where: str, program: str, words: list[str], env=None) -> None:
    """Names first (the clearest message), then the program's own parsing of the values."""
    known = PROGRAMS[program]
    unknown = sorted(set(flags_of(words)) - known["flags"])
    assert not unknown, f"{where}: {program} has no {unknown}"
    ours = {n: v for n, v in (env or {}).items() if n.startswith(ENV_PREFIX)}
    unknown_env = sorted(set(ours) - known["env"])
    assert not unknown_env, f"{where}: {program} reads no {unknown_env}"
    try:
        if program == "mooncake-admin":
            admin.build_parser().parse_args(words)
        else:
            load_settings(program, "", DAEMON_OPTIONS[program], _without_config(words),
                          environ=ours)
    except SystemExit:
        pytest.fail(f"{where}: {program} rejects {words} with {sorted(ours)}")


def _without_config(words: list[str]) -> list[str]:
    """words less `--config FILE` (the file is the ConfigMap's, checked on its own)."""
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == "--config":
            skip = True
        else:
            out.append(word)
    return out


# ---- the tests ----

def test_deploy_has_what_issue_6_asks_for():
    names = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file()}
    for expected in ("systemd/mooncake-master.service", "systemd/mooncake-worker@.service",
                     "compose/docker-compose.yml", "kubernetes/etcd.yaml",
                     "kubernetes/master.yaml", "kubernetes/worker.yaml",
                     "prometheus/prometheus.yml", "grafana/mooncake-dashboard.json",
                     "local-cluster.sh"):
        assert expected in names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses(path):
    text = path.read_text()
    docs = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    assert docs and all(isinstance(d, dict) for d in docs if d is not None)


def test_systemd_units_pass_only_existing_flags_and_variables():
    seen = set()
    for unit, found in systemd_units():
        for program, words in found:
            _check(unit.name, program, words)
            seen.add(program)
        # each EnvironmentFile= is one of the examples here, and sets only known variables
        for line in unit.read_text().splitlines():
            if line.startswith("EnvironmentFile="):
                target = line.partition("=")[2]
                if target.startswith("-"):
                    continue  # optional per-instance override, not shipped
                example = DEPLOY / "systemd" / os.path.basename(target)
                assert example.is_file(), f"{unit.name}: no example for {target}"
                for program, _ in found:
                    _check(example.name, program, [], env_file(example))
    assert seen == {"mooncake-master", "mooncake-worker"}


def test_compose_passes_only_existing_flags_and_variables():
    seen = set()
    for where, found, env in compose_services():
        for program, words in found:
            _check(where, program, words, env)
            seen.add(program)
    assert seen == set(PROGRAMS)


def test_kubernetes_passes_only_existing_flags_variables_and_config_keys(tmp_path):
    config_files = kubernetes_config_files()
    seen = set()
    for where, found, env in kubernetes_containers():
        for program, words in found:
            _check(where, program, words, env)
            seen.add(program)
            for i, word in enumerate(words[:-1]):
                if word == "--config":
                    name = os.path.basename(words[i + 1])
                    assert name in config_files, f"{where}: no ConfigMap file {name}"
                    unknown = sorted(set(config_files[name]) - PROGRAMS[program]["config"])
                    assert not unknown, f"{where}: {name} has keys {program} rejects: {unknown}"
                    path = tmp_path / name
                    path.write_text(yaml.safe_dump(config_files[name]))
                    try:  # the values too, as the program reads the file
                        load_settings(program, "", DAEMON_OPTIONS[program],
                                      ["--config", str(path)], environ={})
                    except SystemExit:
                        pytest.fail(f"{where}: {program} rejects {name}")
    assert seen == {"mooncake-master", "mooncake-worker"}


def test_config_map_keys_commented_out_are_options_too():
    # the commented examples (tokens:, token-file:) are meant to be uncommented
    for _, doc in kubernetes_docs():
        for name, text in (doc.get("data") or {}).items():
            program = {"master.yaml": "mooncake-master", "worker.yaml": "mooncake-worker"}[name]
            for key in re.findall(r"^\s*#\s*([a-z][a-z-]*):", text, re.MULTILINE):
                assert key in PROGRAMS[program]["config"], f"{name}: # {key}:"


def test_shell_scripts_pass_only_existing_flags():
    for script in sorted(DEPLOY.rglob("*.sh")):
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
        text = script.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            for program, words in invocations(shlex.split(line, comments=True)):
                _check(script.name, program, words)


def _worker_drain_timeout_s(configured) -> float:
    default = next(o.default for o in worker_main.OPTIONS if o.flag == "--drain-timeout")
    return parse_duration(default if configured is None else configured)


def test_stop_timeouts_leave_room_for_the_worker_drain():
    # a SIGKILL before the drain's deadline cuts it short: objects only that worker held
    # stay behind (until it comes back with the same id)
    unit = (DEPLOY / "systemd" / "mooncake-worker@.service").read_text()
    stop_s = parse_duration(re.search(r"^TimeoutStopSec=(\S+)$", unit, re.MULTILINE)[1])
    env = env_file(DEPLOY / "systemd" / "worker.env")
    assert stop_s > _worker_drain_timeout_s(env.get("MOONCAKE_DRAIN_TIMEOUT")) + 5
    config = kubernetes_config_files()["worker.yaml"]
    [grace] = [doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
               for _, doc in kubernetes_docs() if doc.get("kind") == "DaemonSet"
               and doc["metadata"]["name"] == "mooncake-worker"]
    assert grace > _worker_drain_timeout_s(config.get("drain-timeout")) + 5


def test_the_checks_see_a_wrong_flag():
    assert invocations(["/opt/mooncake/bin/mooncake-worker", "--dram=1GiB", "--etcd", "x",
                        "&&", "echo", "--not-ours"]) == \
        [("mooncake-worker", ["--dram=1GiB", "--etcd", "x"])]
    with pytest.raises(AssertionError, match="--etcd"):
        _check("example", "mooncake-worker", ["--dram=1GiB", "--etcd", "x"])
    with pytest.raises(AssertionError, match="MOONCAKE_DRAMM"):
        _check("example", "mooncake-worker", [], {"MOONCAKE_DRAMM": "1GiB", "OTHER": "x"})
    with pytest.raises(pytest.fail.Exception, match="rejects"):
        _check("example", "mooncake-worker", [], {"MOONCAKE_DRAM": "lots"})


def test_the_dashboard_names_only_mooncake_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "mooncake-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = {n for e in exprs for n in re.findall(r"\b(mooncake_\w+)", e)}
    assert names and all(re.fullmatch(r"mooncake_(master|worker)_\w+", n) for n in names)
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_the_kustomization_builds():
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "kubernetes")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert {"Namespace", "StatefulSet", "Deployment", "Service", "DaemonSet"} <= set(kinds)
