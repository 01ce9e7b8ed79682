"""Small helpers shared by the technique tests."""

import torch

import pare
from pare.evaluate import predict_proba
from pare.models.config import ModelConfig
from pare.recipes.schema import TrainConfig


def trained(split, name=None, factory=None, epochs=6, lr=3e-3, seed=0, **args):
    """A model built from the zoo (or a factory) and trained briefly on ``split``."""
    torch.manual_seed(seed)
    cfg = ModelConfig(name=name, factory=factory, args=args)
    model = pare.build_model(cfg, split.input_shape, split.num_classes)
    pare.fit(model, split.train, split.val, TrainConfig(epochs=epochs, lr=lr, patience=None), seed=seed)
    return model.eval()


def accuracy(model, part) -> float:
    return float((predict_proba(model, part.X).argmax(1) == part.y.numpy()).mean())


# A recipe that runs in seconds (iris, an 8-wide MLP, no resampling, few timings): what the
# reliability tests mutate, kill and damage.
TINY_RECIPE = {
    "name": "tiny",
    "data": {"source": "iris"},
    "model": {"name": "mlp", "args": {"width": 8}},
    "train": {"epochs": 1, "batch_size": 16},
    "evaluate": {"bootstrap": 0, "latency_batch": 4, "latency_repeats": 5, "onnx": False},
}
