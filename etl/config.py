"""Project configuration: the `dealcast.toml` file plus the environment variables that say where
the exports are, which date a run is for and where the warehouse is.

Every setting is resolved here, once; the rest of the code receives a `Settings` object.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from etl.bookings import BOOKING_RULES, DEFAULT_BOOKING_RULE
from etl.stages import PipelineStages, StageCatalog
from etl.storage import is_url, location

ENV_PROJECT_DIR = "DEALCAST_PROJECT_DIR"
ENV_CONFIG = "DEALCAST_CONFIG"
ENV_EXPORTS_DIR = "DEALCAST_EXPORTS_DIR"
ENV_AS_OF = "DEALCAST_AS_OF"
# The first night (as_of) of the nightly partitions unless [schedule] first_night says otherwise.
DEFAULT_FIRST_NIGHT = dt.date(2015, 1, 1)
ENV_WAREHOUSE_URL = "DEALCAST_WAREHOUSE_URL"
ENV_MODEL_DIR = "DEALCAST_MODEL_DIR"
ENV_STORE_URL = "DEALCAST_STORE_URL"

CONFIG_FILE_NAME = "dealcast.toml"
SAMPLE_EXPORTS_DIR_NAME = "sample_exports"


class ConfigError(ValueError):
    """The configuration file or an environment variable holds a value Dealcast cannot use."""


def project_dir() -> Path:
    """The Dealcast project folder: `DEALCAST_PROJECT_DIR`, else the source checkout this package
    lives in (it holds `pyproject.toml`), else the current directory."""
    explicit = os.environ.get(ENV_PROJECT_DIR)
    if explicit:
        return Path(explicit).resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / CONFIG_FILE_NAME).is_file():
        return checkout
    return Path.cwd().resolve()


@dataclass(frozen=True)
class ValidationConfig:
    min_amount: float = 0.0
    max_amount: float = 1e9
    earliest_date: dt.date = dt.date(2000, 1, 1)
    latest_years_ahead: int = 10
    max_quarantine_share: float = 0.05
    max_volume_drop_share: float = 0.5
    # A pipeline whose stage order leaves more than this share of its deals' stage moves backward
    # is reported (log, ingest metadata, `dealcast summary`); it does not stop the run.
    warn_backward_share: float = 0.2


@dataclass(frozen=True)
class ModelConfig:
    # Closed deals (won, lost) the training rows must hold before gradient boosting is fitted
    # (Salesforce Einstein's bar) and before the regularised logistic model is (Gong's is 50/150).
    min_won: int = 200
    min_lost: int = 200
    logistic_min_won: int = 50
    logistic_min_lost: int = 50
    snapshot_frequency: str = "W-MON"
    test_share: float = 0.2
    calibration_share: float = 0.2
    # A folder or an object-store URL (see etl.storage); a relative folder is resolved by Settings.model_dir.
    artifact_dir: Path | str = Path("model_store")
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ForecastConfig:
    draws: int = 10_000
    seed: int = 20240101
    # Forecast backtest: how many of the latest finished quarters to re-forecast each night, and
    # whether its models are trained once per quarter ("quarter") or at every checkpoint ("checkpoint").
    backtest_quarters: int = 8
    backtest_retrain: str = "quarter"
    # Past quarters a night computes at most; the others come from the backtest cache
    # (forecast_backtest_cache) or, on the first nights, are computed on the nights after.
    backtest_new_quarters: int = 2


@dataclass(frozen=True)
class AnalyticsConfig:
    """`[analytics]`: stall thresholds set by the sales team instead of learned, and the stages
    that count as "the ask" in `ask_to_decision`."""

    # Stage name -> days (every pipeline with that stage), or pipeline name -> {stage -> days}
    # (that pipeline only; it wins over a stage-wide value).
    stall_days: dict[str, Any] = field(default_factory=dict)
    # Stage names; empty means found by name (proposal, quote, negotiation in en/es/fr/de/pt/it/nl;
    # etl.analytics.coaching.is_ask_stage_name); a pipeline without such a stage is not measured.
    ask_stages: tuple[str, ...] = ()

    def stall_thresholds(self, stages: StageCatalog) -> tuple[dict[tuple[str, str], float], list[str]]:
        """The configured threshold of each (pipeline, open stage) of `stages`, and the configured
        names that match no open stage there (to warn about: a typo, or a stage this CRM lacks)."""
        thresholds: dict[tuple[str, str], float] = {}
        unmatched: list[str] = []
        for name, value in self.stall_days.items():
            if isinstance(value, dict):
                continue
            matched = [p.name for p in stages if name in p.open_stages]
            thresholds.update({(pipeline, name): float(value) for pipeline in matched})
            if not matched:
                unmatched.append(name)
        for pipeline_name, per_stage in self.stall_days.items():
            if not isinstance(per_stage, dict):
                continue
            pipeline = next((p for p in stages if p.name == pipeline_name), None)
            for name, value in per_stage.items():
                if pipeline is not None and name in pipeline.open_stages:
                    thresholds[(pipeline_name, name)] = float(value)
                else:
                    unmatched.append(f"{pipeline_name} / {name}")
        return thresholds, unmatched


@dataclass(frozen=True)
class WarningsConfig:
    """`[warnings]`: when the non-blocking data-quality warnings fire (etl.quality_warnings), and
    what counts as a win keyed in at the moment of closing."""

    # A win created less than this many hours before it was marked won was keyed in at close: its
    # cycle length is not recorded (left out of velocity's cycle days and the aged threshold). 0: off.
    keyed_at_close_hours: float = 24.0
    # ... or that entered its last open stage less than this many minutes before it was marked won
    # (reps who record stages only when they close walk through them within a few hours). 0: off.
    keyed_at_close_minutes: float = 180.0
    # wins_keyed_at_close fires above this share of the wins.
    keyed_at_close_share: float = 0.2
    # overdue_open_deals fires above this share of the open deals.
    overdue_share: float = 0.25
    # outlier_amounts: open or lost deals above this multiple of the largest deal ever won.
    outlier_factor: float = 3.0
    # pipeline_mostly_stalled fires above this share of a pipeline's open deals stalled or aged.
    mostly_stalled_share: float = 0.5


@dataclass(frozen=True)
class SalesforceSourceConfig:
    pipeline_field: str = "Pipeline__c"
    product_field: str = "Product__c"
    region_field: str = "Region__c"
    segment_field: str = "Segment__c"
    lost_reason_field: str = "Loss_Reason__c"
    default_pipeline: str = "Default"


@dataclass(frozen=True)
class ProjectConfig:
    """What `dealcast.toml` says."""

    path: Path
    reporting_currency: str
    fiscal_year_start_month: int
    schedule_cron: str
    schedule_timezone: str
    quota_file: str | None
    validation: ValidationConfig
    model: ModelConfig
    forecast: ForecastConfig
    salesforce: SalesforceSourceConfig
    stages: StageCatalog
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    # [sources.<name>] tables as written, for readers that define their own settings (hubspot, pipedrive, ...).
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    # [currency] rates_file: dated exchange rates into the reporting currency (None: one currency only).
    rates_file: str | None = None
    # [sources] format_overrides: file name -> export format, when detection from the header must be overridden.
    format_overrides: dict[str, str] = field(default_factory=dict)
    # [sources] mappings: declarative column-mapping files for generic CSV exports (paths as written).
    mappings: tuple[str, ...] = ()
    # [reporting] booking_date: which date books a closed deal into a period (etl.bookings).
    booking_date: str = DEFAULT_BOOKING_RULE
    # [warnings]: thresholds of the non-blocking data-quality warnings.
    warnings: WarningsConfig = field(default_factory=WarningsConfig)
    # [schedule] first_night: the first as_of (Dagster partition) a night can be run or backfilled for.
    first_night: dt.date = DEFAULT_FIRST_NIGHT

    def resolve_path(self, name: str) -> Path:
        """A path from the config file: absolute as written, else relative to the config file's folder."""
        path = Path(name)
        return path if path.is_absolute() else self.path.parent / path


