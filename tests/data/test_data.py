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


def _write_idx(path, values: np.ndarray, gz: bool):
    import gzip

    header = (0x800 + values.ndim).to_bytes(4, "big") + b"".join(
        int(s).to_bytes(4, "big") for s in values.shape
    )
    raw = header + values.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _idx_folder(tmp_path, n_train=60, n_test=20):
    rng = np.random.RandomState(0)
    for prefix, n, gz in (("train", n_train, True), ("t10k", n_test, False)):
        labels = np.arange(n) % 3
        images = (labels[:, None, None] * 80 + rng.randint(0, 40, (n, 4, 4))).astype(np.uint8)
        suffix = ".gz" if gz else ""
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return tmp_path


def test_idx_folder_keeps_the_official_test_set_and_converts(tmp_path):
    from pare.data.idx import load_idx, read_idx

    folder = _idx_folder(tmp_path)
    ds = load_idx(folder, max_samples=None, val=0.25, seed=0, image_size=(8, 8), channels=3)
    assert ds.X.shape == (80, 3, 8, 8) and ds.part_sizes == (20, 15)
    test_images = read_idx(folder / "t10k-images-idx3-ubyte", 3)
    assert np.allclose(ds.X[:20, 0, ::2, ::2].mean(), test_images.mean() / 255, atol=0.05)  # t10k first
    assert np.array_equal(ds.X[:, 0], ds.X[:, 2])  # grey repeated into three channels
    split = split_dataset(ds, val=0.25, test=0.2, seed=0, standardize=False)
    assert split.sizes() == {"n_train": 45, "n_val": 15, "n_test": 20}
    small = load_idx(folder, max_samples=40, val=0.25, seed=0)
    assert len(small.y) == 40 and small.part_sizes[0] == 10 and set(np.bincount(small.y)) <= {13, 14}


def test_idx_damage_is_named(tmp_path):
    from pare.data.idx import load_idx

    folder = _idx_folder(tmp_path)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 8)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: not an IDX file of 1-dimensional"):
        load_idx(folder, max_samples=None, val=0.25, seed=0)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"no t10k-labels-idx1-ubyte\[.gz\]"):
        load_idx(folder, max_samples=None, val=0.25, seed=0)


@pytest.mark.skipif(
    not __import__("pare.data.idx", fromlist=["FASHION_MNIST"]).FASHION_MNIST.is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_the_debian_package():
    from pare.data import load_dataset
    from pare.recipes.schema import DataConfig

    ds = load_dataset(DataConfig(source="fashion_mnist", max_samples=1400), seed=0)
    n_test, n_val = ds.part_sizes
    assert ds.X.shape == (1400, 1, 28, 28) and n_test == 200  # 10,000 of 70,000 are the test set
    assert list(np.bincount(ds.y[:n_test])) == [20] * 10  # stratified
    assert ds.classes[0] == "T-shirt/top" and 0.2 < ds.X.mean() < 0.4


def test_max_samples_is_only_for_idx_sources():
    from pare.errors import ConfigError
    from pare.recipes import recipe_from_dict

    with pytest.raises(ConfigError, match="data.max_samples: only the IDX sources"):
        recipe_from_dict({"data": {"source": "digits", "max_samples": 500}})
    with pytest.raises(ConfigError, match="data.path: source 'idx' needs a path"):
        recipe_from_dict({"data": {"source": "idx"}})
