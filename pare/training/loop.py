"""The one training loop: mini-batches, optimizer, schedule, early stopping, hooks."""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from pare.data import Part
from pare.errors import PareError
from pare.progress import console, progress_bar
from pare.seeding import seed_everything
from pare.tasks import get_task
from pare.training import distributed
from pare.training.hooks import Hook, TrainState


@dataclass
class History:
    """Per-epoch records (train/val loss and accuracy, learning rate, extra loss terms)."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
        }


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer, cfg, steps_per_epoch: int):
    # Stepped once per batch so short runs still anneal smoothly.
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, cfg.epochs * steps_per_epoch)
        )
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma
        )
    return None


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None):
    """Row indices of each mini-batch; shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def batches(part: Part, batch_size: int, generator: torch.Generator | None = None):
    """Mini-batches of an in-memory part; shuffled when a generator is given."""
    for idx in batch_indices(len(part), batch_size, generator):
        yield part.X[idx], part.y[idx]


@torch.no_grad()
def loss_and_accuracy(
    model: nn.Module, part: Part, batch_size: int = 512, task: str = "classification"
) -> tuple[float, float]:
    """Mean loss and accuracy (for retrieval: in-batch top-1) of ``model`` on ``part``."""
    return get_task(task).loss_and_accuracy(model, part, batch_size)


def fit(
    model: nn.Module,
    train: Part,
    val: Part,
    cfg,
    *,
    hooks: list[Hook] | tuple = (),
    seed: int = 0,
    description: str = "train",
    params=None,
    task: str = "classification",
) -> History:
    """Train ``model`` in place with ``cfg`` (a TrainConfig); returns the history.

    With ``cfg.patience`` set, training stops when validation loss has not improved for that
    many epochs and the weights of the best epoch are restored. ``params`` restricts what the
    optimizer updates (e.g. only adapters). ``task`` names the loss (see ``pare.tasks``).
    """
    t = get_task(task)
    generator = seed_everything(seed)
    optimizer = make_optimizer(
        params if params is not None else [p for p in model.parameters() if p.requires_grad], cfg
    )
    run = _Run(
        task=t,
        state=TrainState(model=model, optimizer=optimizer, config=cfg),
        hooks=list(hooks),
        forward=distributed.wrap(model),  # under torchrun: gradients averaged over the processes
        scheduler=make_scheduler(optimizer, cfg, -(-len(train) // cfg.batch_size)),
        description=description,
        processes=distributed.world()[1],
    )
    history = History()
    best_loss, best_state, bad_epochs = float("inf"), None, 0
    start = time.perf_counter()
    for h in hooks:
        h.on_train_start(run.state)
    with progress_bar(description, cfg.epochs) as bar:
        for epoch in range(cfg.epochs):
            run.state.epoch = epoch
            epoch_lr = optimizer.param_groups[0]["lr"]  # the rate this epoch starts with
            sums = run.epoch(train, generator)
            val_loss, val_acc = loss_and_accuracy(model, val, task=task)
            n = sums.pop("n")
            record = {
                "epoch": epoch + 1,
                "train_loss": sums.pop("loss") / n,
                "train_accuracy": sums.pop("correct") / n,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": epoch_lr,
                **{k: v / n for k, v in sums.items()},  # each hook's loss term
            }
            history.epochs.append(record)
            for h in hooks:
                h.on_epoch_end(run.state, record)
            bar.advance(1, loss=record["train_loss"], val_loss=val_loss, val_acc=val_acc)
            if val_loss < best_loss - 1e-6:
                best_loss, bad_epochs, history.best_epoch = val_loss, 0, epoch + 1
                if cfg.patience:
                    best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
                if cfg.patience and bad_epochs >= cfg.patience:
                    history.stopped_early = True
                    break
    if best_state is not None and history.best_epoch != len(history.epochs):
        model.load_state_dict(best_state)
    for h in hooks:
        h.on_train_end(run.state)
    model.eval()
    history.seconds = time.perf_counter() - start
    _print_summary(history, cfg, description)
    return history


@dataclass
class _Run:
    """What one call of ``fit`` trains with, so an epoch and a step can be their own functions."""

    task: object
    state: TrainState
    hooks: list[Hook]
    forward: object
    scheduler: object
    description: str
    processes: int

    def epoch(self, train: Part, generator) -> dict:
        """One pass over ``train``: sums of task loss, hits, samples and each hook's loss terms."""
        self.state.model.train()
        sums = {"loss": 0.0, "correct": 0, "n": 0}
        for full in batch_indices(len(train), self.state.config.batch_size, generator):
            idx = distributed.shard(full)
            task_loss, terms = self.step(train.X[idx], train.y[idx], idx, len(full))
            n = len(idx)
            sums["loss"] += task_loss * n
            sums["correct"] += self.task.hits(self.state.outputs, self.state.targets)
            sums["n"] += n
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value * n
        return sums

    def step(self, X, y, idx, full_batch: int) -> tuple[float, dict[str, float]]:
        """Forward, loss (task loss weighted, plus the hooks' terms), backward, optimizer step."""
        state, t, cfg = self.state, self.task, self.state.config
        state.inputs, state.targets, state.indices = t.inputs(X), y, idx
        for h in self.hooks:
            h.before_step(state)
        with contextlib.ExitStack() as stack:
            for h in self.hooks:
                stack.enter_context(h.forward_context(state))
            state.outputs = self.forward(state.inputs)
        task_loss = t.loss(state.outputs, state.targets)
        loss, terms = state.task_weight * task_loss, {}
        for h in self.hooks:
            for name, term in h.loss_terms(state).items():
                loss = loss + term
                terms[name] = terms.get(name, 0.0) + term.item()
        if not torch.isfinite(loss):
            raise PareError(
                f"{self.description}: the loss became {loss.item()} at epoch {state.epoch + 1}, step {state.step}; "
                f"lower train.lr (now {cfg.lr}) or check the data for extreme values"
            )
        state.optimizer.zero_grad(set_to_none=True)
        # DDP averages the processes' gradients; weighting each by its share of the batch makes
        # that the whole batch's mean even when the shares differ (last batch)
        (loss * (self.processes * len(idx) / full_batch)).backward()
        state.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        state.step += 1
        for h in self.hooks:
            h.after_step(state)
        return task_loss.item(), terms


def _print_summary(history: History, cfg, description: str) -> None:
    if history.epochs:
        kept = history.epochs[(history.best_epoch or len(history.epochs)) - 1 if cfg.patience else -1]
        stop = ", stopped early" if history.stopped_early else ""
        console.print(
            f"  {description}: {len(history.epochs)} epochs in {history.seconds:.1f}s{stop}; kept epoch "
            f"{kept['epoch']}: val loss {kept['val_loss']:.4f}, val accuracy {kept['val_accuracy']:.4f}"
        )
