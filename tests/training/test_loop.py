import dataclasses

import pytest
import torch

from pare.errors import PareError
from pare.models import build_model
from pare.models.config import ModelConfig
from pare.recipes.schema import TrainConfig
from pare.training import Hook, fit, loss_and_accuracy, lr_find


def mlp(split, seed=0):
    torch.manual_seed(seed)
    return build_model(
        ModelConfig(name="mlp", args={"width": 32, "depth": 1}), split.input_shape, split.num_classes
    )


def test_fit_learns_digits(digits_split):
    model = mlp(digits_split)
    history = fit(model, digits_split.train, digits_split.val, TrainConfig(epochs=5, lr=0.01, patience=None))
    assert len(history.epochs) == 5
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"] / 3
    assert loss_and_accuracy(model, digits_split.test)[1] > 0.9


def test_fit_is_reproducible(digits_split):
    cfg = TrainConfig(epochs=2, patience=None)
    runs = []
    for _ in range(2):
        model = mlp(digits_split)
        fit(model, digits_split.train, digits_split.val, cfg, seed=3)
        runs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_early_stopping_restores_best_epoch(digits_split):
    # A learning rate this high makes validation loss bounce; the kept weights must be the best epoch's.
    model = mlp(digits_split)
    cfg = TrainConfig(epochs=30, lr=0.05, optimizer="sgd", momentum=0.99, schedule="none", patience=3)
    history = fit(model, digits_split.train, digits_split.val, cfg)
    best = min(e["val_loss"] for e in history.epochs)
    assert history.epochs[history.best_epoch - 1]["val_loss"] == pytest.approx(best)
    assert loss_and_accuracy(model, digits_split.val)[0] == pytest.approx(best, rel=1e-5)
    if history.stopped_early:
        assert len(history.epochs) == history.best_epoch + 3


def test_schedules(digits_split):
    # the rate recorded for epoch 2 is the one it starts with: half-way down the cosine, one step down
    for schedule, expected in (("cosine", 0.005), ("step", 0.005), ("none", 0.01)):
        cfg = TrainConfig(epochs=2, lr=0.01, schedule=schedule, step_size=1, gamma=0.5, patience=None)
        history = fit(mlp(digits_split), digits_split.train, digits_split.val, cfg)
        assert history.epochs[-1]["lr"] == pytest.approx(expected, abs=1e-6), schedule


class Recorder(Hook):
    """Counts calls and adds an L2 penalty: the hook points later techniques use."""

    def __init__(self):
        self.calls = {"start": 0, "context": 0, "before": 0, "after": 0, "epoch": 0, "end": 0}

    def on_train_start(self, state):
        self.calls["start"] += 1

    def forward_context(self, state):
        self.calls["context"] += 1
        return super().forward_context(state)

    def before_step(self, state):
        self.calls["before"] += 1

    def loss_terms(self, state):
        return {"l2": 1e-3 * sum((p**2).sum() for p in state.model.parameters())}

    def after_step(self, state):
        self.calls["after"] += 1

    def on_epoch_end(self, state, record):
        self.calls["epoch"] += 1

    def on_train_end(self, state):
        self.calls["end"] += 1


def test_hooks_called_and_loss_terms_logged(digits_split):
    hook = Recorder()
    cfg = TrainConfig(epochs=2, batch_size=100, patience=None)
    history = fit(mlp(digits_split), digits_split.train, digits_split.val, cfg, hooks=[hook])
    steps = 2 * -(-len(digits_split.train) // 100)
    assert hook.calls == {"start": 1, "context": steps, "before": steps, "after": steps, "epoch": 2, "end": 1}
    assert all(e["l2"] > 0 for e in history.epochs)


def test_divergence_is_a_clear_error(digits_split):
    class Explode(Hook):
        def loss_terms(self, state):
            return {"bad": torch.tensor(float("nan"))}

    with pytest.raises(PareError, match=r"the loss became nan at epoch 1, step 0; lower train.lr"):
        fit(mlp(digits_split), digits_split.train, digits_split.val, TrainConfig(epochs=1), hooks=[Explode()])


def test_lr_find_suggests_a_rate_and_leaves_model_alone(digits_split):
    model = mlp(digits_split)
    before = [p.clone() for p in model.parameters()]
    result = lr_find(model, digits_split.train, dataclasses.replace(TrainConfig(), optimizer="sgd"), steps=80)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert 1e-6 <= result["suggested_lr"] <= 1.0
    # the loss falls somewhere in the range: the smoothed minimum is well below the start
    assert min(result["losses"]) < 0.8 * result["losses"][0]
