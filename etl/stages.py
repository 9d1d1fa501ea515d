"""Stage order: which stages each pipeline has, in which order, which are won and lost, and the
CRM's default probability for each. The one place stage order is decided."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

STATUS_OPEN = "open"
STATUS_WON = "won"
STATUS_LOST = "lost"
STATUSES = (STATUS_OPEN, STATUS_WON, STATUS_LOST)


@dataclass(frozen=True)
class PipelineStages:
    """One pipeline's sales process: open stages in order (order 1..n), then won (n+1) and lost (n+2)."""

    name: str
    open_stages: tuple[str, ...]
    won_stage: str = "Closed Won"
    lost_stage: str = "Closed Lost"
    probabilities: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.open_stages:
            raise ValueError(f"pipeline {self.name!r}: needs at least one open stage")
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
            pipelines.append(
                PipelineStages(
                    name=str(name),
                    open_stages=tuple(open_part["stage"].astype(str)),
                    won_stage=str(won.iloc[0]),
                    lost_stage=str(lost.iloc[0]),
                    probabilities=dict(zip(open_part["stage"].astype(str), open_part["stage_probability"].astype(float))),
                )
            )
        return cls(pipelines)

    def lookup_frame(self) -> pd.DataFrame:
        """One row per (pipeline, stage): stage_order, status, crm default probability, is_open."""
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
                    }
                )
        frame = pd.DataFrame(
            rows, columns=["pipeline", "stage", "stage_order", "stage_status", "stage_probability"]
        )
        return frame.astype({"stage_order": "int64", "stage_probability": "float64"})

    def annotate(self, frame: pd.DataFrame, pipeline_col: str = "pipeline", stage_col: str = "stage") -> pd.DataFrame:
        """`frame` with stage_order, stage_status and stage_probability added (NaN/None for unknown stages)."""
        lookup = self.lookup_frame().rename(columns={"pipeline": pipeline_col, "stage": stage_col})
        out = frame.drop(columns=[c for c in ("stage_order", "stage_status", "stage_probability") if c in frame], errors="ignore")
        return out.merge(lookup, on=[pipeline_col, stage_col], how="left", validate="many_to_one")
