"""A team's tracking stack on this machine, for trying it: PostgreSQL holds MLflow's
runs, S3-compatible object storage (moto's server) holds MLflow's artifacts and a
bucket for a DVC remote, and `mlflow server` on top serves the artifacts through
itself, so clients need the server's URL and their login, and nothing else.

    python -m tools.team_stack [--dir .team-stack] [--mlflow-port 5000] [--s3-port 9000] [--postgres-port 5433]
                               [--user NAME ...] [--reader NAME ...]
    python -m tools.team_stack [--dir .team-stack] --password NAME

The server checks who is calling (MLflow's basic-auth app, its users in a second
PostgreSQL database): an admin, who manages users; each --user (default: yours),
who records runs in every experiment; each --reader, who reads them all and
writes to none of them. Passwords are made on first use and kept in the folder's
stack.json, readable by its owner only; --password prints one. A restart adds the
users it names and keeps the others.

Everything listens on 127.0.0.1 and keeps its data in one folder: PostgreSQL's
cluster, and a copy of the buckets that is written when the stack stops (moto
keeps objects in memory) and loaded when it starts. It prints what to export in
another shell, and Ctrl-C stops everything. A deployment puts the same three
pieces on real servers: PostgreSQL, MinIO or S3, and `mlflow server` with the
same options (docs/TEAM.md).

PostgreSQL refuses to run as root: as root, the cluster belongs to the user
`postgres` (or `nobody`), who must be able to reach the folder."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import getpass
import glob
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from segpipe.errors import SegpipeError, redact

HOST = "127.0.0.1"
ARTIFACTS_BUCKET = "segpipe-mlflow"
DVC_BUCKET = "segpipe-dvc"
# moto accepts any credentials; MinIO and S3 check theirs.
ACCESS_KEY_ID = "segpipe-team-stack"
SECRET_ACCESS_KEY = "segpipe-team-stack-secret"
REGION = "us-east-1"
DATABASE, DB_USER = "mlflow", "mlflow"
AUTH_DATABASE, ADMIN = "mlflow_auth", "admin"
# Teammates record runs in any experiment and register models; everyone else reads (the server's default).
WRITER_GRANTS = {"experiment": "EDIT", "registered_model": "EDIT"}
DEFAULT_PERMISSION = "READ"
START_TIMEOUT = 120  # seconds for one service to answer (the MLflow server migrates a new database first)
STOP_TIMEOUT = 20


def postgres_bin() -> Path:
    """The folder with initdb and postgres: PATH first, then pg_config, then Debian's
    /usr/lib/postgresql/<version>/bin (the newest)."""
    candidates = []
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            candidates.append(Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                                  check=True).stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                           key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                                           reverse=True)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise SegpipeError("PostgreSQL's server programs (initdb, postgres) are not on this machine: not on PATH, not in "
                       "`pg_config --bindir`, not in /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: "
                       "apt-get install postgresql; macOS: brew install postgresql) and run this again")


# What the stack runs besides PostgreSQL, by module: the pip requirement that brings it.
PYTHON_PARTS = {"moto.server": "moto[server]", "boto3": "boto3", "psycopg": "psycopg[binary]",
                "flask_wtf": "mlflow[auth]"}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its package is missing
        return False


def check_python_parts() -> None:
    """Checked up front: a missing part would only show in a server's log."""
    missing = [requirement for module, requirement in PYTHON_PARTS.items() if not _importable(module)]
    if missing:
        raise SegpipeError(f"the team stack needs {', '.join(missing)} in this environment: "
                           f"pip install {' '.join(repr(m) for m in missing)} (or make venv)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _claim_port(port: int, option: str) -> int:
    """`port`, checked to be free on 127.0.0.1 (0: any free port)."""
    if port == 0:
        return free_port()
    with socket.socket() as s:
        # As the servers bind: a port whose last connections linger in TIME_WAIT (a restart) is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            raise SegpipeError(f"port {port} on {HOST} is in use; pass {option} with a free port "
                               "(0 picks one)") from None
    return port


