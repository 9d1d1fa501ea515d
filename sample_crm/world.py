"""`SampleWorld`: the simulated organisation (reps, teams, step probabilities) and the exact win
probability of every state, by backward induction over the calendar weeks."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from etl.config import ConfigError, SalesforceSourceConfig, load_project_config
from etl.stages import STATUS_LOST, STATUS_OPEN, STATUS_WON, StageCatalog
from sample_crm.formatting import salesforce_ids
from sample_crm.parameters import (
    ADVANCE,
    AMOUNT_SIGMA,
    BACK,
    BACK_RATE,
    DAY_SECONDS,
    EARLY_WIN_RATE,
    EFFECT_SLOPE,
    EPOCH_MONDAY_DAY,
    EVENT_HOURS,
    FIRST_NAMES,
    FOCUS_KINDS,
    FOCUS_SEGMENTS,
    FOCUS_TITLES,
    GROWTH_PER_YEAR,
    KIND_AMOUNT,
    KIND_DYNAMICS,
    KIND_PRODUCTS,
    LAST_NAMES,
    LOST,
    PRODUCTS,
    PRODUCT_AMOUNT,
    PRODUCT_EFFECT,
    PRODUCT_SPEED,
    REGIONS,
    REGION_CODES,
    REPS_PER_TEAM,
    SEASON_OF_EVENT,
    SEGMENTS,
    SEGMENT_AMOUNT,
    SEGMENT_EFFECT,
    SEGMENT_PRODUCT_TILT,
    SEGMENT_SPEED,
    SKILL_LEVELS,
    SKILL_SHARES,
    SKIP,
    SKIP_SHARE,
    STAGE_DELTA,
    STAY,
    TEAM_FOCI,
    TEAM_FOCUS_CYCLE,
    TEAM_REGION_CYCLE,
    TRUTH_TOLERANCE,
    WEEKS_IN_STAGE_CAP,
    WEEK_SECONDS,
    WINDOW_END_SECONDS,
    WON,
    calendar_factors,
    creation_season,
    pipeline_kind,
    week_of_date,
)


def resolve_project(
    stages: StageCatalog | None, fiscal_year_start_month: int | None
) -> tuple[StageCatalog, int, SalesforceSourceConfig]:
    """Stages, fiscal year start and Salesforce field names: explicit values first, then
    `dealcast.toml`; without a readable config, calendar quarters and the standard field names."""
    try:
        project = load_project_config()
    except ConfigError:
        if stages is None:
            raise
        return stages, fiscal_year_start_month or 1, SalesforceSourceConfig()
    return (
        stages if stages is not None else project.stages,
        fiscal_year_start_month or project.fiscal_year_start_month,
        project.salesforce,
    )


@dataclass(frozen=True, eq=False)
class SampleWorld:
    """The simulated organisation's hidden parameters, built deterministically from the seed and
    the size: reps and their skill, teams, the step probabilities, and the exact win probability.

    Effect classes number the combinations (pipeline, skill level, product, segment); stages are
    0-based positions among a pipeline's open stages, with `n_open` for won and `n_open + 1` for lost.
    """

    seed: int
    n_deals: int
    start_date: dt.date
    end_date: dt.date
    stages: StageCatalog
    fiscal_year_start_month: int
    pipelines: tuple[str, ...]
    pipeline_kinds: tuple[str, ...]
    teams: pd.DataFrame = field(repr=False)
    users: pd.DataFrame = field(repr=False)
    _base_rates: np.ndarray = field(repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        seed: int = 7,
        n_deals: int = 10_000,
        end_date: dt.date | None = None,
        years: float = 3.5,
        stages: StageCatalog | None = None,
        fiscal_year_start_month: int | None = None,
    ) -> "SampleWorld":
        """The world for `seed` and `n_deals` deals created over `years` up to `end_date`
        (default today, UTC). Stages default to the project config's."""
        if n_deals < 1:
            raise ValueError(f"n_deals must be at least 1, got {n_deals}")
        if not 0 < years <= 50:
            raise ValueError(f"years must be in (0, 50], got {years}")
        stages, fiscal_start, _ = resolve_project(stages, fiscal_year_start_month)
        pipelines = tuple(p.name for p in stages)
        if not pipelines:
            raise ValueError("the stage catalogue has no pipeline to simulate")
        if isinstance(end_date, dt.datetime):
            end_date = end_date.date()
        end = end_date or dt.datetime.now(dt.timezone.utc).date()
        start = end - dt.timedelta(days=round(years * 365.25))
        kinds = tuple(pipeline_kind(name) for name in pipelines)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
        teams, users = _build_org(n_deals, rng)
        n_open = np.array([len(p.open_stages) for p in stages])
        return cls(
            seed=seed,
            n_deals=n_deals,
            start_date=start,
            end_date=end,
            stages=stages,
            fiscal_year_start_month=fiscal_start,
            pipelines=pipelines,
            pipeline_kinds=kinds,
            teams=teams,
            users=users,
            _base_rates=_base_rates(kinds, n_open),
        )

    # -- shapes and codes --------------------------------------------------------------------
    @property
    def first_week(self) -> int:
        return week_of_date(self.start_date)

    @property
    def last_week(self) -> int:
        return week_of_date(self.end_date)

    @property
    def n_classes(self) -> int:
        return len(self.pipelines) * len(SKILL_LEVELS) * len(PRODUCTS) * len(SEGMENTS)

    @property
    def max_open_stages(self) -> int:
        return self._base_rates.shape[2]

    def n_open_stages(self, deal_class: np.ndarray) -> np.ndarray:
        n_open = np.array([len(self.stages[p].open_stages) for p in self.pipelines])
        return n_open[self.class_parts(deal_class)[0]]

    def class_index(self, pipeline: np.ndarray, skill: np.ndarray, product: np.ndarray, segment: np.ndarray) -> np.ndarray:
        """Effect class of (pipeline, skill level, product, segment) codes."""
        r, n_prod, n_seg = len(SKILL_LEVELS), len(PRODUCTS), len(SEGMENTS)
        return ((np.asarray(pipeline) * r + np.asarray(skill)) * n_prod + np.asarray(product)) * n_seg + np.asarray(segment)

    def class_parts(self, deal_class: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(pipeline, skill level, product, segment) codes of effect classes."""
        c = np.asarray(deal_class)
        c, segment = np.divmod(c, len(SEGMENTS))
        c, product = np.divmod(c, len(PRODUCTS))
        pipeline, skill = np.divmod(c, len(SKILL_LEVELS))
        return pipeline, skill, product, segment

    def deal_class(
        self,
        pipeline: Sequence[str],
        owner: Sequence[str],
        product: Sequence[str],
        segment: Sequence[str],
        row_labels: Sequence | None = None,
    ) -> np.ndarray:
        """Effect classes from names: pipeline, owner (User Name or Id from User.csv), product and
        segment (the Pipeline__c, Product__c and Segment__c values).

        Raises ValueError naming the first row (its label in `row_labels`, else its position)
        and the column whose value this sample does not have."""
        codes = []
        lookups = (
            ("pipeline", pipeline, {name: i for i, name in enumerate(self.pipelines)}, f"one of {list(self.pipelines)}"),
            ("owner", owner, self._owner_skill(), "a User Name or Id from User.csv"),
            ("product", product, {name: i for i, name in enumerate(PRODUCTS)}, f"one of {list(PRODUCTS)}"),
            ("account_segment", segment, {name: i for i, name in enumerate(SEGMENTS)}, f"one of {list(SEGMENTS)}"),
        )
        for column, values, mapping, expected in lookups:
            series = pd.Series(np.asarray(values, dtype=object), dtype=object)
            mapped = series.map(mapping)
            bad = mapped.isna().to_numpy()
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                label = row_labels[first] if row_labels is not None else first
                raise ValueError(
                    f"sample world: row {label}, column {column!r}: {series.iloc[first]!r} is not in this "
                    f"sample (expected {expected})"
                )
            codes.append(mapped.to_numpy(dtype=np.int64))
        return self.class_index(*codes)

    def _owner_skill(self) -> dict[str, int]:
        skill = dict(zip(self.users["Name"], self.users["skill_level"].astype(int)))
        skill.update(zip(self.users["Id"], self.users["skill_level"].astype(int)))
        return skill

    # -- the Markov step ---------------------------------------------------------------------
    def season_factors(self, weeks: np.ndarray) -> np.ndarray:
        return calendar_factors(np.atleast_1d(weeks), self.fiscal_year_start_month)

    def transition_probabilities(self, week: int) -> np.ndarray:
        """Probabilities of the step outcomes during week `week`, shape (6, classes, stages,
        weeks in stage 0..26), stacked as advance, skip, back, lost, won, stay.

        Hazards combine as competing risks: with total weekly rate L, some event happens with
        probability 1 - exp(-L), shared in proportion to the rates."""
        return self._probabilities(self.season_factors(np.array([week]))[0])

    def _probabilities(self, factors: np.ndarray) -> np.ndarray:
        """Step probabilities for one week's calendar factors (cached: weeks share a few)."""
        key = tuple(np.round(factors, 12))
        cached = self._cache.get(("probabilities", key))
        if cached is None:
            rates = self._base_rates * factors[SEASON_OF_EVENT][:, None, None, None]
            total = rates.sum(axis=0)
            share = np.divide(-np.expm1(-total), total, out=np.zeros_like(total), where=total > 0)
            cached = np.empty((6, *total.shape))
            cached[:5] = rates * share
            cached[5] = np.exp(-total)
            cached.setflags(write=False)
            self._cache[("probabilities", key)] = cached
        return cached

    def step(
        self,
        deal_class: np.ndarray,
        stage: np.ndarray,
        weeks_in_stage: np.ndarray,
        week: int,
        uniforms: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One week of the Markov process for open deals: (outcome, new stage, new weeks in stage).

        `uniforms` are U(0,1) draws, one per deal; the outcome is the first of advance, skip,
        back, lost, won whose cumulative probability exceeds the draw, else stay."""
        probs = self.transition_probabilities(week)
        p = probs[:5][:, deal_class, stage, weeks_in_stage]
        outcome = (uniforms[None, :] >= np.cumsum(p, axis=0)).sum(axis=0).astype(np.int8)
        n_open = self.n_open_stages(deal_class)
        new_stage = stage + STAGE_DELTA[outcome]
        new_stage = np.where(outcome == WON, n_open, np.where(outcome == LOST, n_open + 1, new_stage))
        new_weeks = np.where(outcome == STAY, np.minimum(weeks_in_stage + 1, WEEKS_IN_STAGE_CAP), 0)
        return outcome, new_stage.astype(np.int16), new_weeks.astype(np.int16)

    # -- exact win probability ---------------------------------------------------------------
    def _valid_states(self) -> np.ndarray:
        n_open = self.n_open_stages(np.arange(self.n_classes))
        return np.arange(self.max_open_stages)[None, :] < n_open[:, None]

    def value_table(self, first_boundary: int, last_boundary: int) -> np.ndarray:
        """V_b for boundaries b in [first_boundary, last_boundary]: shape (weeks, classes,
        stages, weeks in stage); the probability of eventually winning from each open state.

        Backward induction from a horizon far enough ahead that the still-open probability
        there is below TRUTH_TOLERANCE for every state (checked; the horizon doubles if not)."""
        key = ("values", first_boundary, last_boundary)
        if key in self._cache:
            return self._cache[key]
        valid = self._valid_states()
        horizon = 420
        while True:
            # Beyond the last boundary, carry two bounds: deals still open at the horizon counted
            # as lost (values[0]) and as won (values[1]). Their gap at boundary last + 1 bounds the
            # error of every earlier value (an earlier state reaches it with total probability <= 1).
            weeks = np.arange(last_boundary + horizon - 1, first_boundary - 1, -1)
            factors = self.season_factors(weeks)
            values = np.zeros((2, self.n_classes, self.max_open_stages, WEEKS_IN_STAGE_CAP + 1))
            values[1][valid] = 1.0
            for i in range(horizon - 1):
                values = _backward_step(self._probabilities(factors[i]), values, valid)
            gap = float((values[1] - values[0]).max())
            if gap <= TRUTH_TOLERANCE:
                break
            horizon *= 2
        value = values[0]
        table = np.empty((last_boundary - first_boundary + 1, *value.shape))
        for i, week in enumerate(weeks[horizon - 1 :]):
            value = _backward_step(self._probabilities(factors[horizon - 1 + i]), value, valid)
            table[week - first_boundary] = value
        table.setflags(write=False)
        for old in [k for k in self._cache if k[0] == "values"]:
            del self._cache[old]
        self._cache[key] = table
        return table

    def win_probability(
        self, deal_class: np.ndarray, stage: np.ndarray, weeks_in_stage: np.ndarray, boundary_week: np.ndarray
    ) -> np.ndarray:
        """The exact probability of eventually winning for open deals in the given states at the
        given week boundaries (weeks in stage above 26 count as 26)."""
        boundary_week = np.asarray(boundary_week, dtype=np.int64)
        if boundary_week.size == 0:
            return np.empty(0)
        lo, hi = int(boundary_week.min()), int(boundary_week.max())
        cached = [k for k in self._cache if k[0] == "values" and k[1] <= lo and k[2] >= hi]
        if cached:
            lo = cached[0][1]
            table = self._cache[cached[0]]
        else:
            table = self.value_table(lo, hi)
        return table[
            boundary_week - lo,
            np.asarray(deal_class),
            np.asarray(stage),
            np.minimum(np.asarray(weeks_in_stage), WEEKS_IN_STAGE_CAP),
        ]

    def true_win_probability(self, frame: pd.DataFrame) -> pd.Series:
        """The true probability of eventually winning for each row of a point-in-time frame (as
        `etl.pipeline_state.pipeline_at_many` produces): open rows from their state at
        `snapshot_at` (see the `sample_crm` package docstring for how weeks in stage are counted), 1 for won
        rows and 0 for lost rows. Index aligned with `frame`."""
        status = self._statuses(frame)
        out = np.where(status == STATUS_WON, 1.0, 0.0)
        is_open = status == STATUS_OPEN
        if is_open.any():
            deal_class, stage, weeks_in_stage, boundary = self._open_states(frame.loc[is_open])
            out[is_open] = self.win_probability(deal_class, stage, weeks_in_stage, boundary)
        return pd.Series(out, index=frame.index, name="true_win_probability", dtype="float64")

    def true_win_within_probability(self, frame: pd.DataFrame, horizon_days: float) -> pd.Series:
        """The true probability that each row's deal is won before `snapshot_at` + `horizon_days`
        (the event a scorer trained on horizon labels predicts), for the same frame as
        `true_win_probability`: backward induction over the weeks from the row's boundary whose
        changes (weekdays 06:00-20:00, up to Friday 20:00) all fall before that instant, and over
        the week that holds it, whose step counts only as far as its change falls before the
        instant (`change_share_before`: the change's day is uniform over the week's business days,
        its time uniform over 06:00-20:00); 0 for a deal still open after that; 1 for won rows and
        0 for lost ones."""
        status = self._statuses(frame)
        out = np.where(status == STATUS_WON, 1.0, 0.0)
        is_open = status == STATUS_OPEN
        if not is_open.any():
            return pd.Series(out, index=frame.index, name="true_win_within_probability", dtype="float64")
        rows = frame.loc[is_open]
        deal_class, stage, weeks_in_stage, boundary = self._open_states(rows)
        end_us = utc_microseconds(rows["snapshot_at"], "snapshot_at", rows.index) + round(float(horizon_days) * DAY_SECONDS * 1e6)
        # Weeks from the boundary whose change window (to Friday 20:00) ends by the instant, then the
        # share of the next week's change falling before it.
        full = np.maximum((end_us - _week_start_us(boundary) - WINDOW_END_SECONDS * 1_000_000) // (WEEK_SECONDS * 1_000_000) + 1, 0)
        share = self.change_share_before(boundary + full, end_us)
        valid = self._valid_states()
        result = np.zeros(len(deal_class))
        groups = pd.DataFrame({"b": boundary, "full": full, "share": share})
        for (b, n_full, part), at in groups.groupby(["b", "full", "share"], sort=False).indices.items():
            values = np.zeros((self.n_classes, self.max_open_stages, WEEKS_IN_STAGE_CAP + 1))
            if part > 0:
                values = part * _backward_step(self.transition_probabilities(int(b + n_full)), values, valid)
            for week in range(int(b + n_full) - 1, int(b) - 1, -1):
                values = _backward_step(self.transition_probabilities(week), values, valid)
            result[at] = values[deal_class[at], stage[at], np.minimum(weeks_in_stage[at], WEEKS_IN_STAGE_CAP)]
        out[is_open] = result
        return pd.Series(out, index=frame.index, name="true_win_within_probability", dtype="float64")

    def change_share_before(self, weeks: np.ndarray, instant_us: np.ndarray) -> np.ndarray:
        """For each week and instant (microseconds since the Unix epoch, UTC), the probability
        that a change of that week happens before the instant: its day is uniform over the week's
        business days (`business_days`), its time of day uniform over `EVENT_HOURS`."""
        weeks = np.asarray(weeks, dtype=np.int64)
        instant_us = np.asarray(instant_us)
        first, last = self.business_days(weeks)
        first_opens = _week_start_us(weeks) + EVENT_HOURS[0] * 3_600_000_000
        span = (EVENT_HOURS[1] - EVENT_HOURS[0]) * 3_600_000_000
        covered = np.zeros(len(weeks))
        for day in range(5):
            share = np.clip((instant_us - first_opens - day * DAY_SECONDS * 1_000_000) / span, 0.0, 1.0)
            covered += np.where((day >= first) & (day <= last), share, 0.0)
        days = last - first + 1
        return np.where(days > 0, covered / np.maximum(days, 1), 0.0)

    def _statuses(self, frame: pd.DataFrame) -> np.ndarray:
        """The status of each row, after checking the frame has what the truth needs."""
        required = ["snapshot_at", "pipeline", "stage", "stage_entered_at", "owner", "product", "account_segment", "status"]
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise ValueError(f"true_win_probability: frame is missing column(s) {missing}; expected {required}")
        status = frame["status"].astype("string").to_numpy(dtype=object, na_value=None)
        unknown = ~np.isin(status, [STATUS_OPEN, STATUS_WON, STATUS_LOST])
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise ValueError(
                f"true_win_probability: row {row}, column 'status': expected open/won/lost, got {status[row]!r}"
            )
        return status

    def _open_states(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(effect class, stage position, weeks in stage, week boundary) of open rows."""
        deal_class = self.deal_class(
            rows["pipeline"], rows["owner"], rows["product"], rows["account_segment"], row_labels=rows.index
        )
        pipeline_codes = self.class_parts(deal_class)[0]
        stage = np.full(len(rows), -1, dtype=np.int64)
        stage_names = rows["stage"].astype("string").to_numpy(dtype=object, na_value=None)
        for code, name in enumerate(self.pipelines):
            in_pipeline = pipeline_codes == code
            positions = {s: i for i, s in enumerate(self.stages[name].open_stages)}
            mapped = pd.Series(stage_names[in_pipeline], dtype=object).map(positions)
            stage[in_pipeline] = mapped.fillna(-1).to_numpy(dtype=np.int64)
        if (stage < 0).any():
            row = int(np.flatnonzero(stage < 0)[0])
            raise ValueError(
                f"true_win_probability: row {rows.index[row]}, column 'stage': {stage_names[row]!r} "
                f"is not an open stage of pipeline {rows['pipeline'].iloc[row]!r}"
            )
        snapshot = utc_microseconds(rows["snapshot_at"], "snapshot_at", rows.index)
        entered = utc_microseconds(rows["stage_entered_at"], "stage_entered_at", rows.index)
        boundary, weeks_in_stage = boundary_state(snapshot, entered)
        return deal_class, stage, weeks_in_stage, boundary

    # -- who sells what ----------------------------------------------------------------------
    def _mixes(self) -> dict[str, np.ndarray]:
        """The draw probabilities of a deal's attributes (the same ones the simulation uses)."""
        cached = self._cache.get(("mixes",))
        if cached is not None:
            return cached
        kinds = np.array(self.pipeline_kinds)
        pipeline_by_focus = np.zeros((len(TEAM_FOCI), len(self.pipelines)))
        for f, focus in enumerate(TEAM_FOCI):
            for p, kind in enumerate(kinds):
                pipeline_by_focus[f, p] = FOCUS_KINDS[focus][kind] / (kinds == kind).sum()
        pipeline_by_focus = np.where(pipeline_by_focus.sum(1, keepdims=True) > 0, pipeline_by_focus, 1.0)
        pipeline_by_focus /= pipeline_by_focus.sum(1, keepdims=True)
        segment_by_focus = np.array([FOCUS_SEGMENTS[f] for f in TEAM_FOCI])
        product = np.array([KIND_PRODUCTS[k] for k in kinds])[:, None, :] * SEGMENT_PRODUCT_TILT[None, :, :]
        product = np.where(product.sum(-1, keepdims=True) > 0, product, 1.0)
        product /= product.sum(-1, keepdims=True)  # (pipeline, segment, product)
        rep_share = self.users["deal_share"].to_numpy()
        focus_of_rep = self.teams["focus_code"].to_numpy()[self.users["team_code"].to_numpy()]
        mixes = {
            "rep_share": rep_share,
            "focus_of_rep": focus_of_rep,
            "pipeline_by_focus": pipeline_by_focus,
            "segment_by_focus": segment_by_focus,
            "product": product,
        }
        self._cache[("mixes",)] = mixes
        return mixes

    def team_class_share(self) -> np.ndarray:
        """Expected share of all deals in each (team, effect class): shape (teams, classes)."""
        m = self._mixes()
        reps = np.arange(len(self.users))
        joint = (
            m["rep_share"][:, None, None, None]
            * m["pipeline_by_focus"][m["focus_of_rep"]][:, :, None, None]
            * m["segment_by_focus"][m["focus_of_rep"]][:, None, :, None]
            * m["product"][None, :, :, :]
        )  # (rep, pipeline, segment, product)
        rep, pipe, seg, prod = np.meshgrid(
            reps, np.arange(len(self.pipelines)), np.arange(len(SEGMENTS)), np.arange(len(PRODUCTS)), indexing="ij"
        )
        skill = self.users["skill_level"].to_numpy()[rep]
        team = self.users["team_code"].to_numpy()[rep]
        share = np.zeros((len(self.teams), self.n_classes))
        np.add.at(share, (team.ravel(), self.class_index(pipe, skill, prod, seg).ravel()), joint.ravel())
        return share

    def mean_amount(self) -> np.ndarray:
        """Expected amount of a deal of each effect class (amount revisions have mean 1)."""
        pipeline, _, product, segment = self.class_parts(np.arange(self.n_classes))
        kind_factor = np.array([KIND_AMOUNT[k] for k in self.pipeline_kinds])[pipeline]
        return SEGMENT_AMOUNT[segment] * PRODUCT_AMOUNT[product] * kind_factor * math.exp(AMOUNT_SIGMA**2 / 2)

    def creation_weights(self, weeks: np.ndarray) -> np.ndarray:
        """Relative number of deals created in each week (growth, season, business days open in
        the simulated span); weeks after `end_date` continue the trend as if the span went on."""
        weeks = np.asarray(weeks, dtype=np.int64)
        years_in = (weeks - self.first_week) / 52.1775
        weight = np.exp(math.log1p(GROWTH_PER_YEAR) * years_in) * creation_season(weeks, self.fiscal_year_start_month)
        first, last = self.business_days(weeks)
        return np.where(weeks >= self.first_week, weight * np.maximum(last - first + 1, 0) / 5.0, 0.0)

    def business_days(self, weeks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last weekday (0 = Monday .. 4 = Friday) on which changes can happen in each
        week: from `start_date` in the first week, up to `end_date` in the last week."""
        weeks = np.asarray(weeks, dtype=np.int64)
        first = np.where(weeks == self.first_week, min(self.start_date.weekday(), 5), 0)
        last = np.where(weeks == self.last_week, min(self.end_date.weekday(), 4), 4)
        return first, last


_STAY_INDEX = np.minimum(np.arange(WEEKS_IN_STAGE_CAP + 1) + 1, WEEKS_IN_STAGE_CAP)


def _backward_step(p: np.ndarray, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """V_k from V_(k+1) for week k's step probabilities `p` (shape (6, classes, stages, weeks in
    stage)); `values` may carry leading axes. Won contributes 1, lost 0."""
    entry = values[..., 0]
    to_next = np.zeros_like(entry)
    to_next[..., :-1] = entry[..., 1:]
    to_skip = np.zeros_like(entry)
    to_skip[..., :-2] = entry[..., 2:]
    to_back = np.zeros_like(entry)
    to_back[..., 1:] = entry[..., :-1]
    out = (
        p[ADVANCE] * to_next[..., None]
        + p[SKIP] * to_skip[..., None]
        + p[BACK] * to_back[..., None]
        + p[WON]
        + p[STAY] * values[..., _STAY_INDEX]
    )
    out[..., ~valid, :] = 0.0
    return out


def _week_start_us(weeks: np.ndarray) -> np.ndarray:
    """Monday 00:00 UTC of each week, in microseconds since the Unix epoch."""
    return (EPOCH_MONDAY_DAY * DAY_SECONDS + np.asarray(weeks, dtype=np.int64) * WEEK_SECONDS) * 1_000_000


def boundary_state(snapshot_us: np.ndarray, entered_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(week boundary, weeks in stage) of deals observed at `snapshot_us` whose stage was entered
    at `entered_us` (both microseconds since the Unix epoch, UTC); the rule of the `sample_crm` package docstring."""
    week_us = WEEK_SECONDS * 1_000_000
    epoch_us = EPOCH_MONDAY_DAY * DAY_SECONDS * 1_000_000
    week, offset = np.divmod(np.asarray(snapshot_us, dtype=np.int64) - epoch_us, week_us)
    boundary = week + (offset >= WINDOW_END_SECONDS * 1_000_000)
    entered_week = (np.asarray(entered_us, dtype=np.int64) - epoch_us) // week_us
    boundary = np.maximum(boundary, entered_week + 1)
    return boundary, np.minimum(boundary - entered_week - 1, WEEKS_IN_STAGE_CAP)


def utc_microseconds(values: pd.Series, column: str, index: pd.Index) -> np.ndarray:
    ts = pd.to_datetime(values)
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    if ts.isna().any():
        row = index[int(np.flatnonzero(ts.isna().to_numpy())[0])]
        raise ValueError(f"true_win_probability: row {row}, column {column!r}: expected a timestamp, got a blank")
    return ts.to_numpy(dtype="datetime64[us]").astype(np.int64)


def _build_org(n_deals: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Teams (region, focus) and reps (name, team, title, hidden skill level, share of deals)."""
    n_reps = min(500, 12 + n_deals // 2500)
    n_teams = max(4, round(n_reps / REPS_PER_TEAM))
    region = np.array([TEAM_REGION_CYCLE[i % len(TEAM_REGION_CYCLE)] for i in range(n_teams)])
    focus = np.array([TEAM_FOCUS_CYCLE[i % len(TEAM_FOCUS_CYCLE)] for i in range(n_teams)])
    base = [f"{REGION_CODES[r]} {TEAM_FOCI[f]}" for r, f in zip(region, focus)]
    seen: dict[str, int] = {}
    names = []
    for name in base:
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name} {seen[name]}")
    role_ids = salesforce_ids("role", np.arange(n_teams)).to_pylist()
    teams = pd.DataFrame(
        {
            "team": names,
            "region": [REGIONS[r] for r in region],
            "focus": [TEAM_FOCI[f] for f in focus],
            "focus_code": focus,
            "role_id": role_ids,
        }
    )
    combos = rng.permutation(len(FIRST_NAMES) * len(LAST_NAMES))[:n_reps]
    first = [FIRST_NAMES[c // len(LAST_NAMES)] for c in combos]
    last = [LAST_NAMES[c % len(LAST_NAMES)] for c in combos]
    team_code = np.arange(n_reps) % n_teams
    skill = rng.choice(len(SKILL_LEVELS), size=n_reps, p=SKILL_SHARES)
    senior = rng.random(n_reps) < 0.3
    share = rng.lognormal(0.0, 0.3, n_reps)
    titles = [("Senior " if s else "") + FOCUS_TITLES[TEAM_FOCI[focus[t]]] for s, t in zip(senior, team_code)]
    users = pd.DataFrame(
        {
            "Id": salesforce_ids("user", np.arange(n_reps)).to_pylist(),
            "Name": [f"{a} {b}" for a, b in zip(first, last)],
            "FirstName": first,
            "LastName": last,
            "Department": [names[t] for t in team_code],
            "Division": [teams["region"].iloc[t] for t in team_code],
            "Title": titles,
            "IsActive": "1",
            "UserRoleId": [role_ids[t] for t in team_code],
            "team_code": team_code,
            "skill_level": skill,
            "deal_share": share / share.sum(),
        }
    )
    return teams, users


def _base_rates(kinds: Sequence[str], n_open: np.ndarray) -> np.ndarray:
    """Weekly hazards before the calendar factors: shape (5 outcomes, classes, stages, weeks in
    stage), outcomes advance, skip, back, lost, won.

    Per pipeline with n open stages, the loss rate of each stage is set so that, before stale
    losses, a deal wins with the kind's target probability, losing more in the early stages.
    Class effects: speed (segment x product) scales every hazard; the effect (skill + product +
    segment) raises forward and win hazards and lowers the loss hazard."""
    weeks = np.arange(WEEKS_IN_STAGE_CAP + 1)
    fresh = np.exp(-np.maximum(weeks - 2, 0) / 8.0)  # forward and win hazards fall with time in stage
    stale = 1.0 + 0.3 * np.maximum(weeks - 5, 0)  # the loss hazard rises with it
    effect = SKILL_LEVELS[:, None, None] + PRODUCT_EFFECT[None, :, None] + SEGMENT_EFFECT[None, None, :]
    speed = (PRODUCT_SPEED[:, None] * SEGMENT_SPEED[None, :])[None, :, :]
    up = (speed * np.exp(EFFECT_SLOPE * effect))[..., None, None]
    down = (speed * np.exp(-EFFECT_SLOPE * effect))[..., None, None]
    flat = np.broadcast_to(speed, effect.shape)[..., None, None]
    max_open = int(n_open.max())
    rates = np.zeros((5, len(kinds), len(SKILL_LEVELS), len(PRODUCTS), len(SEGMENTS), max_open, len(weeks)))
    for p, (kind, n) in enumerate(zip(kinds, n_open)):
        dyn = KIND_DYNAMICS[kind]
        pos = np.arange(n)
        hurdle_share = 2.0 * (n - pos) / (n * (n + 1))
        survive = dyn["target"] ** hurdle_share
        exit_rate = np.where(pos < n - 1, dyn["advance"], dyn["won"])
        loss = exit_rate * (1 - survive) / survive
        advance = np.where(pos < n - 1, dyn["advance"], 0.0)
        skip = np.where(pos < n - 2, SKIP_SHARE, 0.0)
        back = np.where(pos >= 1, BACK_RATE, 0.0)
        won = np.where(pos == n - 1, dyn["won"], np.where(pos == n - 2, EARLY_WIN_RATE, 0.0))
        rates[ADVANCE, p, ..., :n, :] = up * (advance * (1 - skip))[:, None] * fresh
        rates[SKIP, p, ..., :n, :] = up * (advance * skip)[:, None] * fresh
        rates[BACK, p, ..., :n, :] = flat * back[:, None] * np.ones_like(fresh)
        rates[LOST, p, ..., :n, :] = down * loss[:, None] * stale
        rates[WON, p, ..., :n, :] = up * won[:, None] * fresh
    rates = rates.reshape(5, -1, max_open, len(weeks))
    rates.setflags(write=False)
    return rates
