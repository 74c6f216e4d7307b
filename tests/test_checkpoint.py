import pytest
import torch

from segpipe.checkpoint import Checkpointer, load_checkpoint, model_from_checkpoint
from segpipe.errors import SegpipeError
from segpipe.models import create_model


def test_best_follows_validation_miou_and_last_carries_the_training_state(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet", 3, "avg", 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    checkpoints = Checkpointer(tmp_path / "model.pt", tmp_path / "last.pt")
    x = torch.randn(1, 3, 16, 16)
    state = {"optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()}}

    assert checkpoints.save(model, 0.5, state, epoch=1, data={"classes": ["a", "b", "c"]})
    model.eval()
    with torch.no_grad():
        expected = model(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert not checkpoints.save(model, 0.4, state, epoch=2)  # worse: best stays at epoch 1
    assert checkpoints.save(model, None, state, epoch=3) is False

    best, last = load_checkpoint(tmp_path / "model.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["epoch"] == 1 and best["data"] == {"classes": ["a", "b", "c"]} and "optimizer" not in best
    assert last["epoch"] == 3 and last["best_miou"] == 0.5
    assert last["optimizer"]["param_groups"][0]["lr"] == 0.01 and torch.equal(last["rng"]["torch"], torch.get_rng_state())
    with torch.no_grad():
        assert torch.allclose(model_from_checkpoint(best)(x), expected, atol=1e-6)


def test_a_missing_or_foreign_checkpoint_is_named(tmp_path):
    with pytest.raises(SegpipeError, match=r"model.pt not found; run the train stage first"):
        load_checkpoint(tmp_path / "model.pt")
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SegpipeError, match=r"model.pt is not a readable segpipe checkpoint"):
        load_checkpoint(tmp_path / "model.pt")
