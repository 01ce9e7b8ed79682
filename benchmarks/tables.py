"""The benchmark tables of README.md and docs/, written from benchmarks/results/*.json.

Each table sits between two marker lines in a Markdown file:

    <!-- table: NAME -->
    ...generated, never edited by hand...
    <!-- end table: NAME -->

Under each table: the run it came from (commit, date, machine, seconds) and, when the code that
run exercised (the files recorded in its provenance) has changed since, a STALE warning.

    python benchmarks/tables.py           # rewrite the tables in place
    python benchmarks/tables.py --check   # exit 1 if a file differs from what would be written

Standard library only: this folder holds transformers.py, which would shadow the library.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = [ROOT / "README.md", ROOT / "docs" / "memory.md"]  # the files that hold generated tables
MARKER = re.compile(r"<!-- table: (?P<name>[\w-]+) -->\n.*?<!-- end table: (?P=name) -->", re.S)


# ---- git ---------------------------------------------------------------------------------------


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def changed_since(commit: str, sources: list[str]) -> list[str] | None:
    """Files among ``sources`` that differ between ``commit`` and the working tree (None: the
    commit is not in this repository)."""
    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return None
    if not sources:
        return []
    diff = git("diff", "--name-only", commit, "--", *sources)
    return sorted(diff.stdout.split())


# ---- formatting --------------------------------------------------------------------------------


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def num(v, fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def ci(value, interval, fmt: str = "{:.4f}", inner: str = "{:.3f}") -> str:
    if interval is None:
        return num(value, fmt)
    return f"{fmt.format(value)} [{inner.format(interval[0])}, {inner.format(interval[1])}]"


def points(delta, interval) -> str:
    """A difference of shares in percentage points, with its interval."""
    if interval is None:
        return f"{100 * delta:+.2f} pt"
    return f"{100 * delta:+.2f} pt [{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]"


def size(b) -> str:
    if b is None:
        return "—"
    return f"{b / 1e6:.1f} MB" if b >= 1e6 else f"{b / 1e3:.1f} KB"


def mib(b) -> str:
    return "—" if b is None else f"{b / 2**20:.1f}"


def rel_error(a, b) -> str:
    return "—" if not b else f"{100 * (a / b - 1):+.1f} %"


def tool(r: dict) -> str:
    """A peer's rows say so; the fp32 reference is nobody's method."""
    return r["tool"] if r["tool"] == "pare" or r["name"] == "fp32" else f"{r['tool']} (peer)"


def targets_table(result: dict, prefix: str = "") -> str:
    rows = [
        [t["name"], t["goal"], f"{t['value']:.3f}", "met" if t["met"] else "**missed**"]
        for t in result["targets"]
        if t["name"].startswith(prefix)
    ]
    return md_table(["target", "goal", "value", ""], rows)


# ---- one function per table: (result JSON) -> Markdown -------------------------------------------


def quantization(r: dict) -> str:
    rows = []
    for row in r["rows"]:
        lat = row["latency_ms_by_batch"][row["runtime"]]
        acc = row["metrics"]
        rows.append(
            [
                row["model"],
                row["name"],
                tool(row),
                ci(acc["accuracy"], acc.get("accuracy_ci95")),
                str(row["size_bytes"]),
                num(row["size_ratio"]),
                row["runtime"],
                num(lat["batch_1"], "{:.3f}"),
                num(lat["batch_64"], "{:.2f}"),
                num(row["latency_ratio_batch_1"]),
                num(row["latency_ratio_batch_64"]),
            ]
        )
    header = ["model", "variant", "tool", "accuracy [95 % CI]", "bytes", "size ×", "runs in"]
    header += ["b1 ms", "b64 ms", "speed-up b1", "speed-up b64"]
    return md_table(header, rows) + "\n\n" + targets_table(r)


def pruning(r: dict) -> str:
    rows = [
        [
            row["name"],
            tool(row),
            ci(row["metrics"]["accuracy"], row["metrics"].get("accuracy_ci95")),
            num(row["macs_ratio"]),
            num(row["params_ratio"]),
            num(row["size_ratio"]),
            num(row["latency_ratio_torch"]),
            num(row["latency_ratio_torch_channels_last"]),
            num(row["latency_ratio_onnxruntime"]),
        ]
        for row in r["rows"]
    ]
    header = ["variant", "tool", "accuracy [95 % CI]", "MACs ×", "params ×", "size ×"]
    header += ["torch NCHW", "torch channels_last", "ORT"]
    return md_table(header, rows) + "\n\n" + targets_table(r)


def distillation(r: dict) -> str:
    students = [row for row in r["rows"] if "accuracy_std" in row["metrics"]]
    rows = [
        [
            row["name"],
            f"{row['metrics']['accuracy']:.4f} ± {row['metrics']['accuracy_std']:.4f}",
            "—"
            if row["name"] == "scratch"
            else points(row["delta_vs_scratch"], row["delta_vs_scratch_ci95"]),
            f"{row['params']:,}",
        ]
        for row in students
    ]
    n = len(r.get("seeds", []))
    out = md_table(
        [f"student ({n} seeds)", "test accuracy mean ± std", "vs scratch [95 % CI]", "params"], rows
    )
    pipeline = [row for row in r["rows"] if "candidates" in row]
    prows = [
        [
            row["name"],
            str(c["finetune_epochs"]),
            f"{c['val_accuracy']:.4f}",
            f"{c['metrics']['accuracy']:.4f}",
            num(c["size_ratio"]),
            "chosen" if c["finetune_epochs"] == row["finetune_epochs"] else "",
        ]
        for row in pipeline
        for c in row["candidates"]
    ]
    header = ["pipeline", "fine-tuning epochs", "val accuracy", "test accuracy", "size ×", ""]
    return out + "\n\n" + md_table(header, prows) + "\n\n" + targets_table(r)


def _of(r: dict, model: str) -> list[dict]:
    return [row for row in r["rows"] if row["model"] == model]


def transformers_minilm(r: dict) -> str:
    rows = []
    for row in _of(r, "minilm"):
        m = row["metrics"]
        rows.append(
            [
                row["name"],
                tool(row),
                f"{m['recall_at_1']:.4f}",
                "—" if row["name"] == "fp32" else points(m["recall_at_1_delta"], m["recall_at_1_delta_ci95"]),
                f"{m['recall_at_10']:.4f}",
                f"{m['mrr']:.4f}",
                f"{m['embedding_cosine']:.4f} / {m['embedding_cosine_min']:.4f}",
                size(row["size_bytes"]),
                num(row["size_ratio"]),
                num(row["latency_ratio"]),
            ]
        )
    header = ["variant", "tool", "Recall@1", "Δ Recall@1 [95 % CI]", "Recall@10", "MRR"]
    header += ["cosine to fp32 (mean / min)", "size", "size ×", "speed × (ORT, 32×128)"]
    return (
        md_table(header, rows) + "\n\n" + targets_table(r, "MiniLM") + "\n\n" + targets_table(r, "pare int8")
    )


def transformers_gpt(r: dict) -> str:
    rows = _of(r, "gpt")
    base = rows[0]["metrics"]["perplexity"]
    table = [
        [
            row["name"],
            f"{row['metrics']['perplexity']:.3f}",
            "—" if row["name"] == "fp32" else f"{row['metrics']['perplexity'] - base:+.3f}",
            size(row["size_bytes"]),
            num(row["size_ratio"]),
        ]
        for row in rows
    ]
    return (
        md_table(["variant", "perplexity", "increase", "size", "size ×"], table)
        + "\n\n"
        + targets_table(r, "GPTQ")
    )


def transformers_lora(r: dict) -> str:
    rows = [
        [
            row["name"],
            tool(row),
            ci(row["metrics"]["accuracy"], row["metrics"].get("accuracy_ci95")),
            f"{100 * row['trainable_share']:.2f} % ({row['trainable_params']:,})",
            size(row["adapter_bytes"]),
            f"{row['seconds']:.0f}",
        ]
        for row in _of(r, "minilm+head")
    ]
    header = ["variant", "tool", "accuracy [95 % CI]", "trainable", "adapter file", "seconds"]
    return md_table(header, rows) + "\n\n" + targets_table(r, "LoRA")


def memory(r: dict) -> str:
    rows = []
    for row in r["rows"]:
        est = row["estimate"]
        rows.append(
            [
                row["name"],
                ", ".join(f"{k} {v}" for k, v in row["setup"].items()),
                mib(est),
                mib(row["measured_tensors"]),
                rel_error(est, row["measured_tensors"]),
                mib(row["measured_rss"]),
                rel_error(est, row["measured_rss"]),
                mib(row["measured_cuda"]),
                rel_error(est, row["measured_cuda"]),
                mib(row["simple_formula"]),
                mib(row["accelerate_rule"]),
            ]
        )
    header = ["configuration", "setup", "estimate", "measured tensors", "error", "RSS growth", "vs RSS"]
    header += ["CUDA max allocated", "vs CUDA", "simple formula", "accelerate rule"]
    return md_table(header, rows) + "\n\n" + targets_table(r)


def lm_quality(m: dict, baseline: bool) -> list[str]:
    """Perplexity, its increase, KL and same-top-token share (the last three against the
    baseline, which has none of its own)."""
    return [
        ci(m["perplexity"], m.get("perplexity_ci95"), "{:.2f}", "{:.2f}"),
        "—"
        if baseline
        else ci(m["perplexity_increase"], m.get("perplexity_delta_ci95"), "{:+.3f}", "{:+.3f}"),
        "—" if baseline else f"{m['kl_divergence']:.4f}",
        "—" if baseline else f"{100 * m['same_top_token']:.1f} %",
    ]


def llm(r: dict) -> str:
    rows = []
    for row in r["rows"]:
        m = row["metrics"]
        baseline = "kl_divergence" not in m
        rows.append(
            [
                row["name"],
                tool(row),
                row["runtime"],
                *lm_quality(m, baseline),
                size(row["size_bytes"]),
                f"{row['size_ratio']:.2f}×",
                f"{row['prefill_ms']:.0f}" if row["prefill_ms"] else "—",
                f"{row['decode_tokens_per_s']:.1f} ({row['decode_ratio']:.2f}×)"
                if row["prefill_ms"]
                else "—",
                f"{row['batched_tokens_per_s']:.1f} ({row['batched_ratio']:.2f}×)"
                if row.get("batched_ratio")
                else "—",
                size(row.get("generation_peak_bytes")),
                f"{row['seconds']:.0f}" if row["seconds"] is not None else "—",
                size(row.get("quantize_peak_bytes")),
            ]
        )
    batch = r.get("setup", {}).get("batch", 8)
    header = ["variant", "tool", "runtime", "perplexity [95 % CI]", "increase [95 % CI]", "KL", "same top"]
    header += [
        "file",
        "smaller",
        "prefill ms",
        "decode tokens/s (× fp32, same runtime)",
        f"decode at batch {batch}, tokens/s (×)",
        "generation peak RSS",
        "quantize + export s",
        "quantize peak RSS",
    ]
    not_run = "\n".join(f"- {what}: {why}" for what, why in r.get("not_run", {}).items())
    mem = r.get("calibration_memory")
    on_disk = (
        f"GPTQ 4-bit with the blocks on disk, in a process of its own: max_memory {size(mem['max_memory_bytes'])}"
        f" (half the fp32 checkpoint's {size(mem['fp32_bytes'])}), planned {size(mem['planned_bytes'])}, "
        f"activations {'on disk' if mem['activations_on_disk'] else 'in memory'}; peak RSS "
        f"{size(mem['peak_above_start_bytes'])} above the process's before any weight was read; codes "
        f"{'equal to' if mem['codes_equal'] else 'DIFFERENT from'} GPTQ in memory ({mem['layers']} layers); "
        f"{mem['seconds']:.0f} s\n\n"
        if mem
        else ""
    )
    return (
        md_table(header, rows)
        + "\n\n"
        + on_disk
        + targets_table(r)
        + ("\n\nNot run yet:\n\n" + not_run if not_run else "")
    )


def llm_pruning(r: dict) -> str:
    rows = []
    base_decode = r["rows"][0].get("decode_tokens_per_s")
    for row in r["rows"]:
        m = row["metrics"]
        dense = row["seconds"] is None
        error = row["reconstruction_error"]
        decode = row.get("decode_tokens_per_s")
        rows.append(
            [
                row["name"],
                *lm_quality(m, dense),
                f"{row['nonzero_params'] / 1e6:.1f} M",
                size(row["size_bytes"]),
                f"{row['size_ratio']:.2f}×" if row.get("size_ratio") else "—",
                "—"
                if error is None
                else f"{error:.4f} (magnitude {row['magnitude_reconstruction_error']:.4f})",
                f"{decode:.1f} ({decode / base_decode:.2f}×)" if decode and base_decode else "—",
                f"{row['prefill_ms']:.0f}" if row.get("prefill_ms") else "—",
                f"{row['seconds']:.0f}" if row["seconds"] is not None else "—",
            ]
        )
    header = ["variant", "perplexity [95 % CI]", "increase [95 % CI]", "KL", "same top", "non-zero"]
    header += ["file", "smaller", "layer error (same inputs)", "decode tokens/s (× dense)", "prefill ms"]
    header += ["stage s"]
    not_run = "\n".join(f"- {what}: {why}" for what, why in r.get("not_run", {}).items())
    memory = ""
    if "lora_memory" in r:
        m = r["lora_memory"]
        step = m["setup"]
        memory = (
            f"LoRA healing step (rank {step['lora_rank']}, AdamW, batch {step['batch_size']} × "
            f"{step['seq_len']} tokens): `pare estimate-memory` {mib(m['estimate'])} MiB, measured "
            f"{mib(m['measured_tensors'])} MiB of tensors ({100 * m['error']:+.1f} %), peak RSS "
            f"+{mib(m['rss_peak_increase'])} MiB.\n\n"
        )
    return (
        md_table(header, rows)
        + "\n\n"
        + memory
        + targets_table(r)
        + ("\n\nNot run here:\n\n" + not_run if not_run else "")
    )


# table name -> (results file stem, renderer)
def vision(r: dict) -> str:
    rows = []
    for row in r["rows"]:
        lat = row["latency_ms_by_batch"]
        torch_ms, ort_ms = lat.get("torch", {}), lat.get("onnxruntime", {})
        rows.append(
            [
                row["name"],
                tool(row),
                ci(row["metrics"]["accuracy"], row["metrics"].get("accuracy_ci95")),
                num(row["macs_ratio"]),
                size(row["size_bytes"]),
                num(row["size_ratio"]),
                row["runtime"],
                num(torch_ms.get("batch_1")),
                num(torch_ms.get("batch_8")),
                num(ort_ms.get("batch_1")),
                num(ort_ms.get("batch_8")),
                num(row.get("speedup_ort_batch_8")),
            ]
        )
    header = ["variant", "tool", "accuracy [95 % CI]", "MACs ×", "bytes", "size ×", "ships in"]
    header += ["torch b1 ms", "torch b8 ms", "ORT b1 ms", "ORT b8 ms", "ORT ×, b8 (paired)"]
    return md_table(header, rows) + "\n\n" + targets_table(r)


def vision_photos(r: dict) -> str:
    rows = [
        [
            p["name"],
            tool(p),
            f"{len(p['photographs'])} photographs, {p['views']} views, {p['image_size']} px",
            f"{p['top1_agreement']:.4f}",
            f"{p['top5_agreement']:.4f}",
            f"{p['kl_divergence']:.4f}",
        ]
        for p in r["photos"]
    ]
    return md_table(
        ["ImageNet head in int8", "tool", "scored on", "top-1 agreement", "top-5 agreement", "KL"], rows
    )


TABLES: dict[str, tuple[str, Callable[[dict], str]]] = {
    "quantization": ("quantization", quantization),
    "pruning": ("pruning", pruning),
    "distillation": ("distillation", distillation),
    "transformers-minilm": ("transformers", transformers_minilm),
    "transformers-gpt": ("transformers", transformers_gpt),
    "transformers-lora": ("transformers", transformers_lora),
    "memory": ("memory", memory),
    "llm": ("llm", llm),
    "llm-pruning": ("llm_pruning", llm_pruning),
    "vision": ("vision", vision),
    "vision-photos": ("vision", vision_photos),
}


# ---- provenance and staleness -----------------------------------------------------------------


def stale(result: dict) -> list[str] | None:
    """The recorded source files that changed since the run (empty: up to date), or None when
    the run's commit is not in this repository."""
    prov = result["provenance"]
    return changed_since(prov["commit"], prov["sources"])


