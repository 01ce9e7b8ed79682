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
COST_HEADER = ["params", "size", "size ×", "FLOPs", "FLOPs ×", "latency b1", "latency ×", "runtime"]


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
                fmt_ms(c["latency_ms_p50"]),
                fmt_ratio(cmp.get("latency_ratio")) if cmp else "1.00x",
                c["runtime"],
            ]
        )
    return rows


def print_summary(results: dict) -> None:
    from rich.table import Table

    from pare.progress import make_console

    console = make_console(stderr=False)  # made per call: stdout may have been redirected

    table = Table(title=f"pare: {results['recipe']['name']} on {results['task']['dataset']} (test split)")
    for h in header(results):
        table.add_column(h, justify="left" if h in ("stage", "runtime") else "right", no_wrap=True)
    for row in summary_rows(results):
        table.add_row(*row)
    console.print(table)
    for note in (results["stages"][0].get("diagnosis") or {}).get("notes", []):
        console.print(f"[yellow]baseline {note}[/]")
