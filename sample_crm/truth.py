"""`SampleTruth`: the truth files of a messy sample read back, with the true win probability at any
moment and the real bookings per quarter."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from etl.periods import quarter_labels
from etl.stages import STATUS_WON, PipelineStages, StageCatalog
from sample_crm.files import SHAPES, TRUTH_DEALS_FILE, TRUTH_MANIFEST_FILE, TRUTH_REAL_HISTORY_FILE
from sample_crm.messy import MessyOptions, RealLives
from sample_crm.quotas import expected_won_revenue
from sample_crm.world import SampleWorld, utc_microseconds


def _recode(values: pd.Series, column: str, mapping: dict[str, int], path: Path) -> np.ndarray:
    """Codes of `values` in `mapping`; ValueError naming the file, row and column of the first unknown."""
    codes = values.map(mapping)
    if codes.isna().any():
        first = int(np.flatnonzero(codes.isna().to_numpy())[0])
        raise ValueError(
            f"{path}: row {first + 2}, column {column!r}: {values.iloc[first]!r} is not in this sample "
            f"(expected one of {sorted(mapping)[:10]})"
        )
    return codes.to_numpy(dtype=np.int64)


@dataclass(frozen=True, eq=False)
class SampleTruth:
    """The ground truth of a messy-profile sample, read back from the truth files beside its
    export (`SampleTruth.load(out_dir)`): per deal (`deals`, truth_deals.csv), the real history
    (`real_history`, truth_real_history.csv), and the true win probability at any moment.

    On a messy sample use `true_win_probability` from here: `SampleWorld.true_win_probability`
    reads the state the CRM shows, which is not the real one for stale, late-keyed, imported and
    last-minute deals."""

    world: SampleWorld
    options: MessyOptions
    deals: pd.DataFrame
    real_history: pd.DataFrame
    import_at: pd.Timestamp | None
    purges: tuple[pd.Timestamp, ...]
    _lives: RealLives = field(repr=False)

    @classmethod
    def load(cls, out_dir: Path) -> "SampleTruth":
        """Read the truth of the sample written to `out_dir` (its manifest rebuilds the world)."""
        out_dir = Path(out_dir)
        manifest_path = out_dir / TRUTH_MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: not found; expected a sample written with profile='messy'")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        catalog = StageCatalog(
            [
                PipelineStages(
                    name=p["name"], open_stages=tuple(p["open_stages"]), won_stage=p["won_stage"],
                    lost_stage=p["lost_stage"], probabilities=dict(p["probabilities"]),
                )
                for p in manifest["pipelines"]
            ]
        )  # fmt: skip
        world = SampleWorld.build(
            seed=manifest["seed"],
            n_deals=manifest["n_deals"],
            end_date=dt.date.fromisoformat(manifest["end_date"]),
            years=manifest["years"],
            stages=catalog,
            fiscal_year_start_month=manifest["fiscal_year_start_month"],
        )
        options = manifest["options"]
        options = MessyOptions(
            **{**options, "late_keyed_days": tuple(options["late_keyed_days"]), "currencies": tuple(options["currencies"])}
        )
        deals = pd.read_csv(out_dir / TRUTH_DEALS_FILE, dtype=str, keep_default_na=False, encoding="utf-8")
        history = pd.read_csv(out_dir / TRUTH_REAL_HISTORY_FILE, dtype=str, keep_default_na=False, encoding="utf-8")
        deal_class = world.deal_class(deals["pipeline"], deals["owner_id"], deals["product"], deals["segment"])
        index = {deal_id: i for i, deal_id in enumerate(deals["deal_id"])}
        deal_code = _recode(history["deal_id"], "deal_id", index, out_dir / TRUTH_REAL_HISTORY_FILE)
        pipeline_code = world.class_parts(deal_class)[0][deal_code]
        stage_code = np.empty(len(history), dtype=np.int64)
        for p, name in enumerate(world.pipelines):
            stages = world.stages[name]
            codes = {s: i for i, s in enumerate((*stages.open_stages, stages.won_stage, stages.lost_stage))}
            here = np.flatnonzero(pipeline_code == p)
            stage_code[here] = _recode(history["stage"].iloc[here], "stage", codes, out_dir / TRUTH_REAL_HISTORY_FILE)
        changed = pd.to_datetime(history["changed_at"], format="%Y-%m-%d %H:%M:%S")
        lives = RealLives.build(
            world, deal_class, deal_code, changed.to_numpy(dtype="datetime64[s]").astype(np.int64), stage_code
        )
        typed = deals.copy()
        for column in ("real_created_at", "real_closed_at", "hidden_loss_at", "crm_created_at", "crm_closed_at"):
            typed[column] = pd.to_datetime(typed[column].replace("", None), format="%Y-%m-%d %H:%M:%S")
        for column in ("real_close_date", "crm_close_date"):
            typed[column] = pd.to_datetime(typed[column].replace("", None), format="%Y-%m-%d")
        for column in ("amount_reporting", "skill_level"):
            typed[column] = typed[column].astype("int64")
        typed["amount"] = pd.to_numeric(typed["amount"].replace("", None)).astype("Int64")  # blank: never entered
        for shape in SHAPES:
            typed[shape] = typed[shape] == "1"
        real_history = history.assign(
            changed_at=changed,
            amount_reporting=history["amount_reporting"].astype("int64"),
            close_date=pd.to_datetime(history["close_date"], format="%Y-%m-%d"),
        )
        return cls(
            world=world,
            options=options,
            deals=typed,
            real_history=real_history,
            import_at=pd.Timestamp(manifest["import_at"]) if manifest["import_at"] else None,
            purges=tuple(pd.Timestamp(p) for p in manifest["purges"]),
            _lives=lives,
        )

    def true_win_probability(self, frame: pd.DataFrame) -> pd.Series:
        """The true probability that each row's deal is eventually won, given the real state of
        the world at `snapshot_at` (what the CRM shows does not enter: a stale deal is 0 from its
        hidden loss on, a deal whose win is not keyed in yet is 1). `frame` needs `deal_id` and
        `snapshot_at` (UTC, naive or aware), as `etl.pipeline_state.pipeline_at_many` gives them.
        Index aligned with `frame`; ValueError names the row of an unknown deal id or a moment
        before the deal existed."""
        missing = [c for c in ("deal_id", "snapshot_at") if c not in frame.columns]
        if missing:
            raise ValueError(f"true_win_probability: frame is missing column(s) {missing}; expected deal_id and snapshot_at")
        codes = pd.Series(np.arange(len(self.deals)), index=self.deals["deal_id"].to_numpy())
        deal = frame["deal_id"].map(codes)
        if deal.isna().any():
            row = int(np.flatnonzero(deal.isna().to_numpy())[0])
            raise ValueError(
                f"true_win_probability: row {frame.index[row]}, column 'deal_id': {frame['deal_id'].iloc[row]!r} is not a deal of this sample"
            )
        seconds = utc_microseconds(frame["snapshot_at"], "snapshot_at", frame.index) // 1_000_000
        out = self._lives.win_probability(deal.to_numpy(dtype=np.int64), seconds, labels=frame.index)
        return pd.Series(out, index=frame.index, name="true_win_probability", dtype="float64")

    def quarter_bookings(self) -> pd.DataFrame:
        """Real won revenue per quarter (booked by the real day of the win, which is every won
        deal's CloseDate in the export) for the whole company, each team and each pipeline, in
        the reporting currency, beside the revenue the simulation's parameters expect
        (`expected_won_amount`). Columns: quarter, segment_type, segment, won_deals, won_amount,
        expected_won_amount."""
        fiscal = self.world.fiscal_year_start_month
        expected = expected_won_revenue(self.world)
        won = self.deals[self.deals["real_outcome"] == STATUS_WON]
        quarter = quarter_labels(won["real_close_date"], fiscal) if len(won) else pd.Series(dtype=object)
        won = won.assign(quarter=quarter.to_numpy())
        parts = [won.assign(segment_type="all", segment="all")]
        parts += [won.assign(segment_type="team", segment=won["team"]), won.assign(segment_type="pipeline", segment=won["pipeline"])]
        actual = (
            pd.concat(parts, ignore_index=True)
            .groupby(["quarter", "segment_type", "segment"], as_index=False)
            .agg(won_deals=("deal_id", "size"), won_amount=("amount_reporting", "sum"))
        )
        out = expected.rename(columns={"amount": "expected_won_amount"}).merge(
            actual, on=["quarter", "segment_type", "segment"], how="outer"
        )
        out[["won_deals", "won_amount"]] = out[["won_deals", "won_amount"]].fillna(0).astype("int64")
        out["expected_won_amount"] = out["expected_won_amount"].fillna(0.0)
        return out[["quarter", "segment_type", "segment", "won_deals", "won_amount", "expected_won_amount"]].sort_values(
            ["quarter", "segment_type", "segment"], ignore_index=True
        )
