"""docker-compose.yml and the Dockerfile, checked without a Docker engine (none runs here).

What can be checked statically is: every service's command exists in this project and parses
with that program's own CLI, every environment variable is a real setting and the production
combination is accepted by ``Settings``, ports and healthchecks agree with what each process
listens on, and ``depends_on`` conditions point at something that can satisfy them. Whether
the images build and the containers start was not run (docs/SETUP.md).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.settings import Settings
from devstack import ROOT

OURS = {"migrate", "api", "ws", "worker", "beat", "flower"}
SECRETS = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "JWT_SECRET", "METRICS_TOKEN", "FLOWER_PASSWORD"}
INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def interpolate(value: str, given: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``, with ``given`` as .env."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if name in given:
            return given[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name} is required: {arg}")
        return arg if op and op.endswith("-") else ""

    return INTERPOLATION.sub(replace, value.replace("$$", "\0")).replace("\0", "$")


def argv(service: dict[str, Any], image_env: dict[str, str] | None = None) -> list[str]:
    """The program's argv, looking through ``sh -c 'exec ...'`` wrappers, whose ``$VAR`` are
    read from the service's environment over the image's (``image_env``: the Dockerfile's)."""
    command = service["command"]
    command = shlex.split(command) if isinstance(command, str) else list(command)
    if command[:2] == ["sh", "-c"]:
        env = dict(image_env if image_env is not None else dockerfile_env())
        given = dict.fromkeys(SECRETS, "x" * 40) | {"FLOWER_USER": "ops"}
        for name, value in service.get("environment", {}).items():
            env[name] = interpolate(str(value), given)
        script = re.sub(
            r"\$\{?([A-Z_][A-Z0-9_]*)\}?",
            lambda m: env.get(m.group(1), m.group(0)),
            command[2].replace("$$", "$"),
        )
        command = shlex.split(script.split("exec ", 1)[1])
    return command


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ``ENV`` values (``NAME=value`` form)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text[text.rindex("\nFROM ") :]
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.*)$", runtime, re.M):
        for word in shlex.split(line):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def dockerfile_cmd() -> dict[str, Any]:
    """The Dockerfile's ``CMD``, as a service's ``command``."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    cmd = next(line for line in reversed(lines) if line.startswith("CMD "))
    return {"command": json.loads(cmd.removeprefix("CMD "))}


def listen_port(args: list[str]) -> int | None:
    for i, arg in enumerate(args):
        if arg == "--port":
            return int(args[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    return None


def example_env() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        name = line.lstrip("# ").split("=", 1)[0]
        if "=" in line and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            values[name] = line.split("=", 1)[1]
    return values


def test_the_services_the_issue_asks_for():
    assert set(services()) == {"postgres", "redis", "proxy", *OURS}
    for name in OURS:
        assert services()[name]["build"] == ".", name


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_command_exists_in_the_project(name):
    args = argv(services()[name])
    program = args[0]
    if program == "ebs":
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts["ebs"] == "common.cli:app"
        import typer

        from common.cli import app

        command: Any = typer.main.get_command(app)
        for word in args[1:]:
            assert word in getattr(command, "commands", {}), args
            command = command.commands[word]
    elif program == "uvicorn":
        module, attr = args[1].split(":")
        tree = ast.parse((ROOT / Path(*module.split("."))).with_suffix(".py").read_text())
        assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                    if isinstance(t, ast.Name)}  # fmt: skip
        assert attr in assigned, f"{module} defines no {attr}"
        from uvicorn.main import main as uvicorn_cli

        uvicorn_cli.make_context("uvicorn", list(args[1:]))
    elif program == "celery":
        check_celery(args)
    else:
        pytest.fail(f"{name}: unknown program {program}")


def check_celery(args: list[str]) -> None:
    from celery import Celery
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as celery_cli

    from celeryconfig import task_queues

    assert args[1:3] == ["-A", "worker.app"], args
    from worker.app import app

    assert isinstance(app, Celery)
    sub, rest = args[3], args[4:]
    assert sub in celery_cli.commands, sub
    obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    ctx = celery_cli.commands[sub].make_context(sub, list(rest), obj=obj)
    if sub == "worker":
        assert set(ctx.params["queues"]) <= {q.name for q in task_queues}
        # Unique per container, so `--scale worker=N` gives N distinct nodes.
        assert "%h" in rest[rest.index("--hostname") + 1]
    if sub == "flower":
        from flower.options import options

        for option in ctx.params["tornado_argv"]:
            assert option.lstrip("-").split("=")[0] in options._options, option


@pytest.mark.parametrize("name", sorted(OURS))
def test_environment_is_made_of_real_settings_and_valid_in_production(name, monkeypatch):
    for field in Settings.model_fields:  # only what the container would have
        monkeypatch.delenv(field, raising=False)
    environment = services()[name].get("environment", {})
    unknown = set(environment) - set(Settings.model_fields)
    assert not unknown, f"{name}: not settings: {unknown}"
    given = dict.fromkeys(SECRETS, "x" * 40) | {"FLOWER_USER": "ops"}
    env = {key: interpolate(str(value), given) for key, value in environment.items()}
    settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]  # keys: checked above
    assert settings.APP_ENV == "production"


def test_secrets_have_no_default_and_every_variable_is_in_env_example():
    text = (ROOT / "docker-compose.yml").read_text()
    used = {m.group(1): m.group(2) for m in INTERPOLATION.finditer(text)}
    for secret in SECRETS:
        assert used.get(secret) == ":?", f"{secret} must be required, never defaulted"
    assert set(used) <= set(example_env()), set(used) - set(example_env())


def test_ports_and_healthchecks_agree_with_what_each_process_listens_on():
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = {int(p) for p in re.findall(r"^EXPOSE\s+(\d+)", dockerfile, re.M)}
    for name in OURS:
        service = services()[name]
        port = listen_port(argv(service))
        for mapping in service.get("ports", []):
            assert int(str(mapping).split(":")[-1]) == port, (name, mapping)
        health = " ".join(service.get("healthcheck", {}).get("test", []))
        for checked in re.findall(r"127\.0\.0\.1:(\d+)", health):
            assert int(checked) == port, (name, health)
        if "PORT" in service.get("environment", {}):
            assert int(service["environment"]["PORT"]) == port
    assert listen_port(argv(services()["api"])) in exposed
    assert "/health" in " ".join(services()["api"]["healthcheck"]["test"])
    # Flower is for operators: loopback of the host only, and behind basic auth.
    assert services()["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert any(a.startswith("--basic-auth=") for a in argv(services()["flower"]))


def test_dependencies_can_be_satisfied():
    for name, service in services().items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services(), (name, target)
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services()[target], (name, target)
            elif condition == "service_completed_successfully":
                assert services()[target].get("restart") == "no", (name, target)
    for name in OURS - {"migrate"}:
        assert services()[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def test_data_services_keep_their_data_and_redis_never_evicts():
    postgres, redis = services()["postgres"], services()["redis"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    command = " ".join(argv(redis))
    for part in ("--appendonly yes", "--maxmemory-policy noeviction", "--requirepass"):
        assert part in command
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_api_scales_behind_the_proxy_which_passes_websockets():
    """`--scale api=N` needs an api service with no fixed name or host port; the proxy publishes
    the port, reaches every replica by the service name, and passes WebSocket upgrades on."""
    api, proxy = services()["api"], services()["proxy"]
    assert "container_name" not in api and "ports" not in api
    port = listen_port(argv(api))
    assert proxy["ports"] == [f"{port}:80"]
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in proxy["volumes"]}
    conf = re.sub(r"#.*", "", (ROOT / mounts["/etc/nginx/conf.d/default.conf"]).read_text())
    directives = {
        line.strip().rstrip(";").split(None, 1)[0]: line.strip().rstrip(";").split(None, 1)[-1]
        for line in conf.splitlines()
        if line.strip().endswith(";")
    }
    # Docker's DNS, asked again at run time through a variable: replicas added later are found.
    assert directives["resolver"].startswith("127.0.0.11")
    assert re.search(rf"set \$(\w+) http://api:{port};", conf)
    assert re.search(r"proxy_pass \$\w+;", conf)
    # The upgrade handshake crosses the proxy: HTTP/1.1 and both hop-by-hop headers passed on.
    assert directives["proxy_http_version"] == "1.1"
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s*default upgrade;", conf)
    # The proxy never cuts a request waiting for its decision, nor an idle WebSocket.
    read_timeout = int(directives["proxy_read_timeout"].rstrip("s"))
    defaults = Settings(_env_file=None)
    assert read_timeout > max(defaults.MAX_WAIT, defaults.WS_HEARTBEAT_INTERVAL)
    # The API's trust in X-Forwarded-For is what per-address limits rest on behind the proxy.
    assert "--proxy-headers" in argv(api)


def test_workers_scale_and_stop_warm():
    worker = services()["worker"]
    assert "container_name" not in worker and "ports" not in worker
    import celeryconfig

    # SIGTERM lets running tasks finish; compose must wait longer than a task may run.
    grace = int(worker["stop_grace_period"].rstrip("s"))
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert grace > celeryconfig.task_time_limit


def test_dockerfile_is_multi_stage_non_root_and_copies_what_exists():
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2
    final = lines[lines.index(stages[-1]) :]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line
    cmd = argv(dockerfile_cmd())
    assert cmd[:2] == ["uvicorn", "api.main:app"] and listen_port(cmd) == 8000
    from uvicorn.main import main as uvicorn_cli

    uvicorn_cli.make_context("uvicorn", cmd[1:])
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git"} <= set(ignored)


def locked(name: str) -> dict[str, str]:
    """Package -> pinned version of ``requirements/<name>.txt``, names normalised (PEP 503)."""
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", (ROOT / name).read_text(), re.M)
    return {re.sub(r"[-_.]+", "-", package).lower(): version for package, version in pins}


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    names = {re.split(r"[^A-Za-z0-9_.-]", spec, maxsplit=1)[0] for spec in specs}
    return {re.sub(r"[-_.]+", "-", name).lower() for name in names}


@pytest.mark.parametrize(
    ("lock", "extras"),
    [
        ("requirements/base.txt", ()),
        ("requirements/dev.txt", ("dev",)),
        ("requirements/bench.txt", ("dev", "bench")),
    ],
)
def test_the_lock_pins_every_declared_dependency_with_hashes(lock, extras):
    """`make lock` was run after pyproject.toml last changed (docs/SETUP.md, "Dependencies")."""
    pins = locked(lock)
    assert declared(*extras) <= set(pins), declared(*extras) - set(pins)
    for block in re.split(r"\n(?=[A-Za-z0-9_.-]+==)", (ROOT / lock).read_text()):
        if re.match(r"[A-Za-z0-9_.-]+==", block):
            assert "--hash=sha256:" in block, block.splitlines()[0]


def test_the_image_installs_the_lock_and_resolves_nothing():
    run = [
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.lstrip().startswith("RUN ") or "pip install" in line
    ]
    installs = [line for line in run if "pip install" in line]
    assert any("--require-hashes -r requirements/base.txt" in line for line in installs), installs
    for line in installs:
        assert "-r requirements/" in line or "--no-deps" in line, line


def test_every_uvicorn_command_line_bounds_websocket_messages_by_the_setting():
    """uvicorn, not the app, refuses a WebSocket message over ``--ws-max-size``: each way of
    starting the API passes WS_MAX_SIZE there, with the setting's own default."""
    from uvicorn.main import main as uvicorn_cli

    import devstack

    default = str(Settings.model_fields["WS_MAX_SIZE"].default)
    api = devstack.ApiProcess("api", ROOT / ".run", {})
    changed = devstack.ApiProcess("api", ROOT / ".run", {"WS_MAX_SIZE": "20000"})
    assert dockerfile_env()["WS_MAX_SIZE"] == default
    uvicorns = [name for name, svc in services().items() if "uvicorn" in str(svc.get("command"))]
    assert {"api", "ws"} <= set(uvicorns)
    for args, size in (
        *((argv(services()[name]), default) for name in uvicorns),
        # compose's own default, without the image's
        *((argv(services()[name], {}), default) for name in uvicorns),
        (argv(dockerfile_cmd()), default),
        (api.argv(), default),
        (changed.argv(), "20000"),
    ):
        params = uvicorn_cli.make_context("uvicorn", list(args[1:])).params
        assert params["ws_max_size"] == int(size), args
    # Room for every command the app answers itself (MESSAGE_TOO_LARGE past 4096 characters).
    from pydantic import ValidationError

    from api.realtime.commands import MAX_CLIENT_MESSAGE

    with pytest.raises(ValidationError, match="WS_MAX_SIZE"):
        Settings(_env_file=None, WS_MAX_SIZE=4 * MAX_CLIENT_MESSAGE - 1)
    run = (ROOT / "scripts" / "run.sh").read_text()
    assert "WS_MAX_SIZE={s.WS_MAX_SIZE}" in run  # read from the settings
    assert run.count('--ws-max-size "$WS_MAX_SIZE"') == run.count('"$BIN/uvicorn"') == 1
