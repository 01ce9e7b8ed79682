"""report.md and report.html from results.json and the stages' saved predictions.

The report is built once as a list of blocks (headings, paragraphs, tables, figures) and
rendered twice: Markdown that links the PNGs, and one self-contained HTML file with the PNGs
embedded. ``pare report DIR`` rebuilds both from a finished run.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from pare.io import atomic_write_text, inside, load_predictions
from pare.metrics import roc_curves
from pare.reporting import plots
from pare.reporting.format import fmt_bytes, fmt_count, fmt_delta, fmt_metric, fmt_ms
from pare.reporting.summary import NAMES, header, stage_warnings, summary_rows
from pare.reporting.summary import metric_names as summary_metric_names
from pare.tasks import get_task


def build(results: dict, out: Path) -> list[tuple]:
    """Blocks: ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", path, caption)."""
    plot_dir = out / "plots"
    inside(out, plot_dir)  # a link planted there must not lead the plots outside the run folder
    blocks = _overview(results, plot_dir) + _training(results, plot_dir) + _quality(results, out, plot_dir)
    blocks += _cost(results) + _generation(results)
    blocks.append(("h", 2, "What each stage did"))
    for i, s in enumerate(results["stages"][1:], start=1):
        blocks += _stage_info_blocks(s, plot_dir / f"sensitivity-{i:02d}.png")
    return blocks


def _overview(results: dict, plot_dir: Path) -> list[tuple]:
    """Title, data and machine, the comparison table, and quality against size."""
    task, m = results["task"], results["machine"]
    classes = task["classes"]
    what = f"{len(classes)} classes" if task["kind"] == "classification" else task["kind"].replace("_", " ")
    folds = (
        f"; {task['cv_folds']}-fold cross-validation (mean ± std over folds)" if task.get("cv_folds") else ""
    )
    headline = summary_metric_names(results)[0]
    label = NAMES.get(headline, headline)
    points = [(s["name"], s["cost"]["size_bytes"], s["metrics"][headline]) for s in results["stages"]]
    return [
        ("h", 1, f"pare report: {results['recipe']['name']}"),
        (
            "p",
            f"Dataset **{task['dataset']}** ({what}): {task['n_train']} train, {task['n_val']} validation, "
            f"{task['n_test']} test samples{folds}. Seed {results['seed']}. pare {results['pare_version']}"
            f"{_commit(results)}, torch {m['torch']}, ONNX Runtime {m['onnxruntime']}, {m['threads']} threads "
            f"on {m['cpu']}.",
        ),
        ("h", 2, "Every stage against the baseline"),
        (
            "p",
            "Quality on the test split with bootstrap 95 % intervals; Δ is the paired difference to the baseline "
            "on the same samples. Ratios are baseline ÷ stage (higher is better). Latency is the median at "
            "batch 1, in torch and in ONNX Runtime, each against the baseline in the same runtime; *ships* names "
            "the runtime of the stage's artifact (a quantized stage's torch latency is pare's simulation of it).",
        ),
        ("table", header(results), summary_rows(results)),
        *[("p", f"**Warning**, {name}: {text}") for name, text in stage_warnings(results)],
        ("img", plots.pareto_plot(points, label, plot_dir / "pareto.png"), f"{label} against artifact size"),
    ]


def _training(results: dict, plot_dir: Path) -> list[tuple]:
    """Training curves, how the baseline's training ended, and its diagnosis."""
    stages, base = results["stages"], results["stages"][0]
    blocks: list[tuple] = [("h", 2, "Training")]
    histories = {s["name"]: s["history"] for s in stages if s.get("history") and s["history"].get("epochs")}
    if histories:
        blocks.append(("img", plots.training_curves(histories, plot_dir / "training.png"), "Training curves"))
        h = base.get("history") or {}
        if h.get("epochs"):
            stop = "stopped early" if h.get("stopped_early") else "ran every epoch"
            blocks.append(
                (
                    "p",
                    f"Baseline: {len(h['epochs'])} epochs in {h['seconds']:.1f} s ({stop}); weights of "
                    f"epoch {h.get('best_epoch')} kept (lowest validation loss).",
                )
            )
    diag = base.get("diagnosis")
    if diag:
        verdict = "; ".join(diag["notes"]) or "no sign of over- or underfitting"
        blocks.append(("p", f"Baseline diagnosis: {diag['summary']}: {verdict}."))
    return blocks


