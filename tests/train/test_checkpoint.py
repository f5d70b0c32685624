import pytest
import torch

from scalelab.train import checkpoint
from scalelab.train.checkpoint import CheckpointError, TrainState


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))


def test_round_trip_pointers_and_pruning(tmp_path):
    net, optimizer = model(), None
    for step in (10, 20, 30):
        checkpoint.save(tmp_path, checkpoint.step_name(step), net, optimizer, TrainState(step=step))
        checkpoint.mark(tmp_path, checkpoint.LATEST, checkpoint.step_name(step))
        if step == 10:
            checkpoint.mark(tmp_path, checkpoint.BEST, checkpoint.step_name(step))
        checkpoint.prune(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000010", "step-00000030"]
    latest = checkpoint.resolve(tmp_path)
    assert checkpoint.load_state(latest).step == 30
    other = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    checkpoint.load_weights(latest, other)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values(),
                                                  strict=True))


def test_incomplete_checkpoints_are_never_loaded(tmp_path):
    assert checkpoint.resolve(tmp_path / "missing") is None
    (tmp_path / ".step-00000005.tmp-123").mkdir()
    (tmp_path / "step-00000005").mkdir()  # no state.json: not complete
    checkpoint.mark(tmp_path, checkpoint.LATEST, "step-00000005")
    assert checkpoint.resolve(tmp_path) is None
    checkpoint.remove_leftovers(tmp_path)
    assert not (tmp_path / ".step-00000005.tmp-123").exists()


def test_corrupt_weights_fail_clearly(tmp_path):
    path = checkpoint.save(tmp_path, "step-00000001", model(), None, TrainState(step=1))
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable weights"):
        checkpoint.load_weights(path, model())
    with pytest.raises(CheckpointError, match="does not fit"):
        good = checkpoint.save(tmp_path, "step-00000002", model(), None, TrainState(step=2))
        checkpoint.load_weights(good, torch.nn.Linear(3, 3))
