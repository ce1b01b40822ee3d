"""compose.yaml, run the nearest way without a Docker engine: each service's command as a process.

The test reads compose.yaml, interpolates it from .env.example (as `docker compose` reads .env),
takes the final image's WORKDIR and ENV from the Dockerfile, and starts every service's
command in the order `depends_on` gives, with the service's environment and nothing else of
this machine's. The `redis` service runs its own command on a free port; `postgres` is the
local server, in a database of the run's own. The image's data directory is replaced by one
that cannot be created (under /proc), since the image needs none with PostgreSQL and an
external Redis. Every health check command runs until it passes; then one wire item goes
through to a feed and a partner, and every service stops within its stop_grace_period.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.helpers.support import ROOT, PartnerServer, free_port, wait_for
from tests.helpers.support import postgres_database as database_of

UNCREATABLE = "/proc/newsroom-data"  # not even root can make a folder here
BIN = Path(sys.executable).parent


# --- reading the files -------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as docker compose reads .env (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def interpolate(source: str, values: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}; an unset required one fails."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = values.get(name, "")
        if op == ":?" and not value:
            raise ValueError(f"{name}: {arg}")
        if op == ":-" and not value:
            return arg
        return value

    return VARIABLE.sub(one, source)


def final_stage(dockerfile: Path) -> tuple[str, dict[str, str]]:
    """The WORKDIR and ENV of the Dockerfile's last stage."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    lines = [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    workdir, env = "/", {}
    for line in lines[last_from:]:
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "WORKDIR":
            workdir = rest.strip()
        elif instruction.upper() == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return workdir, env


def startup_order(services: dict[str, Any]) -> list[str]:
    """Services ordered so that each comes after everything it depends on."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {(*path, name)}"
        if name in order:
            return
        for dependency in services[name].get("depends_on", {}):
            visit(dependency, (*path, name))
        order.append(name)

    for name in services:
        visit(name, ())
    return order


def seconds(duration: str) -> float:
    """Compose durations such as 30s, 2m, 1m30s."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, duration
    return sum(float(number) * units[unit] for number, unit in parts)


# --- the servers the images would run ------------------------------------------------------


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh database on the local server, owned by the compose file's user."""
    yield from database_of("newsroom")


class Services:
    """The compose services as processes, with their logs, stopped in reverse order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: dict[str, str], cwd: str) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.running[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, name: str, grace: float) -> float:
        """SIGTERM, as `docker compose stop` sends; how long the service took to exit."""
        process = self.running.pop(name)
        started = time.monotonic()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return grace
        return time.monotonic() - started

    def kill_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.running.clear()


def run_check(test: list[str], env: dict[str, str], cwd: str) -> subprocess.CompletedProcess[str]:
    """A healthcheck's `test`: ["CMD", program, args…]."""
    assert test[0] == "CMD", f"health checks are exec-form CMD lists: {test}"
    return subprocess.run(test[1:], env=env, cwd=cwd, capture_output=True, text=True, timeout=30, check=False)


# --- the test ------------------------------------------------------------------------------


