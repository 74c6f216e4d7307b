"""The typed checkpoints: what a model file holds, the one loader every consumer uses,
and the errors a foreign or mismatched file gets instead of a traceback."""

import pytest
import torch
import yaml

from segpipe.data.processed import DatasetInfo
from segpipe.errors import SegpipeError
from segpipe.models import ModelSpec, create_model
from segpipe.models.checkpoint import ModelCheckpoint, load_model_checkpoint
from segpipe.training.resume import ResumeState
from tests.conftest import REPO_ROOT

INFO = DatasetInfo("shapes", ["a", "b", "c"], 255, {"by": "shorter_side", "to": 16}, [0.5] * 3, [0.25] * 3)


def checkpoint_of(spec: ModelSpec, info: DatasetInfo = INFO) -> tuple[ModelCheckpoint, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model(spec)
    return ModelCheckpoint(spec, model.state_dict(), info, (16, 16), 3, {"miou": 0.5}), model.eval()


def test_a_model_checkpoint_round_trips_and_rebuilds_the_same_model(tmp_path):
    checkpoint, model = checkpoint_of(ModelSpec("unet", 3, "avg", 4))
    checkpoint.save(tmp_path / "model.pt")
    loaded = load_model_checkpoint(tmp_path / "model.pt")
    assert loaded.spec == checkpoint.spec and loaded.data == INFO and loaded.epoch == 3 and loaded.input_shape == (16, 16)
    x = torch.randn(1, 3, 16, 20)
    with torch.no_grad():
        assert torch.allclose(loaded.build_model()(x), model(x), atol=1e-6)
    # Nothing machine-local: the same weights give the same bytes.
    checkpoint.save(tmp_path / "again.pt")
    assert (tmp_path / "model.pt").read_bytes() == (tmp_path / "again.pt").read_bytes()
    assert "mlflow" not in str(sorted(torch.load(tmp_path / "model.pt", weights_only=True)))


def test_a_missing_or_foreign_checkpoint_is_named(tmp_path):
    with pytest.raises(SegpipeError, match=r"model.pt not found; run the train stage first"):
        load_model_checkpoint(tmp_path / "model.pt")
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SegpipeError, match=r"model.pt is not a readable segpipe checkpoint"):
        load_model_checkpoint(tmp_path / "model.pt")
    torch.save({"format": 1, "model": {}}, tmp_path / "old.pt")
    with pytest.raises(SegpipeError, match=r"old.pt has checkpoint format 1, expected 2; retrain it"):
        load_model_checkpoint(tmp_path / "old.pt")


def test_weights_of_another_model_or_class_count_are_named_not_a_traceback(tmp_path):
    checkpoint, _ = checkpoint_of(ModelSpec("unet", 3, "avg", 4))
    other, _ = checkpoint_of(ModelSpec("fcn", 5, "avg", 4))
    swapped = ModelCheckpoint(checkpoint.spec, other.state, INFO, (16, 16), 1, {})
    with pytest.raises(SegpipeError, match=r"model.pt: its weights do not fit a unet with 3 classes .*retrain it"):
        swapped.build_model(source=tmp_path / "model.pt")
    unknown = ModelCheckpoint(ModelSpec("resnet", 3, "avg", 4), checkpoint.state, INFO, (16, 16), 1, {})
    with pytest.raises(SegpipeError, match=r"holds a model 'resnet' that this version of segpipe does not know"):
        unknown.build_model(source="model.pt")


def test_a_model_trained_on_other_classes_is_refused_for_this_data():
    checkpoint, _ = checkpoint_of(ModelSpec("cnn", 3, "max", 4))
    checkpoint.check_data(INFO, "model.pt")
    four = DatasetInfo("shapes", ["a", "b", "c", "d"], 255, INFO.resize, INFO.mean, INFO.std)
    with pytest.raises(SegpipeError, match=r"model.pt was trained on classes \['a', 'b', 'c'\] \(3\), but data/processed "
                                           r"holds \['a', 'b', 'c', 'd'\] \(4\): retrain it"):
        checkpoint.check_data(four, "model.pt")


def test_the_resume_state_carries_everything_a_resume_needs(tmp_path):
    checkpoint, model = checkpoint_of(ModelSpec("cnn", 3, "max", 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(5)
    state = ResumeState("abc", 2, model.state_dict(), optimizer.state_dict(), {"last_epoch": 7}, {}, 
                        {"torch": torch.get_rng_state(), "generator": generator.get_state()},
                        [{"epoch": 1, "val_miou": None}, {"epoch": 2, "val_miou": 0.4}], checkpoint, "run1", "name", 12.5)
    state.save(tmp_path / "state.pt")
    loaded = ResumeState.load(tmp_path / "state.pt")
    assert (loaded.fingerprint, loaded.epoch, loaded.mlflow_run_id, loaded.started) == ("abc", 2, "run1", 12.5)
    assert loaded.history == state.history and loaded.scheduler == {"last_epoch": 7}
    assert loaded.best.spec == checkpoint.spec and torch.equal(loaded.rng["generator"], generator.get_state())
    assert loaded.optimizer["param_groups"][0]["lr"] == 0.01


def test_the_resume_fingerprint_covers_the_pretrained_weights_bytes(tmp_path):
    from segpipe.config import parse_params
    from segpipe.training.resume import training_fingerprint

    params = parse_params(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    (tmp_path / "data").mkdir()
    (tmp_path / "data/summary.json").write_text("{}")
    code = [REPO_ROOT / "stages/train.py"]
    same = training_fingerprint(params, tmp_path / "data", code, "a" * 64)
    # A DVC-tracked weights file that changed under the same model.weights starts over instead of resuming.
    assert same == training_fingerprint(params, tmp_path / "data", code, "a" * 64)
    assert same != training_fingerprint(params, tmp_path / "data", code, "b" * 64)
    assert same != training_fingerprint(params, tmp_path / "data", code, None)