def _die_with_parent() -> None:
    """Run in the child before exec: it gets SIGTERM if the process that started it dies
    without stopping it (a killed test run, a closed terminal), so no server is left behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    """A server process in its own process group (Ctrl-C in the terminal reaches the
    stack, which stops them in order), writing to a log file."""

    name: str
    process: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, cmd: list[str], log: Path, env: dict | None = None, user: "PostgresUser | None" = None) -> "Service":
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            ids = {"user": user.uid, "group": user.gid, "extra_groups": []} if user else {}
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                       preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL, **ids)
        return cls(name, process, log)

    def alive(self) -> bool:
        return self.process.poll() is None

    def failure(self, what: str) -> SegpipeError:
        # SegpipeError redacts the log's lines: a server's may quote its database URL with the password.
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:]) if self.log.exists() else ""
        return SegpipeError(f"{self.name} {what}; its log {self.log} ends with:\n{tail}")

    def wait_until(self, ready, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive():
                raise self.failure(f"exited with status {self.process.returncode} while starting")
            if time.monotonic() > deadline:
                raise self.failure(f"did not answer within {timeout:.0f} s")
            time.sleep(0.25)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT, group: bool = True) -> None:
        """Send `sig` to the whole group (the MLflow server's workers too) or to the leader only
        (PostgreSQL's postmaster, which stops its own processes), then SIGKILL what is left."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(self.process.pid, sig)
                else:
                    self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):  # leftover workers, or the leader ignored the signal
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@dataclass(frozen=True)
class PostgresUser:
    """Who runs PostgreSQL: the current user, or as root an unprivileged one."""

    uid: int
    gid: int
    name: str

    @classmethod
    def for_this_process(cls) -> "PostgresUser | None":
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return cls(entry.pw_uid, entry.pw_gid, name)
        raise SegpipeError("PostgreSQL refuses to run as root, and this machine has neither a 'postgres' nor a "
                           "'nobody' user to run it as; run tools.team_stack as an ordinary user")

    def blocked_at(self, folder: Path) -> Path | None:
        """The first folder on the way to `folder` that this user may not enter, if any."""
        groups = {self.gid, *os.getgrouplist(self.name, self.gid)}
        for part in [*reversed(folder.parents), folder]:
            info = part.stat()
            bit = stat.S_IXUSR if info.st_uid == self.uid else stat.S_IXGRP if info.st_gid in groups else stat.S_IXOTH
            if not info.st_mode & bit:
                return part
        return None


class TeamStack:
    """PostgreSQL, S3-compatible storage and an MLflow server on 127.0.0.1, with their
    data in `folder`. A port of 0 picks a free one. Use as a context manager, or
    start() and stop()."""

    def __init__(self, folder: Path, mlflow_port: int = 5000, s3_port: int = 9000, postgres_port: int = 5433,
                 workers: int = 2, users: list[str] | None = None, readers: list[str] = ()):
        self.folder = Path(folder).resolve()
        self.ports = {"mlflow": mlflow_port, "s3": s3_port, "postgres": postgres_port}
        self.workers = workers
        self.users, self.readers = list(users) if users else [getpass.getuser()], list(readers)
        if clash := {ADMIN} & {*self.users, *self.readers} or set(self.users) & set(self.readers):
            raise SegpipeError(f"{', '.join(sorted(clash))}: a login is either the admin, a --user or a --reader; "
                               "give each person one name")
        self.services: dict[str, Service] = {}
        self.bin = postgres_bin()
        check_python_parts()

    # --- what clients use ---------------------------------------------------------

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.ports['mlflow']}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def artifacts_destination(self) -> str:
        return f"s3://{ARTIFACTS_BUCKET}/artifacts"

    def client_environment(self, user: str | None = None) -> dict[str, str]:
        """What a user exports: the tracking server and their login on it, and for DVC the S3
        endpoint and credentials."""
        user = user or self.users[0]
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": self.password(user), "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
                "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                "AWS_DEFAULT_REGION": REGION}

    def password(self, user: str) -> str:
        """A login's password (made on first use, kept in stack.json)."""
        return self._secrets(user)["passwords"][user]

    def login_uri(self, user: str) -> str:
        """The server's URL with a login in it, as MLflow accepts it (for the admin's own calls)."""
        login = ":".join(urllib.parse.quote(part, safe="") for part in (user, self.password(user)))
        return f"http://{login}@{HOST}:{self.ports['mlflow']}"

    def s3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, aws_access_key_id=ACCESS_KEY_ID,
                            aws_secret_access_key=SECRET_ACCESS_KEY, region_name=REGION)

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in a bucket under `prefix`."""
        pages = self.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    # --- start and stop -------------------------------------------------------------

    def __enter__(self) -> "TeamStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "TeamStack":
        try:
            self.ports = {name: _claim_port(port, f"--{name}-port") for name, port in self.ports.items()}
            self.folder.mkdir(parents=True, exist_ok=True)
            password = self._secrets()["postgres_password"]
            self._start_postgres(password)
            self._start_s3()
            self.services["postgres"].wait_until(lambda: self._database_ready(password))
            self._create_database(password)
            self.start_mlflow()
            self.services["s3"].wait_until(self._s3_ready)
            self._restore_buckets()
            self.wait_for_mlflow()
            self._ensure_logins()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """The MLflow server first (no more writes), then the object store (its buckets
        saved to the folder), then PostgreSQL (a fast shutdown: clients disconnected)."""
        errors = []
        if "mlflow" in self.services:
            self.stop_mlflow()
        if (s3 := self.services.pop("s3", None)) is not None:
            if s3.alive():
                try:
                    self._save_buckets()
                except Exception as exc:  # still stop everything; say what was not saved
                    errors.append(f"the buckets were not saved to {self.folder / 's3'}: {exc}")
            s3.stop()
        if (postgres := self.services.pop("postgres", None)) is not None:
            postgres.stop(signal.SIGINT, timeout=60, group=False)  # SIGINT: PostgreSQL's fast shutdown
        if errors:
            raise SegpipeError("; ".join(errors))

    def start_mlflow(self) -> None:
        """`mlflow server` on PostgreSQL, serving artifacts from the S3 bucket through itself."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        env |= {"MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY, "AWS_DEFAULT_REGION": REGION,
                "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),
                # Server-side jobs (GenAI scorers) are no part of segpipe, and would start seven more processes.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        stored = self._secrets(ADMIN)
        env |= {"MLFLOW_AUTH_CONFIG_PATH": str(self._write_auth_config(stored["postgres_password"])),
                # The admin's password when the users' database is new (MLflow ships none), and the key
                # every worker signs the sign-up page's CSRF token with.
                "MLFLOW_AUTH_ADMIN_PASSWORD": stored["passwords"][ADMIN],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": stored["flask_secret_key"]}
        # SQLAlchemy's default PostgreSQL driver is psycopg (3).
        backend = self._database_uri(stored["postgres_password"], DATABASE)
        self.services["mlflow"] = Service.start("the MLflow server", [
            sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", HOST,
            "--port", str(self.ports["mlflow"]), "--workers", str(self.workers), "--backend-store-uri", backend,
            "--artifacts-destination", self.artifacts_destination,
        ], self.folder / "logs/mlflow.log", env=env)

    def _database_uri(self, password: str, database: str) -> str:
        return f"postgresql://{DB_USER}:{password}@{HOST}:{self.ports['postgres']}/{database}"

    def _write_auth_config(self, password: str) -> Path:
        """basic_auth.ini for MLflow's basic-auth app: who may do what by default, and where users
        are kept. It names the database password, so only its owner may read it."""
        path = self.folder / "basic_auth.ini"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"""[mlflow]
default_permission = {DEFAULT_PERMISSION}
database_uri = {self._database_uri(password, AUTH_DATABASE)}
admin_username = {ADMIN}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
""")
        return path

    def _ensure_logins(self) -> None:
        """Each --user and --reader exists with the password in stack.json; users may write to every
        experiment and registered model, readers only read (the server's default_permission)."""
        from mlflow.exceptions import MlflowException
        from mlflow.server.auth.client import AuthServiceClient

        admin = AuthServiceClient(self.login_uri(ADMIN))  # the login in the URL: no variable of this process changes
        try:
            self._grant(admin, MlflowException)
        except MlflowException as exc:  # its message names the URL, and the URL holds the admin's password
            raise SegpipeError(f"setting up the stack's logins failed: {redact(str(exc))}") from None

    def _grant(self, admin, MlflowException) -> None:
        for user in (*self.users, *self.readers):
            try:
                admin.get_user(user)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                admin.create_user(user, self.password(user))
            for resource, permission in WRITER_GRANTS.items():
                if user in self.users:
                    admin.grant_user_permission(user, resource, "*", permission)
                else:  # a teammate who became a reader
                    with contextlib.suppress(MlflowException):
                        admin.revoke_user_permission(user, resource, "*")

    def wait_for_mlflow(self) -> None:
        self.services["mlflow"].wait_until(self._mlflow_ready)

    def stop_mlflow(self, kill: bool = False) -> None:
        """Stop the MLflow server (kill: at once, as a crash or a pulled cable would)."""
        self.services.pop("mlflow").stop(signal.SIGKILL if kill else signal.SIGTERM)

    def check_running(self) -> None:
        for service in self.services.values():
            if not service.alive():
                raise service.failure(f"stopped unexpectedly (status {service.process.returncode})")

    # --- PostgreSQL -----------------------------------------------------------------

    def _secrets(self, user: str | None = None) -> dict:
        """The database password, the server's signing key and the logins' passwords (`user`'s made
        if it has none), made on first use and kept in the folder, readable by its owner only."""
        path = self.folder / "stack.json"
        stored = json.loads(path.read_text()) if path.exists() else {"postgres_password": secrets.token_urlsafe(18)}
        before = json.dumps(stored)
        stored.setdefault("flask_secret_key", secrets.token_urlsafe(32))
        passwords = stored.setdefault("passwords", {})
        if user is not None and user not in passwords:
            passwords[user] = secrets.token_urlsafe(18)
        if json.dumps(stored) != before or not path.exists():
            staging = path.with_name(f".stack.json.tmp-{os.getpid()}")
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(stored, handle)
            staging.replace(path)
        return stored

    def _start_postgres(self, password: str) -> None:
        data = self.folder / "postgres"
        user = PostgresUser.for_this_process()
        if user is not None and (blocked := user.blocked_at(self.folder)) is not None:
            raise SegpipeError(
                f"PostgreSQL refuses to run as root, so it runs as the user {user.name!r}, who may not enter {blocked} "
                f"on the way to {self.folder}; allow it (chmod o+x {blocked}) or pass --dir with a folder it can reach")
        if not (data / "PG_VERSION").exists():
            if data.exists():
                raise SegpipeError(f"{data} exists but holds no PostgreSQL cluster; remove it (it is recreated) "
                                   "or pass another --dir")
            data.mkdir(mode=0o700)
            # initdb reads the password from a file its user owns (it cannot open a pipe that root made).
            password_file = self.folder / f".pwfile-{os.getpid()}"
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(password + "\n")
            if user is not None:
                os.chown(data, user.uid, user.gid)
                os.chown(password_file, user.uid, user.gid)
            try:
                init = Service.start("initdb", [
                    str(self.bin / "initdb"), "-D", str(data), "-U", DB_USER, f"--pwfile={password_file}",
                    "--auth=scram-sha-256", "-E", "UTF8", "--locale=C",
                ], self.folder / "logs/postgres.log", user=user)
                status = init.process.wait(timeout=START_TIMEOUT)
            finally:
                password_file.unlink()
            if status != 0:
                shutil.rmtree(data, ignore_errors=True)
                raise init.failure("failed to create the database cluster")
        self.services["postgres"] = Service.start("PostgreSQL", [
            str(self.bin / "postgres"), "-D", str(data), "-p", str(self.ports["postgres"]),
            "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories=",  # TCP on loopback only
        ], self.folder / "logs/postgres.log", user=user)

    def _connect(self, password: str, database: str):
        import psycopg

        return psycopg.connect(host=HOST, port=self.ports["postgres"], user=DB_USER, password=password,
                               dbname=database, connect_timeout=3, autocommit=True)

    def _database_ready(self, password: str) -> bool:
        try:
            self._connect(password, "postgres").close()
            return True
        except Exception:  # psycopg.OperationalError while it starts up
            return False

    def _create_database(self, password: str) -> None:
        with self._connect(password, "postgres") as connection:  # autocommit: CREATE DATABASE needs no transaction
            for database in (DATABASE, AUTH_DATABASE):  # runs, and the server's users and permissions
                if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
                    connection.execute(f"CREATE DATABASE {database}")

    # --- object storage -------------------------------------------------------------

    def _start_s3(self) -> None:
        self.services["s3"] = Service.start("the S3 server (moto)", [
            sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.ports["s3"]),
        ], self.folder / "logs/s3.log")

    def _s3_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.s3_endpoint}/moto-api/", timeout=2):
                return True
        except OSError:
            return False

    def _restore_buckets(self) -> None:
        """Create the buckets, with the objects saved when the stack last stopped."""
        client, saved = self.s3_client(), self.folder / "s3"
        for bucket in (ARTIFACTS_BUCKET, DVC_BUCKET):
            client.create_bucket(Bucket=bucket)
            root = saved / bucket
            for path in sorted(root.rglob("*")) if root.is_dir() else []:
                if path.is_file():
                    client.upload_file(str(path), bucket, path.relative_to(root).as_posix())

    def _save_buckets(self) -> None:
        """Every object, written to a fresh folder that then replaces s3/."""
        client, saved = self.s3_client(), self.folder / "s3"
        staging = self.folder / f".s3.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        for bucket in (ARTIFACTS_BUCKET, DVC_BUCKET):
            (staging / bucket).mkdir(parents=True)
            for key in self.objects(bucket):
                target = staging / bucket / key
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, key, str(target))
        old = self.folder / f".s3.old-{os.getpid()}"
        if saved.exists():
            saved.rename(old)
        staging.rename(saved)
        shutil.rmtree(old, ignore_errors=True)

    def _mlflow_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2):
                return True
        except OSError:
            return False

    # --- what to tell the user ------------------------------------------------------

    def instructions(self) -> str:
        """What to export, with the password read from stack.json by a command: never printed itself."""
        user = self.users[0]
        reading = f"python -m tools.team_stack --dir {self.folder} --password {user}"
        exports = "\n".join(f"export {k}={v}" if k != "MLFLOW_TRACKING_PASSWORD" else f'export {k}="$({reading})"'
                            for k, v in self.client_environment(user).items())
        readers = f"; readers (read every run, write none): {', '.join(self.readers)}" if self.readers else ""
        return f"""\
The team stack is up; its data is in {self.folder}. Ctrl-C stops it.
  MLflow server  {self.tracking_uri}  (runs in PostgreSQL on {HOST}:{self.ports['postgres']}, artifacts in {self.artifacts_destination})
  S3 (moto)      {self.s3_endpoint}  (buckets {ARTIFACTS_BUCKET}, {DVC_BUCKET}; saved to {self.folder / 's3'} when it stops)
  Logins         {ADMIN} (manages users); users (record runs): {', '.join(self.users)}{readers}.
                 Passwords are in {self.folder / 'stack.json'} (yours only): --password NAME prints one.

In the shell you run the pipeline from (as {user}; a teammate exports their own login):
{exports}

A DVC remote on the bucket, once per project (commit .dvc/config; the credentials stay in the
git-ignored .dvc/config.local, or come from the AWS_* variables above):
dvc remote add -d team s3://{DVC_BUCKET}/segpipe
dvc remote modify team endpointurl {self.s3_endpoint}
dvc remote modify --local team access_key_id {ACCESS_KEY_ID}
dvc remote modify --local team secret_access_key {SECRET_ACCESS_KEY}
"""