def test_compose_services_start_stay_healthy_and_carry_a_story(
    postgres_database: str, tmp_path: Path
) -> None:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        from shared.redis import redis_server_binary

        redis_server = redis_server_binary()
    if shutil.which("redis-cli") is None or shutil.which("pg_isready") is None:
        pytest.skip(
            "redis-cli and pg_isready (the health checks of compose's redis and postgres) are missing"
        )

    values = read_env_file(ROOT / ".env.example")
    # What an operator puts in .env: fresh secrets, and this machine's loopback partner allowed.
    values.update(
        POSTGRES_PASSWORD=secrets.token_urlsafe(16),
        REDIS_PASSWORD=secrets.token_urlsafe(16),
        NEWSROOM_SECRET_KEY=secrets.token_urlsafe(32),
        NEWSROOM_OUTBOUND_ALLOW="127.0.0.1/32",
    )
    raw = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {})  # no secret has a default in the file
    compose = yaml.safe_load(interpolate(raw, values))
    services: dict[str, Any] = compose["services"]
    workdir, image_env = final_stage(ROOT / "Dockerfile")
    assert image_env.get("NEWSROOM_DATA_DIR") == workdir, "the image's data dir is its WORKDIR, which it owns"

    redis_port = free_port()
    api_port, site_port = free_port(), free_port()
    base = f"http://127.0.0.1:{api_port}"
    machine = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LANG": "C.UTF-8",
        "HOME": str(tmp_path),
    }

    def localize(name: str, value: str) -> str:
        value = value.replace("@redis:6379/", f"@127.0.0.1:{redis_port}/")
        if value.startswith("postgresql"):
            url = make_url(value)
            assert url.host == "postgres" and url.password, value
            local = make_url(postgres_database)
            value = url.set(host=local.host, port=local.port, database=local.database).render_as_string(
                hide_password=False
            )
        if name == "NEWSROOM_DATA_DIR":
            value = UNCREATABLE
        return value

    def service_env(service: dict[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in image_env.items() if k != "PATH"}
        env.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
        env = {k: localize(k, v) for k, v in env.items()}
        env["NEWSROOM_SITE_URL"] = base
        return {**env, **machine}

    def local_command(command: list[str]) -> list[str]:
        command = [str(part) for part in command]
        if command[0] == "newsroom":
            command[0] = str(BIN / "newsroom")
        ports = {"8000": str(api_port), "8080": str(site_port)}
        return [ports.get(part, part) for part in command]

    processes = Services(tmp_path)
    partner = PartnerServer()
    newsroom_env: dict[str, str] = {}
    try:
        for name in startup_order(services):
            service = services[name]
            if name == "postgres":
                local = make_url(postgres_database)
                env = {**machine, "PGHOST": str(local.host), "PGPORT": str(local.port or 5432)}
                check = run_check(service["healthcheck"]["test"], env, str(tmp_path))
                assert check.returncode == 0, check.stdout + check.stderr
                continue
            if name == "redis":
                command = [
                    redis_server,
                    *service["command"][1:],
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(tmp_path),
                    "--save",
                    "",
                ]
                processes.start(name, command, machine, str(tmp_path))
                env = {**machine, **service["environment"]}
                test = service["healthcheck"]["test"]
                health = [*test[:2], "-p", str(redis_port), *test[2:]]
                wait_for(
                    lambda health=health, env=env: (
                        run_check(health, env, str(tmp_path)).stdout.strip() == "PONG"
                    ),
                    timeout=20,
                    what="compose's redis health check",
                )
                continue
            env = service_env(service)
            newsroom_env = env
            # The container's WORKDIR is the data dir, which cannot be created here: /proc stands for it.
            cwd = "/proc"
            command = local_command(service["command"])
            if service.get("restart") == "no":  # a one-shot step (migrate) must finish well
                done = subprocess.run(
                    command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
                )
                assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"
                continue
            assert service.get("restart") == "unless-stopped", f"{name} has no restart policy"
            assert "healthcheck" in service, f"{name} has no health check"
            processes.start(name, command, env, cwd)
            health = local_command(service["healthcheck"]["test"])

            def healthy(name: str = name, health: list[str] = health, env: dict[str, str] = env) -> bool:
                process = processes.running[name]
                assert process.poll() is None, f"{name} exited {process.returncode}:\n{processes.log(name)}"
                return run_check(health, env, "/proc").returncode == 0

            wait_for(healthy, timeout=60, interval=0.5, what=f"{name}'s health check")

        # One wire item through the running services to a feed and a partner.
        def cli(*args: str) -> str:
            done = subprocess.run(
                [str(BIN / "newsroom"), *args],
                env=newsroom_env,
                cwd="/proc",
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        token = (
            cli("source", "add", "compose-wire", "--auto-publish").strip().splitlines()[-1].split(": ")[-1]
        )
        cli("partner", "add", "compose-partner", "--url", partner.url)
        headline = f"Compose carries story {secrets.token_hex(3)}"
        item = {
            "uri": "urn:compose:1",
            "type": "text",
            "version": "1",
            "headlines": [{"role": "main", "value": headline}],
            "bodies": [
                {
                    "role": "main",
                    "contenttype": "text/html",
                    "value": "<p>From a wire, through every service.</p>",
                }
            ],
        }
        answer = httpx.post(
            f"{base}/v1/wire/compose-wire",
            json=item,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/ninjs+json"},
        )
        assert answer.status_code == 202, answer.text
        wait_for(
            lambda: headline in httpx.get(f"{base}/feeds/all.atom").text,
            timeout=30,
            what="the story in /feeds/all.atom",
        )
        # The readers' own process serves it too: on the front page, as soon as in the feed.
        wait_for(
            lambda: headline in httpx.get(f"http://127.0.0.1:{site_port}/").text,
            timeout=30,
            what="the story on the site's front page",
        )
        wait_for(
            lambda: any(headline in push.body for push in partner.pushes),
            timeout=30,
            what="the push at the partner",
        )
        assert not Path(UNCREATABLE).exists()

        # `docker compose stop`: reverse order, each within its grace period.
        for name in reversed(list(processes.running)):
            grace = seconds(services[name].get("stop_grace_period", "10s"))
            took = processes.stop(name, grace)
            assert took < grace, f"{name} did not stop within {grace}s:\n{processes.log(name)}"
    except BaseException:
        for name in processes.running:
            print(f"--- {name} ---\n{processes.log(name)}")
        raise
    finally:
        processes.kill_all()
        partner.close()
