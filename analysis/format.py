"""One way to print numbers in tables, figures and reports: about three significant digits, thousands
separated, powers of ten only far from 1.

    0.2031 -> 0.203     9.847 -> 9.85     98.489 -> 98.5     1811.3 -> 1,811
    4.2e6 -> 4.2e6      0.00042 -> 4.2e-4   inf -> ∞          NaN / None -> —
"""

from __future__ import annotations

import math


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    value = float(value)
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1e6 or magnitude < 1e-3:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_signed(value: float | None) -> str:
    text = fmt(value)
    return text if text.startswith(("-", "−", "—")) or text == "0" else f"+{text}"


def fmt_pct(fraction: float | None) -> str:
    """A fraction as a percentage with one decimal: 0.025 -> 2.5 %."""
    if fraction is None or not math.isfinite(float(fraction)):
        return "—"
    return f"{100 * float(fraction):.1f} %"


def fmt_interval(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return "—"
    return f"{fmt(low)}–{fmt(high)}"
