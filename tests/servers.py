"""Real servers for the service and store tests, on free loopback ports.

- `Service`: `python -m engine.host.cli serve ...` in a subprocess (uvicorn), its log in a file;
- `Postgres`: a private PostgreSQL server, `initdb` into a temporary directory and
  `pg_ctl start` on a free port (as the `postgres` user when we are root: initdb refuses
  to run as root), stopped and removed at the end;
- `Keys`: an RSA (RS384) or EC (ES384) key pair, its JWK Set, and signed client tokens.

If PostgreSQL cannot be started the PostgreSQL tests skip, except in CI (CI=true), where
they fail: CI installs the server (`.ci/run`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REPO = Path(__file__).resolve().parent.parent
ISSUER = "https://ehr.example.org"
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip a test that needs a missing server; in CI, fail it."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: PostgreSQL must be available)")
    pytest.skip(reason)


# --------------------------------------------------------------------------- keys and tokens


@dataclass
class Keys:
    """A client's signing key and its public JWK."""

    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]

    def token(
        self,
        aud: str | Sequence[str],
        *,
        iss: str = ISSUER,
        lifetime: float = 300.0,
        jti: str | None = None,
        claims: Mapping[str, Any] | None = None,
        drop: Sequence[str] = (),
    ) -> str:
        now = time.time()
        payload: dict[str, Any] = {
            "iss": iss,
            "sub": "client-app",
            "aud": aud if isinstance(aud, str) else list(aud),
            "iat": int(now),
            "exp": int(now + lifetime),
            "jti": jti or str(uuid.uuid4()),
        }
        payload.update(claims or {})
        for name in drop:
            payload.pop(name, None)
        return jwt.encode(
            payload, self.private, algorithm=self.alg, headers={"kid": self.kid, "typ": "JWT"}
        )


def make_keys(kind: str = "RSA", kid: str | None = None) -> Keys:
    """RS384 with a 2048-bit RSA key, or ES384 with a P-384 key."""
    if kind == "RSA":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        alg = "RS384"
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    else:
        private = ec.generate_private_key(ec.SECP384R1())
        alg = "ES384"
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    kid = kid or f"{kind.lower()}-{uuid.uuid4().hex[:8]}"
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return Keys(kid, alg, private, jwk)


def write_jwks(path: Path, *keys: Keys) -> Path:
    path.write_text(json.dumps({"keys": [k.jwk for k in keys]}), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the service


@dataclass
class Service:
    """`cart-cds serve` in a subprocess."""

    store: str
    workdir: Path
    jwks: Path | None = None
    issuers: Sequence[str] = (ISSUER,)
    insecure_dev: bool = False
    extra: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"serve-{self.port}.log"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "engine.host.cli", "serve", "--port", str(self.port)]
        cmd += ["--store", self.store]
        if self.insecure_dev:
            cmd.append("--insecure-dev")
        else:
            assert self.jwks is not None
            cmd += ["--jwks", str(self.jwks)]
            for iss in self.issuers:
                cmd += ["--issuer", iss]
        return cmd + list(self.extra)

    def start(self) -> Service:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"--- start {self.starts}\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            self.command(),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"cart-cds serve exited ({self.process.returncode}):\n{self.log()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/cds-services", timeout=2.0).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"cart-cds serve did not answer in {START_TIMEOUT_S} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)


# --------------------------------------------------------------------------- PostgreSQL


def pg_binary(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return candidates[-1] if candidates else None


@dataclass
class Postgres:
    """A private PostgreSQL server in a temporary directory."""

    port: int = field(default_factory=free_port)
    user: str = "cds"
    root: Path | None = None
    _databases: int = 0

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            return ["runuser", "-u", "postgres", "--", *cmd]
        return cmd

    def start(self) -> str | None:
        """Start; returns None on success, else why it could not start."""
        initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            return "PostgreSQL server programs (initdb, pg_ctl) not found"
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no 'postgres' user to run initdb as"
        self.root = Path(tempfile.mkdtemp(prefix="cart-cds-pg-"))
        if os.geteuid() == 0:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        data = self.root / "data"
        steps = [
            [initdb, "-D", str(data), "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-sync"],
            [
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {self.port} -k {self.root} -h 127.0.0.1",
                "start",
            ],
        ]
        for cmd in steps:
            done = subprocess.run(self._as_owner(cmd), capture_output=True, text=True, check=False)
            if done.returncode != 0:
                reason = f"{Path(cmd[0]).name} failed: {(done.stderr or done.stdout).strip()}"
                self.stop()
                return reason
        return None

    @property
    def admin_url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        self._databases += 1
        name = f"cds_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on this server's data directory (as its owner), checking it worked."""
        pg_ctl = pg_binary("pg_ctl")
        assert pg_ctl is not None and self.root is not None
        cmd = [pg_ctl, "-D", str(self.root / "data"), "-w", "-t", "60", *args]
        done = subprocess.run(self._as_owner(cmd), capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr or done.stdout

    def restart(self) -> None:
        """Stop the server at once (`-m immediate`: like a crash, no shutdown checkpoint)
        and start it again on the same port."""
        assert self.root is not None
        self.pg_ctl("-m", "immediate", "stop")
        self.start_again()

    def start_again(self) -> None:
        assert self.root is not None
        self.pg_ctl("-l", str(self.root / "server.log"),
                    "-o", f"-p {self.port} -k {self.root} -h 127.0.0.1", "start")  # fmt: skip

    def stop(self) -> None:
        if self.root is None:
            return
        pg_ctl = pg_binary("pg_ctl")
        data = self.root / "data"
        if pg_ctl is not None and (data / "postmaster.pid").exists():
            subprocess.run(
                self._as_owner([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A running private PostgreSQL server, or skip (fail in CI)."""
    server = Postgres()
    problem = server.start()
    if problem is not None:
        unavailable(f"cannot start PostgreSQL: {problem}")
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- patient data


def crs_history(patient: str, *, days: int = 6, prefix: str = "h") -> list[dict[str, Any]]:
    """A deterministic history: infusion, vitals every 4 h, a febrile, hypotensive episode
    on days 2-3 with a tocilizumab dose, then recovery."""
    day0 = datetime(2025, 3, 1, tzinfo=UTC)
    facts: list[dict[str, Any]] = [
        {"type": "patient", "time": "2025-03-01T08:00:00Z", "age_y": 58, "sex": "M",
         "weight_kg": 81},
        {"type": "procedure", "time": "2025-03-01T10:00:00Z", "name": "car_t_infusion",
         "status": "done", "product": "axi-cel"},
    ]  # fmt: skip
    for day in range(days):
        for hour in range(2, 24, 4):
            t = (day0 + timedelta(days=day, hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ")
            fever = day in (1, 2) and hour >= 10
            sbp = 84 if day == 2 and hour == 14 else 118
            facts.append({"type": "observation", "time": t, "code": "8310-5",
                          "value": 38.9 if fever else 36.9, "unit": "Cel"})  # fmt: skip
            facts.append({"type": "observation", "time": t, "code": "8480-6", "value": sbp,
                          "unit": "mm[Hg]"})  # fmt: skip
    facts.append({"type": "medication_admin", "time": "2025-03-03T15:00:00Z",
                  "drug": "tocilizumab", "dose": 648, "unit": "mg", "route": "IV"})  # fmt: skip
    return [{"id": f"{prefix}{n:04d}", "patient": patient, **f} for n, f in enumerate(facts)]
