"""A team's shared stack, for real, on 127.0.0.1: an MLflow server on PostgreSQL that
serves artifacts from S3-compatible storage (moto's server) and checks who is calling,
and a DVC remote on the same storage. One stack for the module, started and stopped by
tools.team_stack as a user starts it, with two teammates (alice, bob) and a reader
(carol); the pipeline runs are experiments on the session's tiny baseline. The tests'
own look-ups log in as the admin."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from segpipe.errors import SegpipeError
from tests.pipeline_project import (
    copy_project,
    dvc,
    dvc_experiment_refs,
    failed_experiment_logs,
    git_commit,
    run,
    set_params,
    start_queue,
    user_env,
    wait_for_queues,
)
from tools.team_stack import (
    ACCESS_KEY_ID,
    ADMIN,
    ARTIFACTS_BUCKET,
    DVC_BUCKET,
    HOST,
    SECRET_ACCESS_KEY,
    TeamStack,
    postgres_bin,
)

# One worker runs the module: its tests share module-scoped fixtures.
pytestmark = pytest.mark.xdist_group("stack")

# A server that went away fails a call at once in these tests; segpipe's defaults, which
# bound it to seconds, are measured in docs/TEAM.md.
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
REMOTE_PREFIX = "segpipe"
TEAMMATES, READER = ["alice", "bob"], "carol"


@pytest.fixture(scope="module")
def team_stack():
    try:
        postgres_bin()
    except SegpipeError as exc:
        pytest.skip(f"this machine lacks PostgreSQL: {exc}")
    # Not under pytest's tmp_path, which is private to its owner (0700): as root, PostgreSQL
    # runs as another user, who must be able to reach its data folder.
    folder = Path(tempfile.mkdtemp(prefix="segpipe-team-stack-"))
    folder.chmod(0o755)
    try:
        with TeamStack(folder / "stack", mlflow_port=0, s3_port=0, postgres_port=0, users=TEAMMATES,
                       readers=[READER]) as stack, pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
            patch.setenv("MLFLOW_TRACKING_PASSWORD", stack.password(ADMIN))
            yield stack
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def running(stack: TeamStack) -> TeamStack:
    """The module's stack with every server up: a test before may have stopped one."""
    if not stack.services:
        stack.start()
    elif "mlflow" not in stack.services:
        stack.start_mlflow()
        stack.wait_for_mlflow()
    return stack


@pytest.fixture
def stack(team_stack) -> TeamStack:
    return running(team_stack)


def tracking_env(stack: TeamStack, user: str = TEAMMATES[0], **extra) -> dict:
    """A teammate's shell: the server and their own login on it (docs/TEAM.md)."""
    return {"MLFLOW_TRACKING_URI": stack.tracking_uri, "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": stack.password(user), **extra}


def passwords_in(stack: TeamStack, text: str) -> list[str]:
    """The logins whose password shows in `text`."""
    return [user for user in (ADMIN, *TEAMMATES, READER) if stack.password(user) in text]


def use_remote(project: Path, stack: TeamStack) -> None:
    """The remote as docs/TEAM.md sets it up: URL and endpoint committed, credentials local."""
    dvc("remote", "add", "-d", "team", f"s3://{DVC_BUCKET}/{REMOTE_PREFIX}", cwd=project)
    dvc("remote", "modify", "team", "endpointurl", stack.s3_endpoint, cwd=project)
    use_credentials(project)


def use_credentials(project: Path) -> None:
    dvc("remote", "modify", "--local", "team", "access_key_id", ACCESS_KEY_ID, cwd=project)
    dvc("remote", "modify", "--local", "team", "secret_access_key", SECRET_ACCESS_KEY, cwd=project)


@dataclass
class Team:
    project: Path      # the first engineer's, which pushed
    clone: Path        # a teammate's fresh clone, which pulled
    push_output: str


