"""Text generation from a pretrained causal LM: one greedy loop with a KV cache, used by the
run's cost (prefill latency, decode tokens/s), the report (the same prompts answered by every
stage) and ``pare generate``.

The loop is written out rather than calling ``model.generate`` so that prefill (the prompt in
one pass, filling the cache) and decode (one token per pass, reading the cache) are timed apart:
they are what a user of LLMs reads, and they scale differently (prefill is compute-bound,
decode reads every weight once per token).
"""

from __future__ import annotations

import inspect
import time

import torch
import torch.nn as nn

DEFAULT_PROMPTS = (
    "The with statement is used to",
    "A list comprehension consists of",
)


def causal_backbone(model: nn.Module) -> nn.Module | None:
    """The transformers model inside pare's ``CausalLM`` wrapper (None: no KV cache to use)."""
    from pare.models.hf import CausalLM

    return model.model if isinstance(model, CausalLM) else None


@torch.inference_mode()
def greedy(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 32, batch: int = 1) -> dict:
    """Greedy continuation of ``prompt`` with a KV cache: the text, token counts, prefill
    milliseconds and decode tokens per second (the threads in force). ``batch`` > 1 runs the
    prompt in that many rows at once (equal rows: no padding, each row's text is the first's)
    and counts the tokens of every row: the throughput of serving that many requests together."""
    lm = causal_backbone(model)
    if lm is None:
        raise TypeError(f"{type(model).__name__} is not a pretrained causal LM (pare.models.hf.CausalLM)")
    lm.eval()
    # transformers 5 names the cache argument and output `cache`; 4.x `past_key_values`
    key = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    ids = torch.as_tensor([tokenizer(prompt)["input_ids"]] * batch, dtype=torch.long)
    eos = tokenizer.eos_token_id
    lm(input_ids=ids, use_cache=True)  # warm-up: first calls allocate and pick kernels
    start = time.perf_counter()
    out = lm(input_ids=ids, use_cache=True)
    prefill = time.perf_counter() - start
    new = []
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    start = time.perf_counter()
    while True:
        new.append(int(token[0]))
        if len(new) >= max_new_tokens or (eos is not None and new[-1] == eos):
            break
        out = lm(input_ids=token, use_cache=True, **{key: getattr(out, key)})
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    decode = time.perf_counter() - start
    steps = len(new) - 1  # the first new token came from the prefill pass
    return {
        "prompt": prompt,
        "text": tokenizer.decode(new, skip_special_tokens=True),
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": len(new),
        "batch": batch,
        "prefill_ms": prefill * 1000,
        "decode_tokens_per_s": batch * steps / decode if steps and decode > 0 else None,
        "threads": torch.get_num_threads(),
    }
