"""Numbers and tables as the reports write them (README tables, ``aggregate.md``, ``crossval.md``), so that one
number reads the same in each: three decimals, 'n/a' for a missing one, '< 0.001' for a tiny p-value."""

from __future__ import annotations

import math


def missing(v) -> bool:
    """None or NaN: a number a report prints as 'n/a'."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def num(v, digits: int = 3) -> str:
    """A number to ``digits`` decimals, or 'n/a'."""
    return "n/a" if missing(v) else f"{float(v):.{digits}f}"


def interval(ci) -> str:
    """' [lo, hi]' of a two-number interval; '' when there is none."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return ""
    return f" [{num(ci[0])}, {num(ci[1])}]"


def pm(mean, sd) -> str:
    """'mean ± sd', or the mean alone when there is no sd (one seed, one fold)."""
    return num(mean) + ("" if missing(sd) else f" ± {num(sd)}")


def p_value(v) -> str:
    """A p-value to three decimals, or '< 0.001' (with 12 patients all on one side, Wilcoxon gives 0.0005)."""
    return "n/a" if missing(v) else "< 0.001" if v < 0.001 else f"{v:.3f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, ending with a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
