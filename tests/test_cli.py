"""The command line: exit codes, one clear message per bad input, no traceback unless --debug."""

import json
import subprocess
import sys

import pytest
import yaml

from pare.cli import main


def write_recipe(tmp_path, recipe, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_recipes_lists_builtins(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "breast_cancer" in out and "wine_cv" in out


def test_validate_good_and_bad(tmp_path, capsys):
    assert main(["validate", "default"]) == 0
    assert "default: valid" in capsys.readouterr().out
    bad = write_recipe(tmp_path, {"data": {"source": "digts"}, "train": {"lr": -1, "epoch": 3}})
    assert main(["validate", bad]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err
    assert "data.source: 'digts' is not one of" in err and "(did you mean 'digits'?)" in err
    assert "train.lr: -1.0 must be > 0" in err
    assert "train.epoch: unknown key (did you mean 'epochs'?)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "data,message",
    [
        (
            {"source": "csv", "path": "nowhere.csv", "label_column": "y"},
            "CSV file 'nowhere.csv' does not exist",
        ),
        ({"source": "npz", "path": "missing.npz"}, "NPZ file 'missing.npz' does not exist"),
        ({"source": "image_folder", "path": "no_dir"}, "image folder 'no_dir' does not exist"),
    ],
)
def test_run_with_missing_data_fails_cleanly(tmp_path, capsys, data, message):
    path = write_recipe(tmp_path, {"data": data, "model": {"name": "mlp"}})
    assert main(["run", path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_debug_shows_the_traceback(tmp_path):
    path = write_recipe(
        tmp_path, {"data": {"source": "npz", "path": "missing.npz"}, "model": {"name": "mlp"}}
    )
    from pare.errors import DataError

    with pytest.raises(DataError):
        main(["--debug", "run", path, "--out", str(tmp_path / "out")])


def test_cnn_on_tabular_data_is_explained(tmp_path, capsys):
    path = write_recipe(tmp_path, {"data": {"source": "iris"}, "model": {"name": "cnn"}})
    assert main(["run", path, "--out", str(tmp_path / "out")]) == 2
    assert "model 'cnn' needs images" in capsys.readouterr().err


def test_run_summary_and_report_rebuild(tmp_path, capsys):
    recipe = {
        "name": "cli",
        "data": {"source": "iris"},
        "model": {"name": "mlp", "args": {"width": 16}},
        "train": {"epochs": 30, "batch_size": 16},
        "evaluate": {"bootstrap": 100, "latency_repeats": 5, "onnx": False},
    }
    path = write_recipe(tmp_path, recipe)
    out = tmp_path / "out"
    assert main(["run", path, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "baseline" in captured.out and "accuracy" in captured.out
    assert json.loads((out / "results.json").read_text())["recipe"]["name"] == "cli"
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists()
    assert main(["run", path, "--out", str(out)]) == 2  # would replace the run: refused
    assert "--resume" in capsys.readouterr().err


def test_lr_find_writes_plot_and_suggestion(tmp_path, capsys):
    assert main(["lr-find", "default", "--out", str(tmp_path), "--steps", "40"]) == 0
    assert "suggested learning rate" in capsys.readouterr().out
    assert (tmp_path / "lr_find.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "lr_find.json").read_text())["lrs"]) > 10


def test_console_script_exit_code_without_traceback(tmp_path):
    bad = write_recipe(tmp_path, {"model": {"name": "resnett"}})
    proc = subprocess.run([sys.executable, "-m", "pare.cli", "validate", bad], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "model.name: 'resnett' is not a zoo model (did you mean 'resnet'?)" in proc.stderr
    assert "Traceback" not in proc.stderr
