"""Number formatting shared by the terminal table and the reports."""

from __future__ import annotations


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def fmt_metric(metrics: dict, name: str, *, std: dict | None = None, digits: int = 4) -> str:
    v = metrics.get(name)
    if v is None:
        return "-"
    text = f"{v:.{digits}f}"
    if std and name in std:
        return f"{text} ± {std[name]:.{digits}f}"
    ci = next((metrics[k] for k in metrics if k.startswith(f"{name}_ci")), None)
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else text


def fmt_delta(comparison: dict, name: str) -> str:
    d = comparison.get(f"{name}_delta")
    if d is None:
        return "-"
    ci = next((comparison[k] for k in comparison if k.startswith(f"{name}_delta_ci")), None)
    # shares (accuracy, recall) differ in points; perplexity and losses in their own units
    scale, unit = (1, "") if name in ("perplexity", "nll") or name.endswith("_loss") else (100, " pt")
    text = f"{d * scale:+.2f}{unit}"
    return f"{text} [{ci[0] * scale:+.2f}, {ci[1] * scale:+.2f}]" if ci else text


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} ms" if v < 1 else f"{v:.2f} ms"
