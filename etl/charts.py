"""Pictures and small tables people look at in the Dagster UI: a funnel chart, a velocity trend, a
calibration curve, forecast fan charts and a pipeline waterfall. Charts are rendered with matplotlib
(no screen needed) and embedded in Markdown as PNG data URIs, which the Dagster UI shows inline in an
asset's metadata."""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


# A cell a spreadsheet would run as a formula starts with one of these (OWASP, CSV injection): the
# formula signs, tab and line breaks, and their full-width forms that some spreadsheets accept.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` ready for a CSV that people open in Excel, LibreOffice or Google Sheets: every text
    cell that starts with a formula trigger is prefixed with a single quote (OWASP's CSV-injection
    guidance), so `=HYPERLINK(...)` shows as text instead of running. Numbers, dates and booleans
    are left alone (a negative amount stays a number). The warehouse itself stores text verbatim;
    only files written for people are neutralised."""
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if not (pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype)):
            continue
        text = values.astype("string")
        risky = text.str.startswith(FORMULA_TRIGGERS).fillna(False).to_numpy(dtype=bool)
        if risky.any():
            out[column] = text.where(~risky, "'" + text)
    return out


def write_spreadsheet_csv(frame: pd.DataFrame, path) -> int:
    """Write `frame` as a CSV for people (UTF-8 with a byte-order mark so Excel reads accents, every
    field quoted, formulas neutralised by `spreadsheet_safe`); returns the rows written."""
    spreadsheet_safe(frame).to_csv(path, index=False, encoding="utf-8-sig", quoting=1, lineterminator="\r\n")
    return len(frame)


def markdown_table(frame: pd.DataFrame, max_rows: int = 20, floatfmt: str = "{:,.4g}") -> str:
    """A GitHub-flavoured Markdown table of the first `max_rows` rows."""
    shown = frame.head(max_rows)

    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return ""
        if isinstance(value, float):
            return floatfmt.format(value)
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    more = [f"\n_{len(frame) - max_rows:,} more rows_"] if len(frame) > max_rows else []
    return "\n".join([header, rule, *body, *more])


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def image_markdown(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def funnel_chart(conversion: pd.DataFrame) -> bytes:
    """Any-order funnel of every pipeline over all time (rows of `stage_conversion`)."""
    rows = conversion[
        (conversion["funnel_mode"] == "any_order")
        & (conversion["period_grain"] == "all")
        & (conversion["segment_type"] == "all")
    ]
    pipelines = sorted(rows["pipeline"].unique())
    fig, axes = plt.subplots(1, max(len(pipelines), 1), figsize=(4.5 * max(len(pipelines), 1), 3.6), squeeze=False)
    for ax, pipeline in zip(axes[0], pipelines):
        part = rows[rows["pipeline"] == pipeline].sort_values("stage_order")
        ax.barh(part["stage"], part["reached"], color="#3b6ea8")
        for y, (reached, rate) in enumerate(zip(part["reached"], part["next_step_rate"])):
            label = f"{int(reached):,}" + ("" if pd.isna(rate) else f"  ({rate:.0%} advance)")
            ax.text(reached, y, " " + label, va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{pipeline}: deals reaching each stage", fontsize=10)
        ax.set_xlim(0, max(part["reached"].max(), 1) * 1.6)
        ax.tick_params(labelsize=8)
    return _png(fig)


def velocity_chart(velocity: pd.DataFrame) -> bytes:
    """Monthly won amount, open pipeline and win rate for the whole business (rows of `velocity`)."""
    rows = velocity[(velocity["period_grain"] == "month") & (velocity["segment_type"] == "all")].sort_values("period")
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(rows["period"], rows["pipeline_value"], label="open pipeline (period end)", color="#3b6ea8")
    ax.bar(rows["period"], rows["won_amount"], label="won in period", color="#7fb77e")
    ax.set_ylabel("reporting currency")
    ax2 = ax.twinx()
    ax2.plot(rows["period"], rows["win_rate"], color="#c0504d", linestyle="--", label="win rate")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("win rate")
    step = max(len(rows) // 12, 1)
    ax.set_xticks(range(0, len(rows), step))
    ax.set_xticklabels(rows["period"].iloc[::step], rotation=45, fontsize=8)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    ax.set_title("Sales velocity by month", fontsize=10)
    return _png(fig)


def calibration_chart(reliability: pd.DataFrame, title: str = "Calibration on the held-out period") -> bytes:
    """Mean predicted probability against observed win rate per bin, with the diagonal of perfect calibration.

    `reliability` has columns mean_predicted, observed_rate, count.
    """
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    shown = reliability[reliability["count"] > 0]
    ax.plot(shown["mean_predicted"], shown["observed_rate"], marker="o", color="#3b6ea8", label="model")
    for x, y, n in zip(shown["mean_predicted"], shown["observed_rate"], shown["count"]):
        ax.annotate(f"{int(n):,}", (x, y), fontsize=7, textcoords="offset points", xytext=(4, -8))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted win probability")
    ax.set_ylabel("observed win rate")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def fan_chart(
    points: pd.DataFrame,
    title: str,
    quota: float | None = None,
    actual: float | None = None,
) -> bytes:
    """A quarter's forecast over time: the P10-P90 band and the P50 line over the as-of dates, with
    the quota and the actual (when known) as horizontal lines, and closed won to date when `points`
    has it.

    `points` has columns as_of (dates), p10, p50, p90 and optionally closed_won_to_date, one row per
    as-of date, in the reporting currency.
    """
    from matplotlib.ticker import FuncFormatter

    rows = points.sort_values("as_of")
    x = pd.to_datetime(rows["as_of"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.fill_between(x, rows["p10"], rows["p90"], color="#3b6ea8", alpha=0.25, label="P10-P90")
    ax.vlines(x, rows["p10"], rows["p90"], color="#3b6ea8", alpha=0.5, linewidth=1)
    ax.plot(x, rows["p50"], color="#3b6ea8", marker="o", markersize=3, label="P50")
    if "closed_won_to_date" in rows.columns and rows["closed_won_to_date"].notna().any():
        ax.plot(x, rows["closed_won_to_date"], color="#7fb77e", drawstyle="steps-post", label="closed won to date")
    for value, label, style in ((quota, "quota", "--"), (actual, "actual", "-")):
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            ax.axhline(value, color="#c0504d" if label == "quota" else "black", linestyle=style, linewidth=1.2, label=f"{label} {value:,.0f}")
    ax.set_ylabel("reporting currency")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.tick_params(labelsize=8)
    fig.autofmt_xdate()
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    return _png(fig)


# The movements of a pipeline waterfall in the order they are drawn, with the sign each adds.
WATERFALL_MOVES: tuple[tuple[str, str, int], ...] = (
    ("created", "created", 1),
    ("pulled_in", "pulled in", 1),
    ("increased", "increased", 1),
    ("decreased", "decreased", -1),
    ("pushed_out", "pushed out", -1),
    ("lost", "lost", -1),
    ("won", "won", -1),
)


def waterfall_bars(row: pd.Series) -> pd.DataFrame:
    """The floating bars of one `pipeline_waterfall` row: start, each movement from where the
    previous one left the pipeline, end. Columns label, bottom, height, sign (0 for start and end)."""
    bars = [("start", 0.0, float(row["start_value"]), 0)]
    level = float(row["start_value"])
    for column, label, sign in WATERFALL_MOVES:
        amount = float(row[column])
        after = level + sign * amount
        bars.append((label, min(level, after), amount, sign))
        level = after
    bars.append(("end", 0.0, float(row["end_value"]), 0))
    return pd.DataFrame(bars, columns=["label", "bottom", "height", "sign"])


def waterfall_chart(row: pd.Series, title: str) -> bytes:
    """A period's pipeline from start to end through what was created, pulled in, changed, pushed
    out, lost and won (one `pipeline_waterfall` row)."""
    from matplotlib.ticker import FuncFormatter

    bars = waterfall_bars(row)
    colours = bars["sign"].map({0: "#3b6ea8", 1: "#7fb77e", -1: "#c0504d"})
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(bars["label"], bars["height"], bottom=bars["bottom"], color=colours)
    for x, (bottom, height, sign) in enumerate(zip(bars["bottom"], bars["height"], bars["sign"])):
        text = f"{'+' if sign > 0 else '-' if sign < 0 else ''}{height:,.0f}"
        ax.text(x, bottom + height, text, ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("reporting currency")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.tick_params(labelsize=8)
    ax.set_title(title, fontsize=10)
    return _png(fig)