def footer(stem: str, result: dict) -> str:
    if not (result.get("provenance") or {}).get("commit"):
        return (
            f"**STALE**: `benchmarks/results/{stem}.json` records no commit (written before provenance "
            f"was recorded, or outside a git checkout); re-run `python benchmarks/{stem}.py --out "
            f"benchmarks/results/{stem}.json` in this repository."
        )
    prov, machine = result["provenance"], result["machine"]
    mode = "quick (smoke) run" if result["quick"] else "full run"
    dirty = ", with uncommitted changes" if prov["dirty"] else ""
    line = (
        f"<sub>From `benchmarks/results/{stem}.json`: {mode} at commit `{prov['commit'][:10]}`{dirty}, "
        f"{prov['started'][:10]}, {prov['seconds']:.0f} s; {machine['cpu']}, {machine['threads']} threads, "
        f"torch {machine['torch']}, ONNX Runtime {machine['onnxruntime']}, Python {machine['python']}.</sub>"
    )
    changed = stale(result)
    if changed is None:
        line += f"\n\n**STALE**: commit `{prov['commit'][:10]}` is not in this repository."
    elif changed:
        shown = ", ".join(f"`{f}`" for f in changed[:6]) + (
            f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        )
        line += (
            f"\n\n**STALE**: code this run exercised has changed since ({shown}); "
            f"re-run `python benchmarks/{stem}.py --out benchmarks/results/{stem}.json`."
        )
    return line


def load(stem: str) -> dict:
    return json.loads((RESULTS / f"{stem}.json").read_text())


def render(text: str) -> str:
    """``text`` with every marked table rewritten from its JSON."""
    runs: dict[str, tuple[dict, str]] = {}  # stem -> (result, footer): read and diffed once per file

    def one(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(f"unknown table {name!r} in a marker; known: {', '.join(TABLES)}")
        stem, fn = TABLES[name]
        if stem not in runs:
            result = load(stem)
            runs[stem] = result, footer(stem, result)
        result, foot = runs[stem]
        return f"<!-- table: {name} -->\n{fn(result)}\n\n{foot}\n<!-- end table: {name} -->"

    return MARKER.sub(one, text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--check", action="store_true", help="exit 1 if a file's tables are not what would be written"
    )
    args = p.parse_args()
    status = 0
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        new = render(text)
        if new == text:
            continue
        if args.check:
            status = 1
            rel = doc.relative_to(ROOT)
            sys.stdout.writelines(
                difflib.unified_diff(text.splitlines(True), new.splitlines(True), str(rel), "generated")
            )
        else:
            doc.write_text(new, encoding="utf-8")
            print(f"written: {doc.relative_to(ROOT)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