def _quality(results: dict, out: Path, plot_dir: Path) -> list[tuple]:
    """Every metric of every stage, the paired deltas, then what the task adds (curves, classes, folds)."""
    stages, task = results["stages"], results["task"]
    names = get_task(task["kind"]).report_metrics(stages[0]["metrics"], task["classes"])
    rows = [
        [s["name"]] + [fmt_metric(s["metrics"], k, std=s.get("metrics_std"), digits=4) for k in names]
        for s in stages
    ]
    blocks: list[tuple] = [("h", 2, "Quality"), ("table", ["stage", *names], rows)]
    if len(stages) > 1:
        shown = summary_metric_names(results)
        deltas = [[s["name"]] + [fmt_delta(s.get("comparison", {}), k) for k in shown] for s in stages[1:]]
        titles = [f"Δ {NAMES.get(k, k)}" + (" [95 % CI]" if i == 0 else "") for i, k in enumerate(shown)]
        if any("embedding_cosine" in s.get("comparison", {}) for s in stages[1:]):  # embeddings moved how far
            titles.append("embedding cosine to baseline (mean / min)")
            for row, s in zip(deltas, stages[1:]):
                c = s.get("comparison", {})
                cos = c.get("embedding_cosine")
                row.append("—" if cos is None else f"{cos:.4f} / {c['embedding_cosine_min']:.4f}")
        if any("same_top_token" in s.get("comparison", {}) for s in stages[1:]):  # next-token fidelity
            titles += ["KL divergence to baseline [95 % CI]", "same top token [95 % CI]"]
            for row, s in zip(deltas, stages[1:]):
                c = s.get("comparison", {})
                row.append(_with_ci(c, "kl_divergence", "{:.4f}"))
                row.append(_with_ci(c, "same_top_token", "{:.2%}"))
        if any("top5_agreement" in s.get("comparison", {}) for s in stages[1:]):  # fidelity to the baseline
            titles += ["top-1 / top-5 agreement with baseline", "KL divergence to baseline"]
            for row, s in zip(deltas, stages[1:]):
                c = s.get("comparison", {})
                agree = c.get("top5_agreement") is not None
                row.append(f"{c['top1_agreement']:.2%} / {c['top5_agreement']:.2%}" if agree else "—")
                row.append(f"{c['kl_divergence']:.4f}" if agree else "—")
        blocks.append(("table", ["stage", *titles], deltas))
    return blocks + _class_blocks(results, out, plot_dir) + _fold_blocks(results)


def _with_ci(comparison: dict, name: str, pattern: str) -> str:
    value = comparison.get(name)
    if value is None:
        return "—"
    ci = next((comparison[k] for k in comparison if k.startswith(f"{name}_ci")), None)
    text = pattern.format(value)
    return f"{text} [{pattern.format(ci[0])}, {pattern.format(ci[1])}]" if ci else text


