"""Datasets: built-in (scikit-learn, offline; Fashion-MNIST where Debian installed it) and user
files (CSV, NPZ, image folders, IDX)."""

from pare.data.dataset import Dataset, Part, Split, kfold_splits, split_dataset
from pare.data.loaders import BUILTIN, load_builtin, load_csv, load_image_folder, load_npz, resize_images
from pare.errors import DataError


def load_dataset(cfg, seed: int = 0, tokenizer=None) -> Dataset:
    """The dataset a recipe's ``data`` section names (text sources need the model's tokenizer)."""
    if cfg.source == "pydoc_retrieval":
        from pare.data.text import load_pydoc_retrieval

        return load_pydoc_retrieval(tokenizer, cfg.max_length, seed, cfg.chunk_sentences)
    if cfg.source == "pydoc_topics":
        from pare.data.text import load_pydoc_topics

        return load_pydoc_topics(tokenizer, cfg.max_length, cfg.chunk_sentences)
    if cfg.source == "pydoc_lm":
        from pare.data.text import load_pydoc_lm

        return load_pydoc_lm(cfg.max_length, cfg.vocab_size, seed, cfg.val_fraction, cfg.test_fraction)
    if cfg.source in ("pydoc_text", "text"):
        from pare.data.text import next_token_dataset, pydoc_topics, text_documents

        docs = pydoc_topics() if cfg.source == "pydoc_text" else text_documents(cfg.path)
        return next_token_dataset(
            docs,
            tokenizer,
            "pydoc-text" if cfg.source == "pydoc_text" else f"text:{cfg.path}",
            max_length=cfg.max_length,
            stride=cfg.stride,
            seed=seed,
            val=cfg.val_fraction,
            test=cfg.test_fraction,
        )
    if cfg.source in ("idx", "fashion_mnist"):
        from pare.data.idx import FASHION_CLASSES, FASHION_MNIST, load_idx

        fashion = cfg.source == "fashion_mnist"
        if fashion and not FASHION_MNIST.is_dir():
            raise DataError(
                f"data.source: fashion_mnist reads {FASHION_MNIST}, which is absent; install it with "
                f"`apt-get install dataset-fashion-mnist`, or put the four IDX files in a folder and use "
                f"source: idx with that path"
            )
        return load_idx(
            FASHION_MNIST if fashion else cfg.path,
            max_samples=cfg.max_samples,
            val=cfg.val_fraction,
            seed=seed,
            image_size=cfg.image_size,
            channels=cfg.channels,
            classes=FASHION_CLASSES if fashion else None,
        )
    if cfg.source in BUILTIN:
        ds = load_builtin(cfg.source)
        return resize_images(ds, cfg.image_size) if cfg.image_size else ds
    if cfg.source == "csv":
        return load_csv(cfg.path, cfg.label_column)
    if cfg.source == "npz":
        return load_npz(cfg.path)
    return load_image_folder(cfg.path, cfg.image_size, cfg.channels)


def make_splits(cfg, seed: int, tokenizer=None) -> list[Split]:
    """One split, or one per fold when ``cv_folds`` is set."""
    ds = load_dataset(cfg, seed, tokenizer)
    if cfg.cv_folds:
        return kfold_splits(
            ds, folds=cfg.cv_folds, val=cfg.val_fraction, seed=seed, standardize=cfg.standardize
        )
    return [
        split_dataset(
            ds, val=cfg.val_fraction, test=cfg.test_fraction, seed=seed, standardize=cfg.standardize
        )
    ]


__all__ = ["Dataset", "Part", "Split", "load_dataset", "make_splits", "split_dataset", "kfold_splits"]
