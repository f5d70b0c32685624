import numpy as np
import pytest

from scalelab.errors import DataError
from scalelab.train.batches import WindowBatches


class View:
    def __init__(self, n):
        self.tokens = np.arange(n, dtype=np.uint16)
        self.n_tokens = n

    def __len__(self):
        return self.n_tokens

    def __getitem__(self, index):
        return self.tokens[index]


def test_every_token_is_a_target_once_per_epoch():
    batches = WindowBatches(View(1001), context_length=10, batch_size=7, seed=3)
    assert batches.num_windows == 100 and batches.steps_per_epoch == 15
    targets = np.concatenate([batches.batch(0, s)[:, 1:].numpy().ravel() for s in range(batches.steps_per_epoch)])
    assert sorted(targets.tolist()) == list(range(1, 1001))
    assert batches.batch(0, 14).shape == (2, 11)


def test_order_depends_on_seed_and_epoch_only():
    a, b = WindowBatches(View(500), 10, 4, seed=1), WindowBatches(View(500), 10, 4, seed=1)
    assert np.array_equal(a.order(2), b.order(2))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), WindowBatches(View(500), 10, 4, seed=2).order(0))


def test_short_views_shrink_the_window():
    batches = WindowBatches(View(5), context_length=256, batch_size=4, seed=0)
    assert batches.context_length == 4 and batches.batch(0, 0).shape == (1, 5)
    with pytest.raises(DataError):
        WindowBatches(View(1), 8, 2, seed=0)


def test_repeated_views(prepared):
    view = prepared.repeated(300, 1200)
    batches = WindowBatches(view, context_length=50, batch_size=8, seed=0)
    rows = np.concatenate([batches.batch(0, s).numpy() for s in range(batches.steps_per_epoch)])
    assert rows.shape[0] == batches.num_windows == 23
    unique = np.asarray(prepared.train().tokens[:300])
    assert np.array_equal(view[0:300], unique)
