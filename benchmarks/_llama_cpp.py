"""llama.cpp (through llama-cpp-python) running a GGUF file, called like the transformers model
so that pare's ``CausalLM`` wrapper, the language-model task and ``pare.generate.greedy`` run it
unchanged: ``input_ids`` in, ``.logits`` out; the cache is llama.cpp's own state (one sequence),
so windows are run one after another and decoding continues the last sequence. Used by
``benchmarks/llm.py`` as the speed reference for the GGUF file SmolLM2 ships in.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


class LlamaCppLM:
    def __init__(self, path: Path, threads: int, context: int = 512):
        from llama_cpp import Llama

        # logits_all: every position's logits, which perplexity windows need
        self.llm = Llama(
            model_path=str(path),
            n_ctx=context,
            n_batch=context,
            n_threads=threads,
            logits_all=True,
            verbose=False,
        )

    def eval(self) -> LlamaCppLM:
        return self

    def forward(self, input_ids, attention_mask=None, use_cache=False, past_key_values=None):
        """Right-padded windows need no mask: causal attention keeps every real token from
        seeing the padding after it. ``past_key_values`` is only a marker: llama.cpp holds the
        sequence so far."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if past_key_values is None:  # new sequences: each run from an empty state
            rows = []
            for row in ids:
                self.llm.reset()
                self.llm.eval(row.tolist())
                rows.append(np.array(self.llm.scores[: len(row)]))
            logits = np.stack(rows)
        else:
            if ids.shape[0] != 1:
                raise ValueError("llama.cpp continues one sequence: batch 1 only")
            self.llm.eval(ids[0].tolist())
            n = self.llm.n_tokens
            logits = np.array(self.llm.scores[n - ids.shape[1] : n])[None]
        return SimpleNamespace(
            logits=torch.from_numpy(logits.astype(np.float32)),
            past_key_values=self.llm.n_tokens if use_cache else None,
        )

    __call__ = forward