def _class_blocks(results: dict, out: Path, plot_dir: Path) -> list[tuple]:
    """ROC curves from the stages' saved class probabilities, confusion matrices, per-class scores."""
    stages, classes = results["stages"], results["task"]["classes"]
    blocks: list[tuple] = []
    curves = {}
    for s in stages if get_task(results["task"]["kind"]).outputs_are_probabilities else ():
        folds = load_predictions(inside(out, out.joinpath(*Path(s["artifact"]).parts[:2])))  # stages/NN-name
        if folds:
            curves[s["name"]] = roc_curves(*folds[0], classes)
    if any(curves.values()):
        blocks.append(("img", plots.roc_plot(curves, plot_dir / "roc.png"), "ROC curves (test split)"))
    for s in (stages[0], stages[-1]) if len(stages) > 1 else (stages[0],):
        cm = s.get("details", {}).get("confusion_matrix")
        if cm:
            path = plots.confusion_plot(
                cm, classes, f"confusion: {s['name']}", plot_dir / f"confusion-{s['name']}.png"
            )
            blocks.append(("img", path, f"Confusion matrix of {s['name']}"))
    per_class = stages[0].get("details", {}).get("per_class", {})
    if per_class:
        rows = [
            [c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"])]
            for c, v in per_class.items()
        ]
        blocks.append(("p", "Baseline per class:"))
        blocks.append(("table", ["class", "precision", "recall", "F1", "support"], rows))
    return blocks


def _fold_blocks(results: dict) -> list[tuple]:
    folds = results["task"].get("cv_folds")
    if not folds:
        return []
    headline = results["task"].get("headline") or "accuracy"
    rows = [[s["name"], *[f"{f[headline]:.4f}" for f in s.get("folds", [])]] for s in results["stages"]]
    return [
        ("p", f"{NAMES.get(headline, headline)} per fold:"),
        ("table", ["stage", *[f"fold {i + 1}" for i in range(folds)]], rows),
    ]


def _generation(results: dict) -> list[tuple]:
    """The same prompts continued by every stage, side by side, with prefill and decode speed."""
    stages = [s for s in results["stages"] if "generation" in s["cost"]]
    if not stages:
        return []
    first = stages[0]["cost"]["generation"]["prompts"]
    blocks: list[tuple] = [
        ("h", 2, "Generation"),
        (
            "p",
            f"Greedy continuations with a KV cache, each stage in the runtime it ships in "
            f"({first[0]['threads']} threads, batch 1): prefill is the prompt in one pass, decode one "
            "token per pass.",
        ),
    ]
    for i, prompt in enumerate(first):
        rows = []
        for s in stages:
            g = s["cost"]["generation"]["prompts"][i]
            speed = g["decode_tokens_per_s"]
            rows.append(
                [
                    s["name"],
                    s["cost"]["generation"]["runtime"],
                    "".join(c if c.isprintable() else "�" for c in " ".join(g["text"].split())) or "—",
                    f"{g['prompt_tokens']} tokens in {g['prefill_ms']:.0f} ms",
                    "—" if speed is None else f"{speed:.1f} tokens/s",
                ]
            )
        blocks += [
            ("p", f"Prompt {i + 1}: *{prompt['prompt']}*"),
            ("table", ["stage", "runtime", "continuation", "prefill", "decode"], rows),
        ]
    batched = [(s, s["cost"]["generation"].get("batched")) for s in stages]
    batched = [(s, g) for s, g in batched if g]  # runs from before batched throughput was measured
    if batched:
        b = batched[0][1]
        blocks += [
            (
                "p",
                f"Throughput: prompt 1 in {b['batch']} rows at once ({b['prompt_tokens']} tokens each, "
                f"{b['new_tokens']} new), decode tokens/s counting every row.",
            ),
            (
                "table",
                ["stage", "runtime", "prefill", "decode"],
                [
                    [
                        s["name"],
                        s["cost"]["generation"]["runtime"],
                        f"{g['batch']} × {g['prompt_tokens']} tokens in {g['prefill_ms']:.0f} ms",
                        "—"
                        if g["decode_tokens_per_s"] is None
                        else f"{g['decode_tokens_per_s']:.1f} tokens/s",
                    ]
                    for s, g in batched
                ],
            ),
        ]
    return blocks


def _cost(results: dict) -> list[tuple]:
    """Latency per runtime and batch, then size, FLOPs, memory and time per stage."""
    stages = results["stages"]
    latency = [
        [
            s["name"],
            runtime,
            batch.replace("batch_", ""),
            fmt_ms(t["p50"]),
            fmt_ms(t["p95"]),
            f"{t['throughput_per_s']:.0f}/s",
        ]
        for s in stages
        for runtime, table in s["cost"]["latency"].items()
        for batch, t in table.items()
    ]
    rows = [
        [
            s["name"],
            fmt_count(s["cost"]["params"]),
            fmt_count(s["cost"]["nonzero_params"]),
            ", ".join(f"{k} {fmt_bytes(v)}" for k, v in s["cost"]["files"].items()),
            fmt_count(s["cost"]["flops"]),
            fmt_bytes(s["cost"]["peak_memory_bytes"]),
            f"{s['cost']['onnx_top1_agreement']:.4f}" if "onnx_top1_agreement" in s["cost"] else "-",
            f"{s['seconds']:.1f} s",
        ]
        for s in stages
    ]
    titles = [
        "stage",
        "params",
        "non-zero",
        "files on disk",
        "FLOPs/sample",
        "peak memory",
        "ORT top-1 agreement",
    ]
    return [
        ("h", 2, "Cost"),
        ("table", ["stage", "runtime", "batch", "p50", "p95", "throughput"], latency),
        ("table", [*titles, "stage time"], rows),
        (
            "p",
            f"Peak memory: tensor bytes (weights plus the largest set of live activations) of one "
            f"torch forward pass at batch {stages[0]['cost']['batch_size']}; for stages that ship to ONNX "
            f"Runtime it is measured on pare's torch simulation, and their torch latency rows time that "
            f"simulation, not a deployment. FLOPs count a multiply-add as 2, per sample. ORT top-1 "
            f"agreement: share of test samples where ONNX Runtime and the torch model (for quantized "
            f"stages, pare's simulation of it) predict the same class.",
        ),
    ]


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _stage_info_blocks(stage: dict, sensitivity_png: Path) -> list[tuple]:
    """A technique's ``info``: settings in one line, each list of records as a table, and a
    per-layer sensitivity plot when the technique measured one."""
    info = stage.get("info") or {}
    source = f", from {stage['from']}" if stage.get("from") else ""
    blocks: list[tuple] = [("h", 3, f"{stage['name']} ({stage['technique']}{source})")]
    scalars = [f"{k}={_cell(v)}" for k, v in info.items() if not isinstance(v, dict | list)]
    if scalars:
        blocks.append(("p", "`" + ", ".join(scalars) + "`"))
    for key, value in info.items():
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            header = list(dict.fromkeys(k for r in value for k in r))
            blocks.append(("p", f"{key.replace('_', ' ')}:"))
            blocks.append(("table", header, [[_cell(r.get(h, "")) for h in header] for r in value]))
    if info.get("sensitivity"):
        path = plots.sensitivity_plot(info["sensitivity"], sensitivity_png)
        blocks.append(("img", path, f"{stage['name']}: validation drop when only one layer is quantized"))
    return blocks


def render_markdown(blocks: list[tuple], out: Path) -> str:
    lines = []
    for b in blocks:
        if b[0] == "h":
            lines += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            lines.append("| " + " | ".join(b[1]) + " |")
            lines.append("|" + "|".join("---" for _ in b[1]) + "|")
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in b[2]]
            lines.append("")
        elif b[0] == "img":
            lines += [f"![{b[2]}]({Path(b[1]).relative_to(out).as_posix()})", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}
figcaption{color:#666;font-size:12px}code{background:#f3f3f3;padding:1px 4px}"""


def _inline(text: str) -> str:
    # The only inline markup the report uses: **bold** and `code`.
    text = html.escape(text)
    parts = text.split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks: list[tuple]) -> str:
    body = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b[2])}">'
                f"<figcaption>{html.escape(b[2])}</figcaption></figure>"
            )
    title = html.escape(next((b[2] for b in blocks if b[0] == "h"), "pare report"))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_report(results: dict, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    blocks = build(results, out)
    md = atomic_write_text(out / "report.md", render_markdown(blocks, out))
    page = atomic_write_text(out / "report.html", render_html(blocks))
    return {"markdown": md, "html": page}


def _commit(results: dict) -> str:
    """`` (commit abc1234, uncommitted changes)`` when the run came from a git checkout."""
    prov = results.get("provenance") or {}  # absent in results written before provenance existed
    if not prov.get("commit"):
        return ""
    return f" (commit {prov['commit'][:10]}{', with uncommitted changes' if prov.get('dirty') else ''})"
