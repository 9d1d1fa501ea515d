"""Why a deal got its score: the factors that move its win probability most, in words a sales
manager reads in BI ("in Negotiation/Review for 48 days, 3.0x the usual 16", "close date pushed
twice", "owner's win rate to date 62%").

The explanation comes from the scorer itself: for each factor, the deal's probability is
recomputed with that factor set to its typical value (median or most frequent value over the rows
the scorer learnt from; for days in stage, the median for the deal's own stage). The difference is
the factor's effect: positive when the deal's actual value raises its chance against a typical
deal, negative when it lowers it. Up to `top_n` factors that raise it and `top_n` that lower it
are kept, strongest first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.scoring import Scorer

# Effects smaller than this (half a percentage point) are not worth a manager's attention.
MIN_EFFECT = 0.005
# Deals explained per batch (each batch scores deals x factors rows at once).
DEALS_PER_BATCH = 20_000
NO_FACTOR_TEXT = "no single factor moves this deal's probability by half a point or more"
EXPLANATION_COLUMNS = ["deal_id", "top_factors", "top_factors_text"]

_LABELS = {
    "pipeline": "pipeline",
    "owner": "owner",
    "team": "team",
    "product": "product",
    "region": "region",
    "account_segment": "segment",
    "lead_source": "lead source",
    "deal_type": "deal type",
    "forecast_category": "forecast category",
    "day_of_year": "time of year",
}


def _text(values: pd.Series) -> pd.Series:
    return values.astype("string")


def _whole(values: pd.Series) -> pd.Series:
    """Rounded whole numbers as text."""
    return _text(values.astype(float).round().astype("Int64"))


def _percent(values: pd.Series) -> pd.Series:
    return _whole(values.astype(float) * 100.0) + "%"


def _times(values: pd.Series, once: str, twice: str, many: str, never: str) -> pd.Series:
    """Counts in words: `never` for 0, `once` for 1, `twice` for 2, else `many` with {n} filled in."""
    n = values.astype(float).round()
    prefix, suffix = many.split("{n}", 1)
    counted = (prefix + _whole(n) + suffix).fillna("").to_numpy(dtype=object)
    out = np.select([(n == 0).to_numpy(dtype=bool), (n == 1).to_numpy(dtype=bool), (n == 2).to_numpy(dtype=bool)], [never, once, twice], default=counted)
    return pd.Series(out, index=values.index, dtype="string").where(n.notna().to_numpy(), pd.NA)


def _money(values: pd.Series) -> pd.Series:
    """48000 -> 48k, 1250000 -> 1.2M, 950 -> 950."""
    x = values.astype(float)
    small = _whole(x)
    thousands = _whole(x / 1e3) + "k"
    millions = _text((x / 1e6).round(1)) + "M"
    out = np.select([x < 1e3, x < 1e6], [small.to_numpy(dtype=object), thousands.to_numpy(dtype=object)], default=millions.to_numpy(dtype=object))
    return pd.Series(out, index=values.index, dtype="string")


def _stage_days_text(rows: pd.DataFrame) -> pd.Series:
    days = rows["days_in_stage"].astype(float)
    usual = rows["typical_value"].astype(float)
    ratio = days / usual.where(usual > 0)
    head = "in " + rows["stage"].astype("string").fillna("its stage") + " for " + _whole(days) + " days"
    ratio_text = _text(ratio.round(1))
    out = np.select(
        [(ratio >= 1.5).to_numpy(dtype=bool), (ratio <= 0.67).to_numpy(dtype=bool)],
        [
            (head + ", " + ratio_text + "x the usual " + _whole(usual)).to_numpy(dtype=object),
            (head + ", less than the usual " + _whole(usual)).to_numpy(dtype=object),
        ],
        default=(head + " (usual " + _whole(usual) + ")").fillna(head).to_numpy(dtype=object),
    )
    return pd.Series(out, index=rows.index, dtype="string")


def _time_of_year(day_of_year: pd.Series) -> pd.Series:
    """Day of the year (1-366) -> "early July", "mid-March", "late December"."""
    day = pd.to_numeric(day_of_year, errors="coerce")
    known = day.between(1, 366)
    dates = pd.Timestamp("2024-01-01") + pd.to_timedelta(day.where(known, 1) - 1, unit="D")
    part = np.select([dates.dt.day <= 10, dates.dt.day <= 20], ["early ", "mid-"], default="late ")
    text = pd.Series(part, index=day.index, dtype="string") + dates.dt.month_name().astype("string")
    return text.where(known, pd.NA)


def _factor_text(feature: str, rows: pd.DataFrame) -> pd.Series:
    """Plain-words description of `feature`'s actual value for each row of `rows` (the deal's
    columns plus `typical_value`)."""
    if feature == "days_in_stage":
        return _stage_days_text(rows)
    value = rows[feature] if feature in rows else pd.Series(pd.NA, index=rows.index)
    if feature == "stage":
        text = "at stage " + _text(value)
    elif feature == "age_days":
        text = "open for " + _whole(value) + " days (typical " + _whole(rows["typical_value"]) + ")"
    elif feature == "log_amount_reporting":
        amount = np.expm1(value.astype(float))
        typical = np.expm1(rows["typical_value"].astype(float))
        text = "amount " + _money(amount) + " (typical " + _money(typical) + ")"
    elif feature == "days_to_expected_close":
        d = value.astype(float)
        past = "expected close date passed " + _whole(-d) + " days ago"
        ahead = "expected to close in " + _whole(d) + " days"
        text = pd.Series(np.where(d < 0, past.to_numpy(dtype=object), ahead.to_numpy(dtype=object)), index=rows.index, dtype="string")
    elif feature == "stage_moves":
        text = _times(value, "1 stage change so far", "2 stage changes so far", "{n} stage changes so far", "no stage change yet")
    elif feature == "backward_moves":
        text = _times(value, "moved back a stage once", "moved back a stage twice", "moved back a stage {n} times", "never moved back a stage")
    elif feature == "close_pushes":
        text = _times(value, "close date pushed once", "close date pushed twice", "close date pushed {n} times", "close date never pushed")
    elif feature in ("crm_probability", "stage_probability"):
        text = "CRM probability " + _percent(value)
    elif feature == "week_of_quarter":
        text = "week " + _whole(value) + " of the quarter"
    elif feature == "day_of_year":
        text = "time of year: " + _time_of_year(value)
    elif feature == "owner_prior_win_rate":
        text = "owner's win rate to date " + _percent(value)
    elif feature == "owner_prior_closed":
        text = "owner has closed " + _whole(value) + " deals before"
    elif feature == "product_prior_win_rate":
        product = rows["product"].astype("string") if "product" in rows else pd.Series("product", index=rows.index, dtype="string")
        text = product.fillna("product") + " win rate to date " + _percent(value)
    elif feature == "account_prior_win_rate":
        text = "account's win rate to date " + _percent(value)
    elif feature == "account_prior_closed":
        text = _times(value, "account has 1 earlier closed deal", "account has 2 earlier closed deals", "account has {n} earlier closed deals", "no earlier closed deal with this account")
    elif feature in _LABELS:
        text = _LABELS[feature] + " " + _text(value)
    else:
        text = feature.replace("_", " ") + " " + _text(value)
    label = _LABELS.get(feature, feature.replace("_", " "))
    return text.fillna(label + " unknown").astype("string")


def _json_string(values: pd.Series) -> pd.Series:
    """JSON string literals (quoted and escaped) for text values."""
    escaped = (
        values.astype("string")
        .str.replace("\\", "\\\\", regex=False)
        .str.replace('"', '\\"', regex=False)
        .str.replace("\n", "\\n", regex=False)
        .str.replace("\r", "\\r", regex=False)
        .str.replace("\t", "\\t", regex=False)
        .str.replace(r"[\x00-\x1f]", "", regex=True)
    )
    return '"' + escaped + '"'


def _counterfactual(scorer: Scorer, frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame | None:
    """`frame` with `columns` set to their typical values (None when no typical value is known)."""
    changed = frame.copy()
    for column in columns:
        if column == "days_in_stage":
            per_stage = frame[["pipeline", "stage"]].astype("string").merge(
                scorer.typical_stage_days, on=["pipeline", "stage"], how="left"
            )["typical_days_in_stage"]
            fallback = scorer.typical.get("days_in_stage")
            values = per_stage.to_numpy(dtype=float)
            if fallback is not None:
                values = np.where(np.isnan(values), float(fallback), values)
            changed[column] = values
            continue
        typical = scorer.typical.get(column)
        if typical is None:
            return None
        if isinstance(typical, str):
            changed[column] = pd.Series(typical, index=frame.index, dtype="string")
        else:
            changed[column] = float(typical)
    return changed


def _changed_rows(frame: pd.DataFrame, variant: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """True where `variant` differs from `frame` in any of `columns` (blank and blank are equal)."""
    changed = np.zeros(len(frame), dtype=bool)
    for column in columns:
        if column not in frame.columns:
            return np.ones(len(frame), dtype=bool)
        actual, typical = frame[column], variant[column]
        same = (actual == typical).fillna(False).to_numpy(dtype=bool) | (actual.isna() & typical.isna()).to_numpy(dtype=bool)
        changed |= ~same
    return changed


def _explain_batch(scorer: Scorer, frame: pd.DataFrame, top_n: int) -> pd.DataFrame:
    base = scorer.predict_proba(frame)
    names, variants, changed = [], [], []
    for name, columns in scorer.explained_groups().items():
        variant = _counterfactual(scorer, frame, columns)
        if variant is not None:
            names.append(name)
            # A deal whose factor already has its typical value scores the same with it: its effect
            # is 0, and only the other rows are scored again (all of them in one call).
            rows = _changed_rows(frame, variant, columns)
            variants.append(variant.loc[rows])
            changed.append(rows)
    n = len(frame)
    effect = np.zeros((len(names), n))
    if names:
        mask = np.stack(changed)
        if mask.any():
            altered = scorer.predict_proba(pd.concat(variants, ignore_index=True))
            effect[mask] = np.repeat(base[None, :], len(names), axis=0)[mask] - altered
    long = pd.DataFrame(
        {
            "row": np.tile(np.arange(n), len(names)),
            "feature": np.repeat(np.array(names, dtype=object), n),
            "effect": effect.ravel(),
        }
    )
    long = long.loc[long["effect"].abs() >= MIN_EFFECT]
    up = long.loc[long["effect"] > 0].sort_values(["row", "effect"], ascending=[True, False], kind="stable")
    down = long.loc[long["effect"] < 0].sort_values(["row", "effect"], ascending=[True, True], kind="stable")
    up = up.loc[up.groupby("row").cumcount() < top_n]
    down = down.loc[down.groupby("row").cumcount() < top_n]
    kept = pd.concat([up, down])
    kept = kept.assign(strength=kept["effect"].abs()).sort_values(["row", "strength"], ascending=[True, False], kind="stable")

    texts = pd.Series(pd.NA, index=kept.index, dtype="string")
    rows = frame.reset_index(drop=True)
    for feature in kept["feature"].unique():
        mask = kept["feature"] == feature
        part = rows.iloc[kept.loc[mask, "row"].to_numpy()].reset_index(drop=True)
        if feature == "days_in_stage":
            typical = _counterfactual(scorer, part, ["days_in_stage"])["days_in_stage"]
        else:
            typical = pd.Series(scorer.typical.get(feature), index=part.index)
        part = part.assign(typical_value=typical)
        texts.loc[mask] = _factor_text(feature, part).to_numpy(dtype=object)
    kept["text"] = texts
    points = _whole(kept["effect"] * 100.0)
    sign = pd.Series(np.where(kept["effect"] > 0, "+", ""), index=kept.index, dtype="string")
    kept["line"] = kept["text"] + " (" + sign + points + " pts)"
    kept["json"] = (
        '{"feature": ' + _json_string(kept["feature"])
        + ', "effect": ' + _text(kept["effect"].round(4))
        + ', "text": ' + _json_string(kept["text"]) + "}"
    )
    kept["rank"] = kept.groupby("row").cumcount()

    factors = pd.Series("", index=range(n), dtype="string")
    lines = pd.Series("", index=range(n), dtype="string")
    for rank in range(int(kept["rank"].max()) + 1 if len(kept) else 0):
        at_rank = kept.loc[kept["rank"] == rank].set_index("row")
        json_part = at_rank["json"].reindex(range(n))
        line_part = at_rank["line"].reindex(range(n))
        separator = "" if rank == 0 else ", "
        factors = factors + (separator + json_part).fillna("")
        lines = lines + (("" if rank == 0 else "; ") + line_part).fillna("")
    return pd.DataFrame(
        {
            "deal_id": frame["deal_id"].to_numpy(),
            "top_factors": ("[" + factors + "]").to_numpy(dtype=object),
            "top_factors_text": lines.where(lines != "", NO_FACTOR_TEXT).to_numpy(dtype=object),
        }
    )


def explain(scorer: Scorer, features_frame: pd.DataFrame, top_n: int = 3) -> pd.DataFrame:
    """Per deal: `top_factors` (JSON list of {feature, effect, text}; effect = change in win
    probability against the typical value, strongest first) and `top_factors_text` (the same in
    one line, e.g. "close date pushed twice (-8 pts); owner's win rate to date 62% (+5 pts)").

    `features_frame` is the scoring frame (`snapshot_features`), with `deal_id`.
    """
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    if "deal_id" not in features_frame.columns:
        raise ValueError("features frame needs a deal_id column to explain deals")
    if features_frame.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in EXPLANATION_COLUMNS})
    batches = [
        _explain_batch(scorer, features_frame.iloc[start : start + DEALS_PER_BATCH], top_n)
        for start in range(0, len(features_frame), DEALS_PER_BATCH)
    ]
    return pd.concat(batches, ignore_index=True)[EXPLANATION_COLUMNS]
