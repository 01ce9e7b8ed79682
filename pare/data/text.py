"""Text data that ships with Python: the documentation in ``pydoc_data.topics`` (79 topics,
about 465,000 characters of real English), cut into passages.

Retrieval pairs: each topic's prose sentences are grouped, in order, into chunks of
``chunk_sentences``; from each chunk one sentence (chosen with the seed) becomes the query and
the rest of the chunk its passage. At topic level there would be only 79 queries (one query =
1.3 points of Recall@1); chunks give over a thousand.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pare.errors import DataError

_SENTENCE_END = re.compile(r"(?<=[.?!:])\s+(?=[A-Z(*\"'`])")


def pydoc_topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def prose_sentences(text: str, min_chars: int = 20) -> list[str]:
    """Sentences of a topic's prose paragraphs; code examples, grammar rules and headings are left out."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        stripped = para.strip()
        if ">>>" in para or "::=" in para or stripped.startswith(("*", "=", "-")):
            continue
        out += [s for s in _SENTENCE_END.split(" ".join(stripped.split())) if len(s) >= min_chars]
    return out


def sentence_chunks(sentences: list[str], size: int) -> list[list[str]]:
    """Consecutive runs of ``size`` sentences; a lone last sentence joins the run before it."""
    chunks = [sentences[i : i + size] for i in range(0, len(sentences), size)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        last = chunks.pop()
        chunks[-1] += last
    return [c for c in chunks if len(c) >= 2]


def retrieval_pairs(seed: int = 0, chunk_sentences: int = 3) -> tuple[list[str], list[str], list[str]]:
    """(queries, passages, topics): query ``i`` is a sentence cut out of passage ``i``'s chunk."""
    if chunk_sentences < 2:
        raise DataError(f"data.chunk_sentences: {chunk_sentences} leaves no passage; use 2 or more")
    rng = np.random.default_rng(seed)
    queries, passages, topics = [], [], []
    for topic, text in pydoc_topics().items():
        for chunk in sentence_chunks(prose_sentences(text), chunk_sentences):
            q = int(rng.integers(len(chunk)))
            queries.append(chunk[q])
            passages.append(" ".join(chunk[:q] + chunk[q + 1 :]))
            topics.append(topic)
    return queries, passages, topics


def tokenize(texts: list[str], tokenizer, max_length: int) -> np.ndarray:
    """Token ids (N, max_length), int64, padded with the tokenizer's pad id and truncated."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return enc["input_ids"].astype(np.int64)


def load_pydoc_retrieval(tokenizer, max_length: int, seed: int, chunk_sentences: int = 3):
    from pare.data.dataset import Dataset

    queries, passages, _ = retrieval_pairs(seed, chunk_sentences)
    X = np.stack(
        [tokenize(queries, tokenizer, max_length), tokenize(passages, tokenizer, max_length)], axis=1
    )
    return Dataset(name="pydoc-retrieval", X=X, y=np.arange(len(X)), classes=[], kind="retrieval")


def load_pydoc_topics(tokenizer, max_length: int, chunk_sentences: int = 3, min_passages: int = 15):
    """Text classification: which documentation topic a passage of ``chunk_sentences`` sentences
    comes from, over the topics with at least ``min_passages`` passages (20 topics, 909
    passages with the defaults)."""
    from pare.data.dataset import Dataset

    texts, labels = [], []
    per_topic = {t: sentence_chunks(prose_sentences(x), chunk_sentences) for t, x in pydoc_topics().items()}
    classes = [t for t, chunks in per_topic.items() if len(chunks) >= min_passages]
    for label, topic in enumerate(classes):
        texts += [" ".join(c) for c in per_topic[topic]]
        labels += [label] * len(per_topic[topic])
    X = tokenize(texts, tokenizer, max_length)
    return Dataset(name="pydoc-topics", X=X, y=np.array(labels, dtype=np.int64), classes=classes)


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer learnt offline from ``texts`` (the training topics only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def held_out_parts(lengths: list[int], seed: int, val: float, test: float) -> list[tuple[int, str]]:
    """``(document index, part)`` in a seeded shuffled order: test documents first, validation
    next, the rest training, by share of characters (whole documents held out, never cut)."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    total, held, out = sum(lengths), 0, []
    for i in order.tolist():
        out.append((i, "test" if held < test * total else "val" if held < (test + val) * total else "train"))
        held += lengths[i]
    return out


def load_pydoc_lm(context: int, vocab_size: int, seed: int, val: float, test: float):
    """Next-token windows of ``context`` tokens over pydoc_data's topics, for a model trained
    here: whole topics held out (``held_out_parts``), the tokenizer learnt from the training
    topics only."""
    from pare.data.dataset import Dataset

    topics = pydoc_topics()
    names = list(topics)
    parts = [(names[i], p) for i, p in held_out_parts([len(topics[n]) for n in names], seed, val, test)]
    tok = train_tokenizer([topics[n] for n, p in parts if p == "train"], vocab_size)
    windows = {"test": [], "val": [], "train": []}
    for n, p in parts:
        ids = np.array(tok.encode(topics[n]).ids, dtype=np.int64)
        count = (len(ids) - 1) // context
        for i in range(count):
            windows[p].append(ids[i * context : i * context + context + 1])
    if not windows["test"] or not windows["val"] or not windows["train"]:
        raise DataError(
            f"data.max_length: {context} tokens leaves a part without windows; use a shorter context"
        )
    rows = np.stack(windows["test"] + windows["val"] + windows["train"])
    return Dataset(
        name="pydoc-lm",
        X=rows[:, :-1],
        y=rows[:, 1:],
        classes=[],
        kind="language_model",
        vocab=tok.get_vocab_size(),
        part_sizes=(len(windows["test"]), len(windows["val"])),
    )


IGNORE = -100  # a target position that is not scored (padding, or context scored by an earlier window)


def sliding_windows(ids: np.ndarray, length: int, stride: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The sliding-window protocol of perplexity: windows of ``length`` input tokens starting every
    ``stride`` tokens; each target token is scored once, in the first window that predicts it,
    with the rest of that window as context (earlier targets are ``IGNORE``). Returns inputs and
    targets (W, length), the last window padded."""
    xs, ys, scored, begin = [], [], 0, 0
    last = len(ids) - 1  # the last target's index
    while True:
        end = min(begin + length, last)  # inputs ids[begin:end], targets ids[begin + 1 : end + 1]
        x = np.full(length, pad_id, dtype=np.int64)
        y = np.full(length, IGNORE, dtype=np.int64)
        x[: end - begin] = ids[begin:end]
        y[: end - begin] = ids[begin + 1 : end + 1]
        y[: max(0, scored - begin)] = IGNORE  # targets up to ids[scored] were scored before
        xs.append(x)
        ys.append(y)
        scored = end
        if end >= last:
            return np.stack(xs), np.stack(ys)
        begin += stride


def next_token_dataset(
    documents: dict[str, str],
    tokenizer,
    name: str,
    *,
    max_length: int,
    stride: int | None,
    seed: int,
    val: float,
    test: float,
):
    """Next-token windows over whole documents held out by part (``held_out_parts``), tokenized
    with the pretrained model's own tokenizer. Test and validation windows slide by ``stride``
    (default ``max_length``: no overlap); training windows never overlap."""
    from pare.data.dataset import Dataset

    names = list(documents)
    parts = [(names[i], p) for i, p in held_out_parts([len(documents[n]) for n in names], seed, val, test)]
    missing = [p for p in ("train", "val", "test") if p not in {part for _, part in parts}]
    if missing:
        raise DataError(
            f"{name}: {len(names)} document(s) cannot fill the {'/'.join(missing)} part(s): whole documents "
            f"are held out; give more documents (files), or change val_fraction/test_fraction"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = {"test": [], "val": [], "train": []}
    for doc, part in parts:
        ids = np.asarray(tokenizer(documents[doc])["input_ids"], dtype=np.int64)
        if len(ids) < 2:
            continue  # nothing to predict
        step = max_length if part == "train" else stride or max_length
        rows[part].append(sliding_windows(ids, max_length, step, pad))
    X, y, sizes = [], [], []
    for part in ("test", "val", "train"):
        if not rows[part]:
            raise DataError(f"{name}: the {part} documents hold fewer than 2 tokens; give longer documents")
        X += [x for x, _ in rows[part]]
        y += [t for _, t in rows[part]]
        sizes.append(sum(len(x) for x, _ in rows[part]))
    return Dataset(
        name=name,
        X=np.concatenate(X),
        y=np.concatenate(y),
        classes=[],
        kind="language_model",
        vocab=len(tokenizer),
        part_sizes=(sizes[0], sizes[1]),
    )


TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
MIN_DOCUMENT_CHARS = 4000  # a single file is cut at blank lines into documents at least this long


def text_documents(path: str) -> dict[str, str]:
    """The documents of ``data.path``: every .txt/.md/.rst/.py file of a folder (one document
    each), or a single file cut at blank lines into runs of at least ``MIN_DOCUMENT_CHARS``."""
    root = Path(path).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"data.path: {str(root)!r} holds no {'/'.join(TEXT_SUFFIXES)} files")
    elif root.is_file():
        files = [root]
    else:
        raise DataError(f"data.path: {str(root)!r} does not exist; give a text file or a folder of them")
    docs = {}
    for f in files:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"data.path: {str(f)!r} is not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 4]!r}); "
                f"convert it (iconv -t utf-8) or remove it"
            ) from None
        if text.strip():
            docs[str(f.relative_to(root)) if root.is_dir() else f.name] = text
    if not docs:
        raise DataError(f"data.path: every file under {str(root)!r} is empty")
    if root.is_file():
        docs = _cut(next(iter(docs.values())), root.name)
    return docs


def _cut(text: str, name: str) -> dict[str, str]:
    pieces, current = [], []
    for para in re.split(r"\n\s*\n", text):
        current.append(para)
        if sum(len(p) for p in current) >= MIN_DOCUMENT_CHARS:
            pieces.append("\n\n".join(current))
            current = []
    if current:
        pieces.append("\n\n".join(current))
    return {f"{name}#{i}": p for i, p in enumerate(pieces)}