@pytest.fixture(scope="module")
def team(baseline, team_stack, tmp_path_factory) -> Team:
    """The baseline project with its remote on the stack's bucket, pushed; a teammate's clone that pulled it."""
    root = tmp_path_factory.mktemp("team")
    project = copy_project(baseline, root / "project")
    use_remote(project, running(team_stack))
    git_commit(project, "DVC remote on the team's S3 storage")
    pushed = dvc("push", cwd=project)
    clone = root / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], root)
    use_credentials(clone)  # the teammate's own, never in git
    dvc("pull", cwd=clone)
    return Team(project, clone, pushed.stdout)


def cache_files(project: Path) -> set[str]:
    cache = project / ".dvc/cache"
    return {p.relative_to(cache).as_posix() for p in (cache / "files").rglob("*") if p.is_file()}


@pytest.mark.e2e
def test_data_and_models_go_through_the_s3_remote_and_a_teammate_reruns_nothing(team, stack):
    project, clone = team.project, team.clone
    keys = stack.objects(DVC_BUCKET, f"{REMOTE_PREFIX}/")
    assert {k.removeprefix(f"{REMOTE_PREFIX}/") for k in keys} == cache_files(project)
    assert f"{len(keys)} files pushed" in team.push_output and len(keys) > 50

    committed = run(["git", "show", "HEAD:.dvc/config"], project).stdout
    assert f"endpointurl = {stack.s3_endpoint}" in committed and f"s3://{DVC_BUCKET}/{REMOTE_PREFIX}" in committed
    assert SECRET_ACCESS_KEY not in committed and ACCESS_KEY_ID not in committed
    assert ".dvc/config.local" not in run(["git", "ls-files", ".dvc"], project).stdout.split()
    assert SECRET_ACCESS_KEY in (clone / ".dvc/config.local").read_text()

    for path in ("models/model.pt", "data/processed/summary.json", "data/processed/test/images.npy", "reports/report.html"):
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path
    assert cache_files(clone) == cache_files(project)
    assert "Data and pipelines are up to date" in dvc("status", cwd=clone).stdout
    client = MlflowClient(stack.tracking_uri)
    runs_before = len(client.search_runs(search_all_experiments(client)))
    assert "Running stage" not in dvc("repro", cwd=clone, env=tracking_env(stack)).stdout
    assert len(client.search_runs(search_all_experiments(client))) == runs_before


