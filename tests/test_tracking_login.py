"""Logins on a tracking server: MLflow's basic-auth app on 127.0.0.1 (its users in SQLite),
a tracking URI that carries the login (http://user:password@host:port, as MLflow accepts
it), and no password in anything segpipe prints, writes or records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from segpipe.errors import SegpipeError, redact
from segpipe.tracking.runs import ResultsRun, TrainingRun
from tests.pipeline_project import copy_project, dvc, git_commit, run, set_params
from tests.test_tracking import free_port, save_model, wait_for_server
from tools.team_stack import WRITER_GRANTS

# A password that needs percent-encoding in a URL (@, :, /, %), so the URI form is really parsed.
PASSWORD = "Zq7-p@ss:w/rd%9"
IN_URL = urllib.parse.quote(PASSWORD, safe="")
ADMIN_PASSWORD = "admin-Kx81-secret"
READER_PASSWORD = "reader-Jm42-secret"
GIT_TOKEN = "ghp_Tk93xSegpipeTestToken"
SECRETS = (PASSWORD, IN_URL, ADMIN_PASSWORD, READER_PASSWORD, GIT_TOKEN)


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


class AuthServer:
    def __init__(self, url: str):
        self.url = url
        self.port = urllib.parse.urlsplit(url).port

    def uri(self, user: str, password: str) -> str:
        return f"http://{user}:{urllib.parse.quote(password, safe='')}@127.0.0.1:{self.port}"

    def admin(self) -> MlflowClient:
        return MlflowClient(self.uri("admin", ADMIN_PASSWORD))


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth`: alice records runs, carol reads (the default permission)."""
    folder = tmp_path_factory.mktemp("auth-server")
    config = folder / "basic_auth.ini"
    config.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder / 'users.db'}\n"
                      "admin_username = admin\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-key", "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'runs.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = wait_for_server(process, f"http://127.0.0.1:{port}", 120, "mlflow server --app-name basic-auth")
    from mlflow.server.auth.client import AuthServiceClient

    server = AuthServer(url)
    users = AuthServiceClient(server.uri("admin", ADMIN_PASSWORD))
    users.create_user("alice", PASSWORD)
    users.create_user("carol", READER_PASSWORD)
    for resource, permission in WRITER_GRANTS.items():  # as tools.team_stack grants a --user
        users.grant_user_permission("alice", resource, "*", permission)
    server.admin().create_experiment("team")
    yield server
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No login of the test process's own; the stage's changes to MLflow's variables are undone."""
    monkeypatch.chdir(tmp_path)
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                     "MLFLOW_TRACKING_TOKEN", "DVC_ROOT"):
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials
    return tmp_path


def test_redact_hides_passwords_tokens_and_signatures_and_keeps_the_rest():
    assert redact(f"at http://alice:{IN_URL}@127.0.0.1:5000/api") == "at http://alice:***@127.0.0.1:5000/api"
    assert redact("http://alice:p@ss:w0rd@host:1/x") == "http://alice:***@host:1/x"  # an unencoded @ and : too
    assert redact(f"https://{GIT_TOKEN}@github.com/o/r.git") == "https://***@github.com/o/r.git"
    assert redact("postgresql://mlflow:pw1@127.0.0.1:5433/mlflow") == "postgresql://mlflow:***@127.0.0.1:5433/mlflow"
    assert (redact("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA1%2F&X-Amz-Signature=ab12&x=1")
            == "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&x=1")
    assert redact("http://h:1/?token=abc and http://h:2/") == "http://h:1/?token=*** and http://h:2/"
    for kept in ("sqlite:////tmp/a@b/mlflow.db", "s3://bucket/img@2x.png", "file:///tmp/x", "no url, user@example.com"):
        assert redact(kept) == kept
    assert str(SegpipeError(f"at http://alice:{IN_URL}@h:1 it failed")) == "at http://alice:***@h:1 it failed"


def test_a_login_in_the_uri_reaches_the_server_records_the_user_and_is_never_printed(auth_server, clean_env, monkeypatch,
                                                                                     capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.uri("alice", PASSWORD))
    training = TrainingRun("team", {"train.lr": 0.01}, {"git_commit": "abc"}, required=True, run_name="alices-run")
    training.log_metrics({"train_loss": 0.5}, step=1)
    link = training.link(save_model(clean_env))
    link.save(clean_env / "link.json")
    training.finish()
    (clean_env / "eval.json").write_text("{}")
    ResultsRun(clean_env / "model.pt", clean_env / "link.json", "team", True, {}, {}).log(
        metrics={"test_miou": 0.5}, artifacts={"metrics": [clean_env / "eval.json"]})
    recorded = auth_server.admin().get_run(training.run_id)
    assert recorded.info.status == "FINISHED" and recorded.info.user_id == "alice"
    assert recorded.data.tags["mlflow.user"] == "alice" and recorded.data.metrics["test_miou"] == 0.5
    assert training.uri == auth_server.url  # what messages name: the server without the login
    out = capsys.readouterr()
    assert not leaked(out.out + out.err) and not leaked(json.dumps(recorded.to_dictionary()))


