"""Training and distillation under torchrun (two processes, gloo on CPU) against one process."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

RECIPE = {
    "name": "ddp",
    "data": {"source": "breast_cancer"},
    "model": {"name": "mlp", "args": {"width": 32, "depth": 2}},
    # an even batch: the two processes take equal halves, so their averaged gradient is the batch's
    "train": {"epochs": 5, "batch_size": 32, "optimizer": "sgd", "lr": 0.05, "patience": None},
    "evaluate": {"bootstrap": 0, "latency_repeats": 5, "onnx": False},
    "stages": [
        {"technique": "distill", "name": "student", "student": {"name": "mlp", "args": {"width": 16}}}
    ],
}


def run(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_train_and_distill_like_one(tmp_path):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run([sys.executable, "-m", "pare.cli", "run", str(recipe), "--out", str(tmp_path / "one")], env)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29533",
    ]
    run([*torchrun, "-m", "pare.cli", "run", str(recipe), "--out", str(tmp_path / "two")], env)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    for a, b in zip(one["stages"], two["stages"]):
        assert a["name"] == b["name"]
        assert b["metrics"]["accuracy"] == pytest.approx(a["metrics"]["accuracy"], abs=0.01)
        assert b["history"]["epochs"][-1]["val_loss"] == pytest.approx(
            a["history"]["epochs"][-1]["val_loss"], rel=1e-3
        )
        wa = load_file(tmp_path / "one" / a["artifact"])
        wb = load_file(tmp_path / "two" / b["artifact"])
        for k in wa:
            assert (wa[k] - wb[k]).abs().max() < 1e-4, k