def search_all_experiments(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


@dataclass
class Experiment:
    seed: int
    link: dict          # models/mlflow_run.json as the experiment committed it
    evaluation: dict    # metrics/eval.json


def dvc_experiments(repo: Path) -> dict[str, Experiment]:
    """Every DVC experiment of a repository by name, read from its git ref."""
    found = {}
    for ref in dvc_experiment_refs(repo):
        show = lambda path: run(["git", "show", f"{ref}:{path}"], repo).stdout  # noqa: E731
        found[ref.rsplit("/", 1)[1]] = Experiment(yaml.safe_load(show("params.yaml"))["train"]["seed"],
                                                  json.loads(show("models/mlflow_run.json")),
                                                  json.loads(show("metrics/eval.json")))
    return found


@pytest.mark.e2e
def test_queued_experiments_and_a_teammates_runs_all_land_on_the_server_each_its_own(team, stack, tmp_path):
    project, clone = team.project, team.clone
    # The load a team puts on its server: 2 queued experiments on 2 workers, and a teammate's 2 at the same
    # time, all four starting together (their first runs log the same new dataset at once).
    seeds = {project: [11, 12], clone: [15, 16]}
    # The teammate's two log their models (through the server into the bucket, checked below); the
    # project's two do not: seconds each, and the same path.
    log_model = {project: "false", clone: "true"}
    for repo, values in seeds.items():  # one experiment per value
        dvc("exp", "run", "--queue", "-S", f"train.seed={','.join(map(str, values))}",
            "-S", f"mlflow.log_model={log_model[repo]}", cwd=repo)
    user = {project: "alice", clone: "bob"}  # each with their own login
    for repo in seeds:  # both queues at once: 4 trainings on the server side by side
        start_queue(repo, tmp_path / f"queue-{repo.name}.log", tracking_env(stack, user[repo]))
    statuses = wait_for_queues({repo: len(values) for repo, values in seeds.items()})
    assert statuses[project].count("Success") == 2 and statuses[clone].count("Success") == 2, \
        (statuses, "".join(failed_experiment_logs(repo, status) for repo, status in statuses.items()))

    theirs = dvc_experiments(clone)
    experiments = dvc_experiments(project) | theirs
    assert len(experiments) == 4 and sorted(e.seed for e in experiments.values()) == [11, 12, 15, 16]
    client = MlflowClient(stack.tracking_uri)
    experiment = client.get_experiment_by_name("segpipe")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(experiments)  # four runs, four names, one per experiment

    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert run(["git", "rev-parse", "HEAD"], clone).stdout.strip() == head
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    processed_md5 = next(o["md5"] for o in lock["stages"]["preprocess"]["outs"] if o["path"] == "data/processed")
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    teammates = {r.info.run_id for r in runs if r.info.run_name in theirs}
    assert len(teammates) == 2 and sorted(m.source_run_id for m in models) == sorted(teammates)
    model_of = {m.source_run_id: m for m in models}
    keys = set(stack.objects(ARTIFACTS_BUCKET))
    for r in runs:
        mine = experiments[r.info.run_name]
        assert r.info.status == "FINISHED"
        assert mine.link["run_id"] == r.info.run_id and mine.link["run_name"] == r.info.run_name
        assert r.data.params["train.seed"] == str(mine.seed)
        assert r.data.tags["model_sha256"] == mine.link["model_sha256"]
        assert r.data.tags["dvc_exp_name"] == r.info.run_name
        assert r.info.user_id == r.data.tags["mlflow.user"] == ("bob" if r.info.run_id in teammates else "alice")
        assert passwords_in(stack, json.dumps(r.to_dictionary())) == []
        assert r.data.tags["dvc_exp_baseline_rev"] == r.data.tags["git_commit"] == head
        assert r.data.tags["data_processed_dvc_md5"] == processed_md5
        assert r.data.metrics["test_miou"] == pytest.approx(mine.evaluation["miou"])
        # Reports and metrics go through the server into the bucket, under this run only.
        listed = artifact_files(client, r.info.run_id)
        assert {"metrics/eval.json", "metrics/confusion_matrix.json", "report/report.html"} <= listed
        prefix = f"artifacts/{experiment.experiment_id}/{r.info.run_id}/artifacts/"
        assert {k.removeprefix(prefix) for k in keys if k.startswith(prefix)} == listed
        assert json.loads(download(client, r.info.run_id, "metrics/eval.json", tmp_path)) == mine.evaluation
        if r.info.run_id in teammates:  # the model too, through the server into the bucket
            model_key = f"artifacts/{experiment.experiment_id}/models/{model_of[r.info.run_id].model_id}/artifacts/data/model.pt2"
            assert model_key in keys
    assert len({r.data.tags["model_sha256"] for r in runs}) == 4
    import mlflow.artifacts

    model = models[0]  # the same bytes through the server as in the bucket
    through_server = Path(mlflow.artifacts.download_artifacts(f"{model.artifact_location}/data/model.pt2",
                                                             dst_path=str(tmp_path / "model"),
                                                             tracking_uri=stack.tracking_uri)).read_bytes()
    key = f"artifacts/{experiment.experiment_id}/models/{model.model_id}/artifacts/data/model.pt2"
    assert through_server == stack.s3_client().get_object(Bucket=ARTIFACTS_BUCKET, Key=key)["Body"].read()

    # The teammate's leaderboard shows everyone's runs.
    shown = run(["segpipe", "compare", "--out", "runs.csv"], clone, env=tracking_env(stack, "bob"))
    table = (clone / "runs.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in table[1:]) == sorted(r.info.run_id for r in runs)
    assert all(name in shown.stdout for name in experiments)
    # No login's password in what the queues printed or the experiments committed.
    printed = "".join((tmp_path / f"queue-{repo.name}.log").read_text() for repo in seeds) + shown.stdout + shown.stderr
    committed = "".join(run(["git", "show", f"{ref}:{path}"], repo).stdout for repo in seeds
                        for ref in dvc_experiment_refs(repo)
                        for path in ("params.yaml", "dvc.lock", "models/mlflow_run.json", "metrics/eval.json"))
    assert passwords_in(stack, printed + committed) == []


def artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_files(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def download(client: MlflowClient, run_id: str, path: str, folder: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(folder))).read_text()


@dataclass
class Training:
    """`python stages/train.py` in the background, its output read line by line as it comes."""

    process: subprocess.Popen
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, project: Path, env: dict) -> "Training":
        process = subprocess.Popen([sys.executable, "stages/train.py"], cwd=project, env=user_env(env), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        training = cls(process)
        for stream, lines in ((process.stdout, training.stdout), (process.stderr, training.stderr)):
            threading.Thread(target=lambda s=stream, out=lines: out.extend(s), daemon=True).start()
        return training

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stdout):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"no {text!r} from train:\n{''.join(self.stdout)}\n{''.join(self.stderr)}")
            time.sleep(0.1)

    def finish(self, timeout: float = 300) -> tuple[int, str, str, float]:
        started = time.monotonic()
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        time.sleep(0.2)  # the reader threads take the last lines
        return code, "".join(self.stdout), "".join(self.stderr), time.monotonic() - started


