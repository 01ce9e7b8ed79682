import numpy as np
import pytest
from PIL import Image

from pare.data import kfold_splits, load_builtin, load_csv, load_image_folder, load_npz, split_dataset
from pare.data.dataset import Dataset
from pare.errors import DataError


@pytest.mark.parametrize(
    "name,shape,n,k",
    [
        ("digits", (1, 8, 8), 1797, 10),
        ("breast_cancer", (30,), 569, 2),
        ("wine", (13,), 178, 3),
        ("iris", (4,), 150, 3),
    ],
)
def test_builtin_datasets_load_offline(name, shape, n, k):
    ds = load_builtin(name)
    assert ds.input_shape == shape and len(ds.y) == n and ds.num_classes == k


def test_split_is_stratified_seeded_and_sized():
    ds = load_builtin("digits")
    a = split_dataset(ds, val=0.15, test=0.2, seed=1, standardize=False)
    b = split_dataset(ds, val=0.15, test=0.2, seed=1, standardize=False)
    assert a.sizes() == {"n_train": 1167, "n_val": 270, "n_test": 360}
    assert np.array_equal(a.test.y.numpy(), b.test.y.numpy())
    # stratified: every class's share in test within one sample of its share overall
    overall = np.bincount(ds.y) / len(ds.y)
    test = np.bincount(a.test.y.numpy(), minlength=10)
    assert np.all(np.abs(test - overall * 360) <= 1.0)


def test_standardisation_fitted_on_train_only():
    ds = load_builtin("breast_cancer")
    s = split_dataset(ds, val=0.15, test=0.2, seed=0, standardize=True)
    assert np.allclose(s.train.X.numpy().mean(0), 0, atol=1e-4)
    assert np.allclose(s.train.X.numpy().std(0), 1, atol=1e-3)
    # held-out parts are transformed with the training statistics, so they are not exactly centred
    assert np.abs(s.test.X.numpy().mean(0)).max() > 0.01


def test_kfold_tests_every_sample_once():
    ds = load_builtin("iris")
    folds = kfold_splits(ds, folds=5, val=0.15, seed=0, standardize=False)
    assert len(folds) == 5
    assert sum(len(f.test) for f in folds) == 150
    sizes = {f.sizes()["n_test"] for f in folds}
    assert sizes == {30}


def test_nan_and_single_class_rejected():
    X = np.ones((10, 3), dtype=np.float32)
    X[4, 2] = np.nan
    with pytest.raises(
        DataError, match=r"1 NaN or infinite feature value\(s\), first at sample 4, feature index \(2,\)"
    ):
        Dataset("t", X, np.arange(10) % 2, ["a", "b"])
    with pytest.raises(
        DataError, match="every sample has the label 'a'; classification needs at least 2 classes"
    ):
        Dataset("t", np.ones((10, 3), dtype=np.float32), np.zeros(10, dtype=np.int64), ["a"])


def test_too_few_samples_per_class_for_split():
    ds = Dataset("tiny", np.random.rand(12, 2).astype(np.float32), np.array([0] * 10 + [1] * 2), ["a", "b"])
    with pytest.raises(DataError, match=r"class\(es\) 'b' \(2\) have fewer than 3 samples"):
        split_dataset(ds, val=0.15, test=0.2, seed=0, standardize=True)


def write_csv(path, rows):
    path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def test_csv_with_named_label_column(tmp_path):
    rows = [["x1", "species", "x2"]] + [[i, "cat" if i % 2 else "dog", i * 0.5] for i in range(20)]
    ds = load_csv(write_csv(tmp_path / "d.csv", rows), "species")
    assert ds.X.shape == (20, 2) and ds.classes == ["cat", "dog"]
    assert ds.y[0] == 1 and ds.X[3, 1] == 1.5


def test_csv_errors_name_file_line_column_and_fix(tmp_path):
    rows = [["a", "b", "label"], [1, 2, 0], [3, 4, 1]]
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(
        DataError, match=r"no column named 'lable' \(did you mean 'label'\?\); columns are 'a', 'b', 'label'"
    ):
        load_csv(path, "lable")
    bad = write_csv(tmp_path / "bad.csv", rows + [["x", 4, 1]])
    with pytest.raises(DataError, match=r"bad.csv, line 4, column 'a': 'x' is not a number"):
        load_csv(bad, "label")
    nan = write_csv(tmp_path / "nan.csv", rows + [["nan", 4, 1]])
    with pytest.raises(DataError, match=r"line 4, column 'a': 'nan' is missing or infinite"):
        load_csv(nan, "label")
    empty = write_csv(tmp_path / "empty_cell.csv", rows + [["", 4, 1]])
    with pytest.raises(DataError, match=r"line 4, column 'a': '' is not a number"):
        load_csv(empty, "label")
    with pytest.raises(DataError, match="CSV file .*missing.csv' does not exist; check data.path"):
        load_csv(tmp_path / "missing.csv", "label")


def test_csv_with_one_class(tmp_path):
    path = write_csv(tmp_path / "one.csv", [["a", "label"], [1, "yes"], [2, "yes"], [3, "yes"]])
    with pytest.raises(
        DataError, match=r"one.csv: every sample has the label 'yes'; classification needs at least 2"
    ):
        load_csv(path, "label")


def test_npz(tmp_path):
    np.savez(tmp_path / "ok.npz", X=np.random.rand(10, 4), y=np.arange(10) % 2)
    ds = load_npz(tmp_path / "ok.npz")
    assert ds.X.dtype == np.float32 and ds.classes == ["0", "1"]
    np.savez(tmp_path / "bad.npz", features=np.random.rand(10, 4), y=np.arange(10) % 2)
    with pytest.raises(DataError, match=r"missing array\(s\) X; found \['features', 'y'\]"):
        load_npz(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read as NPZ"):
        load_npz(tmp_path / "junk.npz")


def make_images(root, sizes=((12, 10),) * 6, classes=("circle", "square")):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.fromarray((np.random.rand(size[1], size[0], 3) * 255).astype(np.uint8)).save(
                root / c / f"{i}.png"
            )
    return root


def test_image_folder(tmp_path):
    root = make_images(tmp_path / "imgs")
    ds = load_image_folder(root, None, 1)
    assert ds.X.shape == (12, 1, 10, 12) and ds.classes == ["circle", "square"]
    assert ds.X.min() >= 0 and ds.X.max() <= 1
    rgb = load_image_folder(root, (8, 8), 3)
    assert rgb.X.shape == (12, 3, 8, 8)


def test_image_folder_sizes_must_match_unless_resized(tmp_path):
    root = make_images(tmp_path / "imgs", sizes=((12, 10), (12, 10), (16, 16)))
    with pytest.raises(
        DataError, match=r"2.png: size 16x16 differs from .*0.png \(12x10\); set data.image_size"
    ):
        load_image_folder(root, None, 1)
    assert load_image_folder(root, (8, 8), 1).X.shape == (6, 1, 8, 8)


def test_unreadable_image_named(tmp_path):
    root = make_images(tmp_path / "imgs")
    (root / "circle" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"broken.png: cannot read this image .*remove or replace the file"):
        load_image_folder(root, None, 1)