@dataclass(frozen=True)
class Settings:
    """Everything one run needs to know about where it reads, for which date, and where it writes."""

    project: ProjectConfig
    exports_dir: Path
    exports_are_sample: bool
    as_of: dt.date
    project_dir: Path

    @property
    def model_dir(self) -> Path:
        """Where model artifacts go, a folder or an object-store URL (a `UPath` then): DEALCAST_MODEL_DIR,
        else [model] artifact_dir. A relative artifact_dir lies in the intermediate-data store when
        DEALCAST_STORE_URL names one (so every machine running steps finds the same models), else in
        the project folder."""
        override = os.environ.get(ENV_MODEL_DIR)
        if override:
            return location(override)
        configured = self.project.model.artifact_dir
        if is_url(configured) or Path(configured).is_absolute():
            return location(configured)
        store = os.environ.get(ENV_STORE_URL)
        if store:
            return location(store, base=self.project_dir) / str(configured)
        return self.project_dir / configured

    def quota_path(self) -> Path | None:
        """The quota file, looked up in the exports directory first, then next to the config."""
        name = self.project.quota_file
        if not name:
            return None
        candidate = Path(name)
        if candidate.is_absolute():
            return candidate if candidate.is_file() else None
        for base in (self.exports_dir, self.project.path.parent):
            if (base / candidate).is_file():
                return base / candidate
        return None


