"""The one comparison table (every stage against the baseline) that the terminal, the Markdown
and the HTML report all show."""

from __future__ import annotations

from pare.reporting.format import fmt_bytes, fmt_count, fmt_delta, fmt_metric, fmt_ms, fmt_ratio

CLASSIFICATION = ["accuracy", "f1_macro", "roc_auc"]
NAMES = {
    "f1_macro": "F1 macro",
    "roc_auc": "ROC AUC",
    "recall_at_1": "Recall@1",
    "recall_at_10": "Recall@10",
    "mrr": "MRR",
}
# latency at batch 1 in each runtime, each against the baseline in the same runtime; "ships":
# the runtime of the stage's artifact (a quantized stage's torch column times pare's simulation)
RUNTIMES = {"torch": "torch", "onnxruntime": "ORT"}
COST_HEADER = [
    "params",
    "size",
    "size ×",
    "FLOPs",
    "FLOPs ×",
    *[h for short in RUNTIMES.values() for h in (f"{short} b1", f"{short} ×")],
    "ships",
]


def metric_names(results: dict) -> list[str]:
    """The task's headline columns (older results files: classification's)."""
    return list(results["task"].get("summary_metrics") or CLASSIFICATION)


def header(results: dict) -> list[str]:
    first, *rest = [NAMES.get(m, m) for m in metric_names(results)]
    return ["stage", first, f"Δ {first}", *rest, *COST_HEADER]


def summary_rows(results: dict) -> list[list[str]]:
    first, *rest = metric_names(results)
    rows = []
    for s in results["stages"]:
        m, c, cmp = s["metrics"], s["cost"], s.get("comparison", {})
        std = s.get("metrics_std")
        rows.append(
            [
                s["name"],
                fmt_metric(m, first, std=std),
                fmt_delta(cmp, first) if cmp else "—",
                *[fmt_metric(m, k, std=std, digits=3) for k in rest],
                fmt_count(c["params"])
                + ("" if c["nonzero_params"] == c["params"] else f" ({fmt_count(c['nonzero_params'])} nz)"),
                fmt_bytes(c["size_bytes"]),
                fmt_ratio(cmp.get("size_ratio")) if cmp else "1.00x",
                fmt_count(c["flops"]),
                fmt_ratio(cmp.get("flops_ratio")) if cmp else "1.00x",
                *[cell for runtime in RUNTIMES for cell in _latency(c, cmp, runtime)],
                c["runtime"],
            ]
        )
    return rows


def _latency(cost: dict, cmp: dict, runtime: str) -> tuple[str, str]:
    """Batch-1 p50 in ``runtime`` and the baseline's over it ("-": not measured there)."""
    lat = cost["latency"].get(runtime, {}).get("batch_1")
    if lat is None:
        return "-", "-"
    return fmt_ms(lat["p50"]), fmt_ratio(cmp.get(f"latency_ratio_{runtime}")) if cmp else "1.00x"


def stage_warnings(results: dict) -> list[tuple[str, str]]:
    """``(stage, warning)`` for every stage that lost more than it should have (the runner's
    validation check, or the technique's own)."""
    out = []
    for s in results["stages"]:
        text = s.get("warning") or (s.get("info") or {}).get("warning")
        if text:
            out.append((s["name"], text))
    return out


def print_summary(results: dict) -> None:
    from rich.table import Table

    from pare.progress import make_console

    console = make_console(stderr=False)  # made per call: stdout may have been redirected

    table = Table(title=f"pare: {results['recipe']['name']} on {results['task']['dataset']} (test split)")
    for h in header(results):
        table.add_column(h, justify="left" if h in ("stage", "ships") else "right", no_wrap=True)
    for row in summary_rows(results):
        table.add_row(*row)
    console.print(table)
    for name, text in stage_warnings(results):
        console.print(f"[yellow]warning: {name}: {text}[/]")
    for note in (results["stages"][0].get("diagnosis") or {}).get("notes", []):
        console.print(f"[yellow]baseline {note}[/]")
