"""Stage order: which stages each pipeline has, in which order, which are won and lost, and the
CRM's default probability for each. The one place stage order is decided.

Where a pipeline's order comes from is kept with it (`PipelineStages.order_source`):
- `configured`: dealcast.toml `[[pipelines]]`, a reader's own setting such as
  `[sources.pipedrive] stage_order`, or a mapping file's `[pipeline]`;
- `crm`: the export states it (Salesforce `StageSortOrder`);
- `inferred`: worked out from the export. `order_from_moves` orders stages so that the fewest of
  the stage moves deals actually made go backward; with no moves to learn from, an order is a
  guess and its `order_basis` says what it rests on.
"""

from __future__ import annotations

import logging

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

STATUS_OPEN = "open"
STATUS_WON = "won"
STATUS_LOST = "lost"
STATUSES = (STATUS_OPEN, STATUS_WON, STATUS_LOST)

ORDER_CONFIGURED = "configured"
ORDER_CRM = "crm"
ORDER_INFERRED = "inferred"
ORDER_SOURCES = (ORDER_CONFIGURED, ORDER_CRM, ORDER_INFERRED)


@dataclass(frozen=True)
class PipelineStages:
    """One pipeline's sales process: open stages in order (order 1..n), then won (n+1) and lost (n+2)."""

    name: str
    open_stages: tuple[str, ...]
    won_stage: str = "Closed Won"
    lost_stage: str = "Closed Lost"
    probabilities: dict[str, float] = field(default_factory=dict)
    # Where the order of the open stages comes from (ORDER_SOURCES), and in words what it rests on.
    order_source: str = ORDER_CONFIGURED
    order_basis: str = "dealcast.toml [[pipelines]]"

    def __post_init__(self) -> None:
        if not self.open_stages:
            raise ValueError(f"pipeline {self.name!r}: needs at least one open stage")
        if self.order_source not in ORDER_SOURCES:
            raise ValueError(f"pipeline {self.name!r}: order_source must be one of {ORDER_SOURCES}, got {self.order_source!r}")
        names = list(self.open_stages) + [self.won_stage, self.lost_stage]
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline {self.name!r}: stage names repeat: {names}")

    @property
    def won_order(self) -> int:
        return len(self.open_stages) + 1

    @property
    def lost_order(self) -> int:
        return len(self.open_stages) + 2

    def order_of(self, stage: str) -> int | None:
        if stage in self.open_stages:
            return self.open_stages.index(stage) + 1
        if stage == self.won_stage:
            return self.won_order
        if stage == self.lost_stage:
            return self.lost_order
        return None

    def status_of(self, stage: str) -> str | None:
        if stage in self.open_stages:
            return STATUS_OPEN
        if stage == self.won_stage:
            return STATUS_WON
        if stage == self.lost_stage:
            return STATUS_LOST
        return None

    def probability_of(self, stage: str) -> float:
        """The CRM's default probability of the stage (0-1); won is 1 and lost is 0."""
        status = self.status_of(stage)
        if status == STATUS_WON:
            return 1.0
        if status == STATUS_LOST:
            return 0.0
        prob = self.probabilities.get(stage, math.nan)
        return float(prob)