EPOCHS = 12


@pytest.mark.e2e
def test_a_server_that_goes_away_mid_training_stops_or_spares_the_run_as_mlflow_required_says(stack, baseline, tmp_path):
    from segpipe.training.resume import ResumeState

    projects = {}
    for required in (True, False):
        project = copy_project(baseline, tmp_path / f"required-{str(required).lower()}")
        set_params(project, **{"train.epochs": EPOCHS, "mlflow.required": required, "mlflow.experiment": "goes-away"})
        projects[required] = project
    client = MlflowClient(stack.tracking_uri)
    # Made beforehand: two first runs of a new experiment race to create it (see the test below).
    client.get_experiment_by_name("goes-away") or client.create_experiment("goes-away")
    trainings = {required: Training.start(project, tracking_env(stack, **FAIL_FAST))
                 for required, project in projects.items()}
    for training in trainings.values():
        training.wait_for("training ")  # its run is on the server; the epochs have begun
    run_ids = {r.info.run_name: r.info.run_id
               for r in client.search_runs([client.get_experiment_by_name("goes-away").experiment_id])}
    stack.stop_mlflow(kill=True)
    results = {required: training.finish() for required, training in trainings.items()}
    print("seconds from the server's death to train's exit:", {k: round(v[3], 1) for k, v in results.items()})
    assert len(run_ids) == 2

    code, out, err, _ = results[True]
    required = projects[True]
    assert code == 2, err
    # The first per-epoch call to meet the dead server names itself: the metrics, or the images logged after them.
    assert re.search(rf"error: MLflow: logging (metrics|images) failed at {re.escape(stack.tracking_uri)}", err), err
    assert "set mlflow.required: false" in err and "Traceback" not in err
    # The resume checkpoint: the epochs done, and the run the next `dvc repro` goes on recording into.
    state = ResumeState.load(required / "models/resume/state.pt")
    assert 1 <= state.epoch < EPOCHS and len(state.history) == state.epoch
    assert state.mlflow_run_id == run_ids[state.mlflow_run_name] and f"MLflow run {state.mlflow_run_name}" in out
    # An epoch is printed once it is logged: the one whose logging failed is not.
    assert [int(e) for e in re.findall(rf"^epoch (\d+)/{EPOCHS} ", out, re.MULTILINE)] == list(range(1, state.epoch))
    for kept in ("models/model.pt", "metrics/train.json", "models/mlflow_run.json"):
        assert (required / kept).read_bytes() == (baseline / kept).read_bytes(), kept

    code, out, err, _ = results[False]
    spared = projects[False]
    assert code == 0, err
    assert err.count("going on without tracking (mlflow.required is false), results stay in metrics/") == 1
    assert re.search(rf"warning: MLflow: logging (metrics|images) failed at {re.escape(stack.tracking_uri)}", err), err
    assert [int(e) for e in re.findall(rf"^epoch (\d+)/{EPOCHS} ", out, re.MULTILINE)] == list(range(1, EPOCHS + 1))
    assert json.loads((spared / "metrics/train.json").read_text())["epochs"] == EPOCHS
    assert len((spared / "metrics/train_history.csv").read_text().splitlines()) == EPOCHS + 1
    assert (spared / "models/model.pt").read_bytes() != (baseline / "models/model.pt").read_bytes()
    assert json.loads((spared / "models/mlflow_run.json").read_text())["run_id"] is None
    assert not (spared / "models/resume").exists()


