"""Text data that ships with Python: the documentation in ``pydoc_data.topics`` (79 topics,
about 465,000 characters of real English), cut into passages.

Retrieval pairs: each topic's prose sentences are grouped, in order, into chunks of
``chunk_sentences``; from each chunk one sentence (chosen with the seed) becomes the query and
the rest of the chunk its passage. At topic level there would be only 79 queries (one query =
1.3 points of Recall@1); chunks give over a thousand.
"""

from __future__ import annotations

import re

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


def load_pydoc_lm(context: int, vocab_size: int, seed: int, val: float, test: float):
    """Next-token windows of ``context`` tokens over pydoc_data's topics. Whole topics are held
    out (a seeded shuffle; test topics first, then validation, then training, by share of
    characters), and the tokenizer is learnt from the training topics only."""
    from pare.data.dataset import Dataset

    topics = pydoc_topics()
    names = list(topics)
    np.random.default_rng(seed).shuffle(names)
    total = sum(len(topics[n]) for n in names)
    held, parts = 0, []
    for n in names:
        parts.append("test" if held < test * total else "val" if held < (test + val) * total else "train")
        held += len(topics[n])
    tok = train_tokenizer([topics[n] for n, p in zip(names, parts) if p == "train"], vocab_size)
    windows = {"test": [], "val": [], "train": []}
    for n, p in zip(names, parts):
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
