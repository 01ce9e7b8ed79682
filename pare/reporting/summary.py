"""The one comparison table (every stage against the baseline) that the terminal, the Markdown
and the HTML report all show."""

from __future__ import annotations

from pare.reporting.format import fmt_bytes, fmt_count, fmt_delta, fmt_metric, fmt_ms, fmt_ratio

HEADER = [
    "stage",
    "accuracy",
    "Δ accuracy",
    "F1 macro",
    "ROC AUC",
    "params",
    "size",
    "size ×",
    "FLOPs",
    "FLOPs ×",
    "latency b1",
    "latency ×",
    "runtime",
]


def summary_rows(results: dict) -> list[list[str]]:
    rows = []
    for s in results["stages"]:
        m, c, cmp = s["metrics"], s["cost"], s.get("comparison", {})
        std = s.get("metrics_std")
        rows.append(
            [
                s["name"],
                fmt_metric(m, "accuracy", std=std),
                fmt_delta(cmp, "accuracy") if cmp else "—",
                fmt_metric(m, "f1_macro", std=std, digits=3),
                fmt_metric(m, "roc_auc", std=std, digits=3),
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
    for h in HEADER:
        table.add_column(h, justify="left" if h in ("stage", "runtime") else "right", no_wrap=True)
    for row in summary_rows(results):
        table.add_row(*row)
    console.print(table)
    for note in results["stages"][0].get("diagnosis", {}).get("notes", []):
        console.print(f"[yellow]baseline {note}[/]")