class _Stop(Exception):
    """SIGTERM, handled like Ctrl-C."""


def _raise_stop(signum, frame):
    raise _Stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.team_stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".team-stack"),
                        help="folder for the stack's data and logs (default: .team-stack in the current folder)")
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--s3-port", type=int, default=9000)
    parser.add_argument("--postgres-port", type=int, default=5433)
    parser.add_argument("--workers", type=int, default=2, help="MLflow server worker processes")
    parser.add_argument("--user", action="append", default=[], metavar="NAME",
                        help="a login that records runs, one per teammate (repeat; default: yours)")
    parser.add_argument("--reader", action="append", default=[], metavar="NAME",
                        help="a login that reads every run and writes none (repeat)")
    parser.add_argument("--password", metavar="NAME", help="print NAME's password from the folder's stack.json, and exit")
    args = parser.parse_args(argv)
    if args.password:
        stored = Path(args.dir) / "stack.json"
        passwords = json.loads(stored.read_text()).get("passwords", {}) if stored.exists() else {}
        if args.password not in passwords:
            print(f"error: no login {args.password!r} in {stored}; start the stack with --user {args.password} "
                  "(or --reader) to make one", file=sys.stderr, flush=True)
            return 2
        print(passwords[args.password], flush=True)
        return 0
    signal.signal(signal.SIGTERM, _raise_stop)
    # Ctrl-C stops the stack even where this process was started with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stack = TeamStack(args.dir, args.mlflow_port, args.s3_port, args.postgres_port, args.workers,
                          args.user, args.reader)
    except SegpipeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        print(f"starting PostgreSQL, S3 (moto) and the MLflow server in {stack.folder} ...", flush=True)
        stack.start()
        print(stack.instructions(), flush=True)
        while True:
            stack.check_running()
            time.sleep(1)
    except (KeyboardInterrupt, _Stop):
        print("\nstopping ...", flush=True)
        stack.stop()
        print("stopped.", flush=True)
        return 0
    except SegpipeError as exc:
        with contextlib.suppress(SegpipeError):
            stack.stop()
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