class StageCatalog:
    """All pipelines' stage orders, looked up by pipeline name."""

    def __init__(self, pipelines: list[PipelineStages] | tuple[PipelineStages, ...] = ()) -> None:
        self._pipelines: dict[str, PipelineStages] = {}
        for p in pipelines:
            if p.name in self._pipelines:
                raise ValueError(f"pipeline {p.name!r} is configured twice")
            self._pipelines[p.name] = p

    def __contains__(self, pipeline: object) -> bool:
        return pipeline in self._pipelines

    def __getitem__(self, pipeline: str) -> PipelineStages:
        try:
            return self._pipelines[pipeline]
        except KeyError:
            raise KeyError(
                f"pipeline {pipeline!r} has no stage order; known pipelines: {sorted(self._pipelines)}"
            ) from None

    def __iter__(self):
        return iter(self._pipelines.values())

    @property
    def names(self) -> list[str]:
        return list(self._pipelines)

    def with_pipeline(self, pipeline: PipelineStages) -> "StageCatalog":
        """A catalogue that also knows `pipeline` (configured pipelines win over inferred ones)."""
        if pipeline.name in self._pipelines:
            return self
        return StageCatalog([*self._pipelines.values(), pipeline])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "StageCatalog":
        """Rebuild a catalogue from `lookup_frame()` output (e.g. the `pipeline_stages` table)."""
        pipelines = []
        for name, part in frame.sort_values(["pipeline", "stage_order"]).groupby("pipeline", sort=False):
            open_part = part[part["stage_status"] == STATUS_OPEN]
            won = part.loc[part["stage_status"] == STATUS_WON, "stage"]
            lost = part.loc[part["stage_status"] == STATUS_LOST, "stage"]
            origin = {
                column: str(part[column].iloc[0])
                for column in ("order_source", "order_basis")
                if column in part.columns and pd.notna(part[column].iloc[0])
            }
            pipelines.append(
                PipelineStages(
                    name=str(name),
                    open_stages=tuple(open_part["stage"].astype(str)),
                    won_stage=str(won.iloc[0]),
                    lost_stage=str(lost.iloc[0]),
                    probabilities=dict(zip(open_part["stage"].astype(str), open_part["stage_probability"].astype(float))),
                    **origin,
                )
            )
        return cls(pipelines)

    def lookup_frame(self) -> pd.DataFrame:
        """One row per (pipeline, stage): stage_order, stage_status, stage_probability (the CRM's
        default), and the pipeline's order_source and order_basis."""
        rows = []
        for p in self._pipelines.values():
            for stage in (*p.open_stages, p.won_stage, p.lost_stage):
                rows.append(
                    {
                        "pipeline": p.name,
                        "stage": stage,
                        "stage_order": p.order_of(stage),
                        "stage_status": p.status_of(stage),
                        "stage_probability": p.probability_of(stage),
                        "order_source": p.order_source,
                        "order_basis": p.order_basis,
                    }
                )
        frame = pd.DataFrame(
            rows,
            columns=["pipeline", "stage", "stage_order", "stage_status", "stage_probability", "order_source", "order_basis"],
        )
        return frame.astype({"stage_order": "int64", "stage_probability": "float64"})

    def annotate(self, frame: pd.DataFrame, pipeline_col: str = "pipeline", stage_col: str = "stage") -> pd.DataFrame:
        """`frame` with stage_order, stage_status and stage_probability added (NaN/None for unknown stages)."""
        lookup = self.lookup_frame().rename(columns={"pipeline": pipeline_col, "stage": stage_col})
        lookup = lookup.drop(columns=["order_source", "order_basis"])
        out = frame.drop(columns=[c for c in ("stage_order", "stage_status", "stage_probability") if c in frame], errors="ignore")
        # The merge is done on the distinct (pipeline, stage) pairs, a few dozen, and its rows are
        # spread to every row by the pair's code: a merge of millions of history rows factorised
        # both text keys of every row again (2.6 s of each history rebuild at a million deals).
        # Same rows, columns and types as `out.merge(lookup, how="left")`.
        keys = [pipeline_col, stage_col]
        if len(out) == 0 or any(isinstance(out[c].dtype, pd.CategoricalDtype) for c in keys):
            # (A categorical key comes out of the merge as the lookup's type.)
            return out.merge(lookup, on=[pipeline_col, stage_col], how="left", validate="many_to_one")
        pipelines, pipeline_names = pd.factorize(out[pipeline_col], use_na_sentinel=False)
        stages, stage_names = pd.factorize(out[stage_col], use_na_sentinel=False)
        width = max(len(stage_names), 1)
        pair_of_row, pairs = pd.factorize(pipelines.astype(np.int64) * width + stages)
        distinct = pd.DataFrame(
            {pipeline_col: pipeline_names.take(pairs // width), stage_col: stage_names.take(pairs % width)}
        )
        found = distinct.merge(lookup, on=[pipeline_col, stage_col], how="left", validate="many_to_one")
        added = found.drop(columns=[pipeline_col, stage_col]).iloc[pair_of_row].reset_index(drop=True)
        return pd.concat([out.reset_index(drop=True), added], axis=1)


# --------------------------------------------------------------------------------------------
# Inferring an order from the moves deals made

# Up to this many open stages the order with the fewest backward moves is found exactly (a dynamic
# programme over subsets of stages: 2^n states); beyond it, by local search.
EXACT_ORDER_LIMIT = 13


@dataclass(frozen=True)
class InferredOrder:
    """Open stages in the inferred order, with how well the observed moves fit it."""

    stages: tuple[str, ...]
    moves: int  # moves between two different open stages that the order was inferred from
    backward: int  # how many of them go backward under `stages`
    exact: bool  # True when no other order has fewer backward moves (False: local search)

    @property
    def backward_share(self) -> float:
        return self.backward / self.moves if self.moves else math.nan


def stage_moves(deal: pd.Series, stage: pd.Series, at: pd.Series) -> pd.DataFrame:
    """The moves between stages in per-deal timelines: one row per (from_stage, to_stage) with the
    number of times a deal went from one to the next (columns from_stage, to_stage, moves).

    Rows are a deal's stage entries (`at` when it entered `stage`); blank stages are ignored.
    Entries of a deal that share their instant (a bulk import that stamped several stages at once)
    say nothing about their order and are left out; the entries around them still pair up.
    """
    frame = pd.DataFrame({"deal": deal.to_numpy(), "stage": stage.to_numpy(), "at": at.to_numpy()})
    frame = frame.loc[frame["stage"].notna() & frame["at"].notna()]
    frame = frame.loc[~frame.duplicated(["deal", "at"], keep=False)]
    frame = frame.sort_values(["deal", "at"], kind="stable")
    same_deal = frame["deal"].eq(frame["deal"].shift(-1)).to_numpy(dtype=bool)
    following = frame["stage"].shift(-1)
    moved = same_deal & frame["stage"].ne(following).to_numpy(dtype=bool)
    pairs = pd.DataFrame({"from_stage": frame["stage"][moved], "to_stage": following[moved]})
    counts = pairs.groupby(["from_stage", "to_stage"], sort=True).size()
    return counts.rename("moves").reset_index()


def order_from_moves(stages: Sequence[str], moves: pd.DataFrame) -> InferredOrder:
    """The order of `stages` under which the fewest of `moves` go backward.

    `stages` lists the open stages in a fallback order (what the reader would use without moves);
    among orders with equally few backward moves, the one closest to it is chosen (fewest pairs
    of stages swapped), so stages no deal moved between keep their fallback order. `moves`
    (from `stage_moves`) may hold stages outside `stages` (won, lost): those moves are ignored.
    Exact up to `EXACT_ORDER_LIMIT` stages (the minimum feedback arc set of the move graph);
    beyond, the better of two local searches (from the fallback and from a greedy order).
    """
    names = list(dict.fromkeys(stages))
    n = len(names)
    position = {name: i for i, name in enumerate(names)}
    weight = np.zeros((n, n), dtype=np.int64)
    for a, b, count in zip(moves["from_stage"], moves["to_stage"], moves["moves"]):
        if a in position and b in position and a != b:
            weight[position[a], position[b]] += int(count)
    total = int(weight.sum())
    if n <= 1:
        return InferredOrder(tuple(names), total, 0, True)
    # cost[a, j]: what placing j before a costs: the moves a -> j (backward), then, to break ties,
    # 1 when the fallback order has a before j. One integer: backward moves dominate.
    tie = np.triu(np.ones((n, n), dtype=np.int64), k=1)  # tie[a, j] = 1 when a comes before j in the fallback
    scale = n * n + 1
    cost = weight * scale + tie
    order = _exact_order(cost) if n <= EXACT_ORDER_LIMIT else _local_search_order(cost, weight)
    placed = np.asarray(order)
    rank = np.empty(n, dtype=np.int64)
    rank[placed] = np.arange(n)
    backward = int(weight[rank[:, None] > rank[None, :]].sum())
    return InferredOrder(tuple(names[i] for i in order), total, backward, n <= EXACT_ORDER_LIMIT)


def insert_by_moves(stated: Sequence[str], extra: Sequence[str], moves: pd.DataFrame) -> InferredOrder:
    """`stated` (an order the export states, kept as it is) with each stage of `extra` (stages the
    statement lacks, such as a stage renamed or retired that only the history still shows) inserted
    where the fewest of `moves` go backward, one stage at a time in the order of `extra`.

    Among equally good places the latest is chosen, so a stage no deal moved to or from goes last
    among the open stages. `moves` (from `stage_moves`) may hold other stages: their moves are ignored
    until they are placed. The returned `moves`/`backward` count the moves between the stages placed.
    """
    order = list(dict.fromkeys(stated))
    weight: dict[tuple[str, str], int] = {}
    for a, b, count in zip(moves["from_stage"], moves["to_stage"], moves["moves"]):
        if a != b:
            weight[(str(a), str(b))] = weight.get((str(a), str(b)), 0) + int(count)

    def backward(candidate: list[str]) -> int:
        rank = {name: i for i, name in enumerate(candidate)}
        return sum(
            count for (a, b), count in weight.items() if a in rank and b in rank and rank[a] > rank[b]
        )

    for stage in dict.fromkeys(extra):
        if stage in order:
            continue
        options = [order[:i] + [stage] + order[i:] for i in range(len(order) + 1)]
        costs = [backward(option) for option in options]
        best = min(costs)
        order = options[max(i for i, c in enumerate(costs) if c == best)]
    placed = set(order)
    total = sum(count for (a, b), count in weight.items() if a in placed and b in placed)
    return InferredOrder(tuple(order), total, backward(order), False)


def _exact_order(cost: np.ndarray) -> list[int]:
    """The order minimising the sum of cost[a, j] over pairs with j placed before a, by dynamic
    programming over the sets of stages placed first."""
    n = len(cost)
    full = 1 << n
    column_total = cost.sum(axis=0)
    # into[S, j]: sum of cost[a, j] over a in S, built from S without its lowest stage.
    into = np.zeros((full, n), dtype=np.int64)
    for subset in range(1, full):
        low = subset & -subset
        into[subset] = into[subset ^ low] + cost[low.bit_length() - 1]
    best = np.full(full, np.iinfo(np.int64).max, dtype=np.int64)
    best[0] = 0
    last = np.full(full, -1, dtype=np.int64)
    bits = 1 << np.arange(n)
    for subset in range(full - 1):
        if best[subset] == np.iinfo(np.int64).max:
            continue
        free = (subset & bits) == 0
        # Placing j next: every stage not placed yet comes after it (cost[a, j] for a outside S and j).
        step = column_total - into[subset] - np.diag(cost)
        for j in np.flatnonzero(free):
            target = subset | int(bits[j])
            value = best[subset] + step[j]
            if value < best[target] or (value == best[target] and j < last[target]):
                best[target] = value
                last[target] = j
    order = []
    subset = full - 1
    while subset:
        j = int(last[subset])
        order.append(j)
        subset ^= 1 << j
    return order[::-1]


def _greedy_order(weight: np.ndarray) -> list[int]:
    """Eades, Lin and Smyth's greedy order for a feedback arc set: stages nothing moves out of go
    last, stages nothing moves into go first, otherwise the stage with the most moves out minus
    moves in goes next (ties: the fallback order)."""
    left = list(range(len(weight)))
    head: list[int] = []
    tail: list[int] = []
    while left:
        sub = weight[np.ix_(left, left)]
        out_moves = sub.sum(axis=1)
        in_moves = sub.sum(axis=0)
        sinks = [s for s, o in zip(left, out_moves) if o == 0]
        if sinks:
            tail = [sinks[-1], *tail]
            left.remove(sinks[-1])
            continue
        sources = [s for s, i in zip(left, in_moves) if i == 0]
        if sources:
            head.append(sources[0])
            left.remove(sources[0])
            continue
        pick = left[int(np.argmax(out_moves - in_moves))]
        head.append(pick)
        left.remove(pick)
    return head + tail


def _order_cost(cost: np.ndarray, order: list[int]) -> int:
    rank = np.empty(len(order), dtype=np.int64)
    rank[np.asarray(order)] = np.arange(len(order))
    return int(cost[rank[:, None] > rank[None, :]].sum())


def _local_search_order(cost: np.ndarray, weight: np.ndarray) -> list[int]:
    """A good order for many stages: from the fallback order and from the greedy order, move single
    stages to the position that lowers the cost most until no move helps; the better result wins."""
    results = [_improve(cost, list(range(len(cost)))), _improve(cost, _greedy_order(weight))]
    return min(results, key=lambda order: _order_cost(cost, order))


def _improve(cost: np.ndarray, order: list[int]) -> list[int]:
    improved = True
    while improved:
        improved = False
        for stage in range(len(cost)):
            p = order.index(stage)
            rest = order[:p] + order[p + 1 :]
            # Inserting `stage` at position q of `rest`: it is after rest[:q] and before rest[q:].
            after = cost[stage, rest]  # stage after other: cost[stage, other]
            before = cost[rest, stage]  # stage before other: cost[other, stage]
            totals = np.concatenate([[0], np.cumsum(after)]) + np.concatenate([np.cumsum(before[::-1])[::-1], [0]])
            q = int(np.argmin(totals))
            if totals[q] < totals[p]:
                order = rest[:q] + [stage] + rest[q:]
                improved = True
    return order


def log_inferred_order(pipeline: PipelineStages) -> None:
    """Say, once per load, the stage order a reader inferred for a pipeline the configuration does not name."""
    logging.getLogger(__name__).info(
        "pipeline %r is not configured; stage order inferred from %s: %s, won %r, lost %r",
        pipeline.name, pipeline.order_basis, list(pipeline.open_stages), pipeline.won_stage, pipeline.lost_stage,
    )