def _section(raw: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{name}] must be a table, got {type(value).__name__}")
    return value


def _typed(cls: type, values: dict[str, Any], path: Path, section: str) -> Any:
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{path}: [{section}] has unknown setting(s) {unknown}; expected some of {sorted(known)}"
        )
    return cls(**values)


def _positive_days(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{where} must be a number of days above 0, got {value!r}")
    return float(value)


def _analytics(values: dict[str, Any], path: Path) -> AnalyticsConfig:
    """`[analytics]`, checked: every stall threshold a positive number of days, ask stages names."""
    config = _typed(AnalyticsConfig, values, path, "analytics")
    where = f"{path}: [analytics] stall_days"
    if not isinstance(config.stall_days, dict):
        raise ConfigError(f"{where} must be a table of stage = days (or pipeline = {{stage = days}})")
    stall_days: dict[str, Any] = {}
    for name, value in config.stall_days.items():
        if isinstance(value, dict):
            stall_days[name] = {stage: _positive_days(days, f"{where}.{name}.{stage}") for stage, days in value.items()}
        else:
            stall_days[name] = _positive_days(value, f"{where}.{name}")
    asks = config.ask_stages
    if not isinstance(asks, (list, tuple)) or not all(isinstance(a, str) for a in asks):
        raise ConfigError(f"{path}: [analytics] ask_stages must be a list of stage names, got {asks!r}")
    return AnalyticsConfig(stall_days=stall_days, ask_stages=tuple(asks))


def _warnings(values: dict[str, Any], path: Path) -> WarningsConfig:
    """`[warnings]`, checked: hours and minutes at least 0, shares between 0 and 1, factor above 1."""
    config = _typed(WarningsConfig, values, path, "warnings")
    for name in WarningsConfig.__dataclass_fields__:
        value = getattr(config, name)
        where = f"{path}: [warnings] {name}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if name.endswith("_share") and not 0 <= value <= 1:
            raise ConfigError(f"{where} must be a share between 0 and 1, got {value!r}")
        if name == "outlier_factor" and not value > 1:
            raise ConfigError(f"{where} must be above 1 (a multiple of the largest win), got {value!r}")
        if value < 0:
            raise ConfigError(f"{where} must not be negative, got {value!r}")
    return WarningsConfig(**{name: float(getattr(config, name)) for name in WarningsConfig.__dataclass_fields__})


def _parse_date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError as exc:
        raise ConfigError(f"{where}: expected a date as YYYY-MM-DD, got {value!r}") from exc


def load_project_config(path: Path | None = None) -> ProjectConfig:
    """Read and check `dealcast.toml` (or the file named by `DEALCAST_CONFIG`)."""
    if path is None:
        env_path = os.environ.get(ENV_CONFIG)
        path = Path(env_path) if env_path else project_dir() / CONFIG_FILE_NAME
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path} (set {ENV_CONFIG} to its path)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc

    reporting = _section(raw, "reporting", path)
    schedule = _section(raw, "schedule", path)
    quotas = _section(raw, "quotas", path)
    validation_raw = dict(_section(raw, "validation", path))
    if "earliest_date" in validation_raw:
        validation_raw["earliest_date"] = _parse_date(
            validation_raw["earliest_date"], f"{path}: [validation] earliest_date"
        )
    model_raw = dict(_section(raw, "model", path))
    if "artifact_dir" in model_raw:
        value = model_raw["artifact_dir"]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: [model] artifact_dir must be a folder or a URL, got {value!r}")
        model_raw["artifact_dir"] = value if is_url(value) else Path(value)
    sources = _section(raw, "sources", path)
    currency = _section(raw, "currency", path)
    overrides = sources.get("format_overrides", {})
    mappings = sources.get("mappings", [])
    if not isinstance(overrides, dict) or not all(isinstance(v, str) for v in overrides.values()):
        raise ConfigError(f"{path}: [sources] format_overrides must map file names to format names")
    if not isinstance(mappings, list) or not all(isinstance(m, str) for m in mappings):
        raise ConfigError(f"{path}: [sources] mappings must be a list of mapping file paths")

    analytics = _analytics(_section(raw, "analytics", path), path)
    warnings_config = _warnings(_section(raw, "warnings", path), path)

    timezone = str(schedule.get("timezone", "UTC"))
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{path}: [schedule] timezone must be an IANA timezone such as UTC or Europe/Paris, got {timezone!r}") from None

    fiscal_start = int(reporting.get("fiscal_year_start_month", 1))
    if not 1 <= fiscal_start <= 12:
        raise ConfigError(f"{path}: [reporting] fiscal_year_start_month must be 1..12, got {fiscal_start}")
    booking_date = reporting.get("booking_date", DEFAULT_BOOKING_RULE)
    if booking_date not in BOOKING_RULES:
        raise ConfigError(
            f"{path}: [reporting] booking_date must be one of {', '.join(repr(r) for r in BOOKING_RULES)}, "
            f"got {booking_date!r}"
        )

    pipelines_raw = raw.get("pipelines", [])
    if not isinstance(pipelines_raw, list):
        raise ConfigError(f"{path}: [[pipelines]] must be an array of tables")
    pipelines = []
    for i, p in enumerate(pipelines_raw):
        where = f"{path}: pipelines[{i}]"
        try:
            stages = [(str(s["name"]), float(s.get("probability", float("nan")))) for s in p["stages"]]
            pipelines.append(
                PipelineStages(
                    name=str(p["name"]),
                    open_stages=tuple(name for name, _ in stages),
                    won_stage=str(p.get("won_stage", "Closed Won")),
                    lost_stage=str(p.get("lost_stage", "Closed Lost")),
                    probabilities={name: prob for name, prob in stages},
                )
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{where}: needs name and stages = [{{name, probability}}, ...] ({exc})") from exc

    return ProjectConfig(
        path=path,
        reporting_currency=str(reporting.get("currency", "USD")).upper(),
        fiscal_year_start_month=fiscal_start,
        schedule_cron=str(schedule.get("cron", "0 2 * * *")),
        schedule_timezone=timezone,
        first_night=_parse_date(schedule.get("first_night", DEFAULT_FIRST_NIGHT.isoformat()), f"{path}: [schedule] first_night"),
        quota_file=quotas.get("file"),
        validation=_typed(ValidationConfig, validation_raw, path, "validation"),
        model=_typed(ModelConfig, model_raw, path, "model"),
        forecast=_typed(ForecastConfig, _section(raw, "forecast", path), path, "forecast"),
        salesforce=_typed(
            SalesforceSourceConfig, dict(sources.get("salesforce", {})), path, "sources.salesforce"
        ),
        stages=StageCatalog(pipelines),
        analytics=analytics,
        sources={k: dict(v) for k, v in sources.items() if isinstance(v, dict) and k != "format_overrides"},
        rates_file=currency.get("rates_file"),
        format_overrides=dict(overrides),
        mappings=tuple(mappings),
        booking_date=booking_date,
        warnings=warnings_config,
    )


def missing_exports_message(exports_dir: Path, is_default: bool) -> str:
    """Why a run has nothing to read in `exports_dir`, and how to give it exports: the folder to set, or
    the commands that write the sample CRM there. `is_default`: no folder was configured."""
    folder = Path(exports_dir)
    state = "does not exist" if not folder.exists() else "is not a folder" if not folder.is_dir() else "holds no files"
    where = (
        f"the default exports folder {folder} (no {ENV_EXPORTS_DIR} and no exports_dir setting)"
        if is_default
        else f"the exports folder {folder}"
    )
    return (
        f"no CRM export files: {where} {state}. Put the CRM's export files there or point {ENV_EXPORTS_DIR} "
        f"(or the settings resource's exports_dir) at them; for a sample CRM run `make demo`, or write one "
        f"with `dealcast-sample --out {folder} --end-date YYYY-MM-DD` (the night's date) before materialising."
    )


def resolve_as_of(value: str | dt.date | None = None) -> dt.date:
    """The run's as_of date: the explicit value, else `DEALCAST_AS_OF`, else today (UTC)."""
    if isinstance(value, dt.date):
        return value
    text = value or os.environ.get(ENV_AS_OF)
    if not text:
        return dt.datetime.now(dt.timezone.utc).date()
    return _parse_date(text, f"as_of ({ENV_AS_OF})")


def resolve_settings(
    exports_dir: str | Path | None = None,
    as_of: str | dt.date | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Resolve a run's settings: explicit values first, then environment variables, then defaults."""
    project = load_project_config(Path(config_file) if config_file else None)
    root = project_dir()
    explicit_exports = exports_dir or os.environ.get(ENV_EXPORTS_DIR)
    exports = Path(explicit_exports).resolve() if explicit_exports else root / SAMPLE_EXPORTS_DIR_NAME
    return Settings(
        project=project,
        exports_dir=exports,
        exports_are_sample=not explicit_exports,
        as_of=resolve_as_of(as_of),
        project_dir=root,
    )


def default_warehouse_url() -> str:
    """`DEALCAST_WAREHOUSE_URL`, else the embedded SQLite file in the project's `warehouse/` folder."""
    url = os.environ.get(ENV_WAREHOUSE_URL)
    if url:
        return url
    return f"sqlite:///{project_dir() / 'warehouse' / 'dealcast.sqlite'}"
