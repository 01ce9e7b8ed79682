"""Every bad input of issue 18's probe: a named error and exit status 2 from ``pare validate``
(which loads the data and builds the model as ``pare run`` does before training), never a
traceback, and nothing run that the recipe only named."""

import copy
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from pare.cli import main
from tests.helpers import TINY_RECIPE as TINY


def recipe_file(tmp_path, changes=None, stages=None, name="r.yaml"):
    recipe = copy.deepcopy(TINY)
    for path, value in (changes or {}).items():
        *parents, key = path.split(".")
        node = recipe
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = value
    if stages is not None:
        recipe["stages"] = stages
    out = tmp_path / name
    out.write_text(yaml.safe_dump(recipe))
    return str(out)


def validate(capsys, *args) -> str:
    code = main(["validate", *map(str, args)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


PRUNE = {"technique": "prune", "amount": 0.5}
QUANT = {"technique": "quantize", "mode": "weight_only", "bits": 4}


@pytest.mark.parametrize(
    "changes,stages,message",
    [
        (
            {},
            [{**PRUNE, "name": "x/../../../victim"}],
            "stages[0].name: 'x/../../../victim' is not a plain name",
        ),
        ({"name": "../../escape"}, None, "name: '../../escape' is not a plain name"),
        ({"name": ""}, None, "name: '' is not a plain name"),
        ({"name": "n" * 300}, None, "is not a plain name; use 1 to 64"),
        ({}, [{"technique": ["prune"]}], "stages[0].technique: unknown technique ['prune']"),
        ({}, [{"technique": {"a": 1}}], "stages[0].technique: unknown technique {'a': 1}"),
        (
            {"model": {"factory": "../evil:x"}},
            None,
            "'../evil:x' is not of the form 'package.module:function'",
        ),
        ({"model.args.width": -1}, None, "model.args.width: -1 is out of range for 'mlp'; use 1 to 16384"),
        ({"model.args.width": "abc"}, None, "model.args.width: expected a whole number, got 'abc'"),
        ({"model.args": {"dropout": 1.5}}, None, "model.args.dropout: 1.5 is out of range"),
        ({"model.args": {"depth": 1000}}, None, "model.args.depth: 1000 is out of range"),
        ({"seed": -1}, None, "seed: -1 must be >= 0"),
        ({"seed": 2**64}, None, f"seed: {2**64} must be < {2**32}"),
        (
            {"evaluate.bootstrap": 10**30},
            None,
            "evaluate.bootstrap: 1000000000000000000000000000000 must be <=",
        ),
        ({"evaluate.latency_batch": 10**30}, None, "evaluate.latency_batch:"),
        ({"train.lr": "inf"}, None, "train.lr: expected a finite number, got inf"),
        (
            {},
            [{**PRUNE, "layers": ["re:net.(1"]}],
            "stages[0].layers: 're:net.(1' is not a valid regular expression",
        ),
        (
            {},
            [{**QUANT, "overrides": {"net.1": {"bits": 99}}}],
            "stages[0].overrides.net.1.bits: 99 is out of range",
        ),
        (
            {},
            [{**QUANT, "overrides": {"net.1": {"scheme": "bogus"}}}],
            "stages[0].overrides.net.1.scheme: 'bogus' is not one of",
        ),
        ({"model": {"factory": "builtins:dict"}}, None, "'builtins:dict' is a type, not a model factory"),
        (
            {},
            [{"technique": "distill", "teachers": [{"stage": "nope"}]}],
            "stages[0].teachers[0].stage: 'nope' is not an earlier stage",
        ),
        (
            {"model": {"name": "cnn", "args": {"depth": 10}}, "data": {"source": "digits"}},
            None,
            "over the limit of",
        ),
        (
            {"model": {"name": "transformer", "args": {"dim": 10, "heads": 3}}},
            None,
            "dim=10 is not divisible by heads=3",
        ),
    ],
)
def test_validate_refuses_by_name(tmp_path, capsys, changes, stages, message):
    err = validate(capsys, recipe_file(tmp_path, changes, stages))
    assert message in err, err


def test_model_size_limit_can_be_raised(tmp_path, capsys):
    big = {"model": {"name": "mlp", "args": {"width": 4096, "depth": 3}, "max_params": 1000}}
    assert "set model.max_params above" in validate(capsys, recipe_file(tmp_path, big))
    big["model"]["max_params"] = 10**9
    assert main(["validate", recipe_file(tmp_path, big)]) == 0


def test_factory_named_in_a_recipe_is_not_run_by_validate(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    path = recipe_file(tmp_path, {"model": {"factory": "os:system", "args": {"command": f"touch {marker}"}}})
    assert "'os:system' is a builtin_function_or_method, not a model factory" in validate(capsys, path)
    assert main(["run", path, "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists()


def test_hf_name_does_not_import_the_module(tmp_path, capsys):
    sys.modules.pop("this", None)
    err = validate(capsys, recipe_file(tmp_path, {"model": {"hf": "this"}}))
    assert "'this' is neither a directory nor an installed package" in err
    assert "this" not in sys.modules


def test_safe_mode_refuses_factories_outside_the_allow_list(tmp_path, capsys, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch.nn as nn\ndef tiny(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PARE_SAFE", raising=False)
    path = recipe_file(tmp_path, {"model": {"factory": "mymodels:tiny"}})
    assert main(["validate", path]) == 0
    monkeypatch.setenv("PARE_SAFE", "1")
    assert "safe mode (PARE_SAFE) refuses to import 'mymodels'" in validate(capsys, path)
    monkeypatch.setenv("PARE_ALLOW", "mymodels")
    assert main(["validate", path]) == 0
    monkeypatch.delenv("PARE_SAFE")
    monkeypatch.delenv("PARE_ALLOW")
    assert main(["--safe", "validate", path]) == 2


ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
)


@pytest.mark.parametrize(
    "text,message",
    [
        (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9)"),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested deeper than a recipe can be"),
        (ALIAS_BOMB.encode(), "once aliases are expanded"),
        (b"data: {source: [unclosed\n", "not valid YAML"),
    ],
)
def test_recipe_file_read_safely(tmp_path, capsys, text, message):
    path = tmp_path / "r.yaml"
    path.write_bytes(text)
    assert message in validate(capsys, path)


def test_out_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    path = recipe_file(tmp_path)
    assert "--out: " in validate(capsys, path, "--out", tmp_path / "taken")
    assert main(["run", path, "--out", str(tmp_path / "taken")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "mine"


def test_language_model_data_needs_a_causal_model(tmp_path, capsys):
    changes = {
        "data": {"source": "pydoc_lm", "max_length": 32, "vocab_size": 300},
        "model": {"name": "transformer"},
    }
    assert "next-token logits" in validate(capsys, recipe_file(tmp_path, changes))


def _csv(tmp_path, body: bytes, name="d.csv"):
    (tmp_path / name).write_bytes(body)
    return {"data": {"source": "csv", "path": str(tmp_path / name), "label_column": "y"}}


def _npz(tmp_path, y, name="d.npz"):
    np.savez(tmp_path / name, X=np.random.default_rng(0).normal(size=(len(y), 3)), y=y)
    return {"data": {"source": "npz", "path": str(tmp_path / name)}}


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda t: _csv(t, b"a,y\n1,caf\xe9\n"), "not UTF-8 text"),
        (
            lambda t: {
                "data": {"source": "csv", "path": _npz(t, np.arange(4))["data"]["path"], "label_column": "y"}
            },
            "not UTF-8 text",
        ),
        (
            lambda t: {"data": {"source": "csv", "path": str(t), "label_column": "y"}},
            "is a folder, not a file",
        ),
        (lambda t: _csv(t, b"a,y\n1,0\n2,NaN\n3,1\n"), "line 3: the label column 'y' is missing ('NaN')"),
        (lambda t: _npz(t, np.array([0.0, 1.0, np.nan, 1.0])), "y holds 1 missing or infinite label(s)"),
        (
            lambda t: _npz(t, np.array(["a", "b", "nan", "a"])),
            "y holds 1 missing label(s) ('nan' at index 2)",
        ),
        (lambda t: _npz(t, np.zeros((4, 2))), "y has shape (4, 2), expected one label per sample"),
    ],
)
def test_bad_data_is_named(tmp_path, capsys, make, message):
    assert message in validate(capsys, recipe_file(tmp_path, make(tmp_path)))


def test_bad_weights_are_named(tmp_path, capsys):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"net.1.weight": torch.zeros(3, 3), "net.1.bias": torch.zeros(3)}, str(wrong))
    err = validate(capsys, recipe_file(tmp_path, {"model.weights": str(wrong)}))
    assert "2 tensor(s) have the wrong shape for this model" in err
    assert "net.1.weight: file (3, 3), model (8, 4)" in err
    text = tmp_path / "string.pt"
    torch.save("not weights", text)
    assert "expected a state dict of tensors, got str" in validate(
        capsys, recipe_file(tmp_path, {"model.weights": str(text)})
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["estimate-memory", "--batch-size", "-5"],
        ["estimate-memory", "--batch-size", "0"],
        ["estimate-memory", "--seq-len", "-1"],
        ["estimate-memory", "--lora-rank", "0"],
        ["lr-find", "--steps", "-3"],
        ["auto", "--trials", "0"],
        ["search", "--trials", "x"],
    ],
)
def test_command_line_counts_are_checked(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "is below" in err or "is not a whole number" in err


def test_search_objectives_are_checked(tmp_path, capsys):
    assert main(["search", "default", "--objectives", "quality,bogus", "--out", str(tmp_path)]) == 2
    assert "unknown: 'bogus'" in capsys.readouterr().err