@pytest.mark.e2e
def test_a_run_whose_new_experiment_another_writer_created_first_still_records(stack, monkeypatch, tmp_path):
    """Several first runs of a new experiment (a fresh server, a queue) all look it up, find
    nothing, and create it: all but one are told it already exists, and must use it."""
    import mlflow

    from segpipe.tracking.runs import TrainingRun

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.tracking_uri)
    client = MlflowClient(stack.tracking_uri)
    created = client.create_experiment("together")  # by the writer that won the race
    looked_up = mlflow.get_experiment_by_name
    calls = []

    def just_before_it_was_created(name):
        calls.append(name)
        return None if len(calls) == 1 else looked_up(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", just_before_it_was_created)
    run = TrainingRun("together", {"train.lr": 0.01}, {}, True, "second-writer")
    run.finish()
    recorded = client.get_run(run.run_id)
    assert recorded.info.experiment_id == created and recorded.info.status == "FINISHED"
    assert recorded.data.params == {"train.lr": "0.01"}


def status_of(url: str, login: tuple[str, str] | None = None) -> int:
    """The HTTP status of a GET, with a basic-auth login or none."""
    header = {"Authorization": "Basic " + base64.b64encode(":".join(login).encode()).decode()} if login else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=header), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.e2e
def test_the_server_checks_who_is_calling_and_a_reader_cannot_write(stack):
    from mlflow.exceptions import MlflowException

    listing = f"{stack.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert status_of(listing) == 401  # anonymous
    assert status_of(listing, ("alice", stack.password("alice") + "x")) == 401  # a wrong password
    assert status_of(listing, ("nobody", stack.password("alice"))) == 401  # a login that does not exist
    assert status_of(listing, ("alice", stack.password("alice"))) == 200
    assert status_of(f"{stack.tracking_uri}/health") == 200  # load balancers' health checks need no login

    team = MlflowClient(stack.login_uri(ADMIN))
    experiment = (team.get_experiment_by_name("readers") or team.get_experiment(team.create_experiment("readers")))
    written = MlflowClient(stack.login_uri("bob")).create_run(experiment.experiment_id, run_name="bobs")
    reader = MlflowClient(stack.login_uri(READER))
    assert reader.get_run(written.info.run_id).info.run_name == "bobs"  # a reader reads every run
    with pytest.raises(MlflowException) as refused:
        reader.create_run(experiment.experiment_id, run_name="carols")
    assert refused.value.error_code == "PERMISSION_DENIED"
    with pytest.raises(MlflowException) as refused:
        reader.log_metric(written.info.run_id, "test_miou", 1.0)
    assert refused.value.error_code == "PERMISSION_DENIED"
    assert [r.info.run_name for r in team.search_runs([experiment.experiment_id])] == ["bobs"]
    assert team.get_run(written.info.run_id).data.metrics == {}

    shown = subprocess.run([sys.executable, "-m", "tools.team_stack", "--dir", str(stack.folder), "--password", "bob"],
                           env=user_env(), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout == f"{stack.password('bob')}\n"
    for secret in ("stack.json", "basic_auth.ini"):  # the passwords, and the users' database URL
        assert (stack.folder / secret).stat().st_mode & 0o077 == 0, secret


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((HOST, port)) == 0


@pytest.mark.e2e
def test_the_command_keeps_runs_and_artifacts_across_a_restart_and_stops_on_ctrl_c(stack, tmp_path):
    client = MlflowClient(stack.tracking_uri)
    experiment_id = client.create_experiment("restart")
    before = client.create_run(experiment_id, run_name="before-restart").info.run_id
    client.log_metric(before, "test_miou", 0.5)
    (tmp_path / "note.txt").write_text("kept")
    client.log_artifact(before, str(tmp_path / "note.txt"), "notes")
    client.set_terminated(before)
    ports = dict(stack.ports)
    stack.stop()
    assert not any(port_open(p) for p in ports.values())
    assert not (stack.folder / "postgres/postmaster.pid").exists()  # a clean shutdown

    command = subprocess.Popen(
        [sys.executable, "-m", "tools.team_stack", "--dir", str(stack.folder), "--mlflow-port", "0",
         "--s3-port", "0", "--postgres-port", "0"],
        env=user_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    new_ports: list[int] = []
    reader = threading.Thread(target=lambda: lines.extend(command.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    while not any("Ctrl-C stops it" in line for line in lines):
        if command.poll() is not None or time.monotonic() > deadline:
            command.kill()
            raise AssertionError("".join(lines))
        time.sleep(0.2)
    try:
        time.sleep(0.5)  # the rest of the instructions
        printed = "".join(lines)
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", printed, re.MULTILINE))
        assert set(exports) >= {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "AWS_ENDPOINT_URL_S3",
                                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        # The password is read from stack.json by the command it shows, never printed.
        assert f'export MLFLOW_TRACKING_PASSWORD="$(python -m tools.team_stack --dir {stack.folder} --password ' in printed
        assert passwords_in(stack, printed) == []
        assert f"dvc remote modify team endpointurl {exports['AWS_ENDPOINT_URL_S3']}" in printed
        restarted = MlflowClient(exports["MLFLOW_TRACKING_URI"])
        run_ = restarted.get_run(before)
        assert run_.info.run_name == "before-restart" and run_.data.metrics == {"test_miou": 0.5}
        assert Path(restarted.download_artifacts(before, "notes/note.txt", str(tmp_path / "back"))).read_text() == "kept"
        new_ports += [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", printed)]
        assert len(set(new_ports)) == 3 and all(port_open(p) for p in new_ports)
    finally:
        command.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends
        command.wait(timeout=120)
        reader.join(timeout=10)
    assert command.returncode == 0 and lines[-1] == "stopped.\n", "".join(lines)
    assert not any(port_open(p) for p in new_ports)
    assert not (stack.folder / "postgres/postmaster.pid").exists()


def test_the_command_names_a_busy_port_and_the_option_to_change(tmp_path):
    try:
        postgres_bin()
    except SegpipeError as exc:
        pytest.skip(f"this machine lacks PostgreSQL: {exc}")
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "tools.team_stack", "--dir", str(tmp_path / "stack"),
                                 "--mlflow-port", str(port), "--s3-port", "0", "--postgres-port", "0"],
                                env=user_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"error: port {port} on 127.0.0.1 is in use; pass --mlflow-port with a free port" in result.stderr


def test_without_postgresql_the_error_says_how_to_install_it(monkeypatch):
    import tools.team_stack as team_stack

    monkeypatch.setattr(team_stack.shutil, "which", lambda name: None)
    monkeypatch.setattr(team_stack.glob, "glob", lambda pattern: [])
    with pytest.raises(SegpipeError, match=r"initdb, postgres\) are not on this machine.*apt-get install postgresql"):
        team_stack.postgres_bin()


def test_a_missing_python_part_is_named_with_the_requirement_to_install(monkeypatch):
    import tools.team_stack as team_stack

    monkeypatch.setitem(team_stack.PYTHON_PARTS, "segpipe_no_such_module.server", "no-such-server[extra]")
    with pytest.raises(SegpipeError, match=r"needs no-such-server\[extra\] in this environment: "
                                           r"pip install 'no-such-server\[extra\]'"):
        team_stack.check_python_parts()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to another user")
def test_as_root_a_folder_postgres_cannot_reach_is_named_with_the_fix(tmp_path):
    try:
        postgres_bin()
    except SegpipeError as exc:
        pytest.skip(f"this machine lacks PostgreSQL: {exc}")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    stack = TeamStack(private / "stack", mlflow_port=0, s3_port=0, postgres_port=0)
    with pytest.raises(SegpipeError, match=r"PostgreSQL refuses to run as root, so it runs as the user '\w+', who may "
                                           r"not enter .* \(chmod o\+x .*\) or pass --dir"):
        stack.start()
    assert stack.services == {}