def test_a_wrong_password_is_refused_naming_the_user_never_the_password(auth_server, clean_env, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.uri("alice", PASSWORD + "x"))
    with pytest.raises(SegpipeError) as refused:
        TrainingRun("team", {}, {}, required=True, run_name="x")
    message = str(refused.value)
    assert f"the MLflow tracking server at {auth_server.url} refused the login of user 'alice' (401: wrong user or " \
           "password); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in message
    assert "mlflow.required: false" in message and not leaked(message)

    run = TrainingRun("team", {}, {}, required=False, run_name="x")  # a warning, and no tracking
    assert not run.active
    err = capsys.readouterr().err
    assert "refused the login of user 'alice'" in err and "going on without tracking" in err and not leaked(err)


def test_an_anonymous_call_is_refused_with_how_to_log_in(auth_server, clean_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.url)
    with pytest.raises(SegpipeError, match=r"asks who is calling \(401\) and no login was given; set "
                                           r"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        TrainingRun("team", {}, {}, required=True, run_name="x")


def test_a_reader_logged_in_through_the_variables_cannot_create_a_run(auth_server, clean_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "carol")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", READER_PASSWORD)
    with pytest.raises(SegpipeError) as refused:
        TrainingRun("team", {}, {}, required=True, run_name="readers-run")
    message = str(refused.value)
    assert f"starting the run failed at {auth_server.url}: " in message and "403" in message
    assert "user 'carol' may not do this on the server: ask its admin for EDIT on the experiment" in message
    assert not leaked(message)
    team = auth_server.admin().get_experiment_by_name("team").experiment_id
    assert "readers-run" not in {r.info.run_name for r in auth_server.admin().search_runs([team])}


def grep_outputs(project: Path, result: subprocess.CompletedProcess) -> list[str]:
    """Where a secret shows: the console, and every file the pipeline wrote or records in."""
    found = [f"console: {s}" for s in leaked(result.stdout + result.stderr)]
    files = [project / "dvc.lock", project / "params.yaml", *project.glob("models/*.json"),
             *(p for folder in ("reports", "metrics") for p in (project / folder).rglob("*") if p.is_file())]
    for path in files:
        found += [f"{path.relative_to(project)}: {s}" for s in leaked(path.read_bytes().decode(errors="replace"))]
    return found


@pytest.mark.e2e
def test_the_pipeline_with_a_login_in_the_uri_prints_and_records_no_password(auth_server, baseline, tmp_path):
    project = copy_project(baseline, tmp_path / "project")
    # MLflow records the git remote's URL as a tag: a CI checkout's holds a token.
    run(["git", "remote", "add", "origin", f"https://x-access-token:{GIT_TOKEN}@example.com/team/segpipe.git"], project)
    set_params(project, **{"train.seed": 7, "mlflow.experiment": "team"})
    git_commit(project, "another seed")
    result = dvc("repro", cwd=project, env={"MLFLOW_TRACKING_URI": auth_server.uri("alice", PASSWORD)})
    assert "Running stage 'train'" in result.stdout and "Running stage 'report'" in result.stdout
    assert grep_outputs(project, result) == []

    admin = auth_server.admin()
    link = json.loads((project / "models/mlflow_run.json").read_text())
    recorded = admin.get_run(link["run_id"])
    assert recorded.info.user_id == "alice" and recorded.info.status == "FINISHED"
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert recorded.data.metrics["test_miou"] == pytest.approx(evaluation["miou"])
    assert not leaked(json.dumps(recorded.to_dictionary()))  # params, tags, metrics, the run's description
    artifacts = Path(admin.download_artifacts(link["run_id"], "", str(tmp_path / "artifacts")))
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    assert any(p.name == "report.html" for p in files) and any(p.name == "eval.json" for p in files)
    assert [p.name for p in files if leaked(p.read_bytes().decode(errors="replace"))] == []

    # The same login against a server that is not there, with tracking not required: three warnings, no password.
    set_params(project, **{"train.seed": 8, "mlflow.required": False})
    git_commit(project, "tracking not required")
    unreachable = f"http://alice:{IN_URL}@127.0.0.1:{free_port()}"
    result = dvc("repro", cwd=project, env={"MLFLOW_TRACKING_URI": unreachable})
    assert result.stderr.count("going on without tracking (mlflow.required is false)") == 3, result.stderr
    assert result.stderr.count("warning: MLflow: the MLflow tracking server at http://127.0.0.1:") == 3
    assert grep_outputs(project, result) == []
