"""The simulation's calendar and the organisation's hidden parameters: segments, products, rep skill,
pipeline kinds and their weekly hazards, names, and the categorical draws the simulation makes."""

from __future__ import annotations

import datetime as dt

import numpy as np


DAY_SECONDS = 86_400
WEEK_SECONDS = 7 * DAY_SECONDS
EPOCH_MONDAY_DAY = 4  # 1970-01-05, a Monday, is day 4 after the Unix epoch
EPOCH_MONDAY = dt.date(1970, 1, 5)
EVENT_HOURS = (6, 20)  # changes happen on weekdays between 06:00 and 20:00 UTC
WINDOW_END_SECONDS = 4 * DAY_SECONDS + EVENT_HOURS[1] * 3600  # Friday 20:00 after the week's Monday
WEEKS_IN_STAGE_CAP = 26
TRUTH_TOLERANCE = 1e-10

# Step outcomes, in the order their probabilities are stacked.
ADVANCE, SKIP, BACK, LOST, WON, STAY = range(6)
STEP_EVENTS = ("advance", "skip", "back", "lost", "won", "stay")
STAGE_DELTA = np.array([1, 2, -1, 0, 0, 0], dtype=np.int16)

# Which calendar factor (forward, back, lost, won) scales each step outcome.
SEASON_OF_EVENT = np.array([0, 0, 1, 2, 3])

SEGMENTS = ("SMB", "Mid-Market", "Enterprise")
SEGMENT_EFFECT = np.array([-0.15, 0.0, 0.2])
SEGMENT_SPEED = np.array([1.35, 1.0, 0.7])
SEGMENT_AMOUNT = np.array([9_000.0, 32_000.0, 110_000.0])  # median deal size, Core Platform
SEGMENT_CLOSE_FACTOR = np.array([0.75, 1.0, 1.4])
SEGMENT_ACCOUNT_SHARE = np.array([0.5, 0.33, 0.17])
SEGMENT_EMPLOYEES = ((10, 199), (200, 1_999), (2_000, 60_000))

PRODUCTS = ("Core Platform", "Analytics Add-on", "Enterprise Suite", "Support Plan")
PRODUCT_EFFECT = np.array([0.0, 0.25, -0.3, 0.4])
PRODUCT_SPEED = np.array([1.0, 1.15, 0.8, 1.25])
PRODUCT_AMOUNT = np.array([1.0, 0.4, 2.5, 0.25])

# Product mix by segment, multiplied into the pipeline kind's mix.
SEGMENT_PRODUCT_TILT = np.array([[1.2, 1.0, 0.2, 1.2], [1.0, 1.0, 1.0, 1.0], [0.8, 1.0, 2.0, 0.8]])

SKILL_LEVELS = np.array([-0.6, -0.3, 0.0, 0.3, 0.6])  # log-scale effect of a rep's skill
SKILL_SHARES = np.array([0.12, 0.22, 0.32, 0.22, 0.12])
EFFECT_SLOPE = 0.3  # forward and win hazards x exp(0.3 * effect), loss hazard x exp(-0.3 * effect)

AMOUNT_SIGMA = 0.6
REVISION_SIGMA = 0.2
REVISION_SHARE = 0.7  # share of deals whose amount is revised on entering the proposal stage
AMOUNT_CHANGE_RATE = 0.02  # weekly chance of another amount change of an open deal
AMOUNT_CHANGE_SIGMA = 0.15
PULL_IN_RATE = 0.012  # weekly chance of pulling the close date in, when it is 5+ weeks out
GROWTH_PER_YEAR = 0.25
QUOTA_STRETCH = 1.1

# Per pipeline kind: weekly advance rate, weekly win rate at the last stage, and the win rate the
# loss rates are set for before stale losses (the realised rate is lower).
KIND_DYNAMICS = {
    "new_business": {"advance": 0.30, "won": 0.30, "target": 0.42},
    "expansion": {"advance": 0.28, "won": 0.30, "target": 0.62},
    "channel": {"advance": 0.26, "won": 0.28, "target": 0.39},
}
SKIP_SHARE = 0.12  # share of forward moves that skip a stage
BACK_RATE = 0.025  # weekly rate of moving back a stage
EARLY_WIN_RATE = 0.02  # weekly rate of winning from the stage before the last
KIND_AMOUNT = {"new_business": 1.0, "expansion": 0.6, "channel": 0.8}
KIND_CLOSE_WEEKS = {"new_business": (8, 20), "expansion": (4, 10), "channel": (6, 14)}
KIND_PRODUCTS = {
    "new_business": np.array([0.5, 0.1, 0.25, 0.15]),
    "expansion": np.array([0.15, 0.35, 0.2, 0.3]),
    "channel": np.array([0.6, 0.2, 0.0, 0.2]),
}

REGIONS = ("North America", "EMEA", "APAC", "LATAM")
REGION_CODES = ("NA", "EMEA", "APAC", "LATAM")
TEAM_REGION_CYCLE = (0, 1, 0, 2, 1, 0, 3, 2)
TEAM_FOCI = ("Enterprise", "Commercial", "Partners")
TEAM_FOCUS_CYCLE = (0, 1, 2, 1, 0, 1)
FOCUS_KINDS = {  # pipeline kind mix by team focus
    "Enterprise": {"new_business": 0.65, "expansion": 0.35, "channel": 0.0},
    "Commercial": {"new_business": 0.7, "expansion": 0.3, "channel": 0.0},
    "Partners": {"new_business": 0.15, "expansion": 0.0, "channel": 0.85},
}
FOCUS_SEGMENTS = {"Enterprise": (0.0, 0.3, 0.7), "Commercial": (0.6, 0.4, 0.0), "Partners": (0.5, 0.4, 0.1)}
FOCUS_TITLES = {
    "Enterprise": "Enterprise Account Executive",
    "Commercial": "Account Executive",
    "Partners": "Channel Account Manager",
}
REPS_PER_TEAM = 8

LEAD_SOURCES = (
    "Web", "Phone Inquiry", "Partner", "Purchased List", "Trade Show", "Employee Referral",
    "External Referral", "Word of mouth", "Public Relations", "Advertisement", "Other",
)  # fmt: skip
KIND_LEAD_SOURCES = {
    "new_business": (0.28, 0.1, 0.04, 0.1, 0.14, 0.07, 0.1, 0.05, 0.04, 0.05, 0.03),
    "expansion": (0.12, 0.2, 0.0, 0.0, 0.08, 0.05, 0.05, 0.2, 0.05, 0.0, 0.25),
    "channel": (0.03, 0.02, 0.85, 0.0, 0.03, 0.0, 0.02, 0.0, 0.0, 0.0, 0.05),
}
DEAL_TYPES = (
    "New Customer", "Existing Customer - Upgrade", "Existing Customer - Replacement",
    "Existing Customer - Downgrade",
)  # fmt: skip
KIND_DEAL_TYPES = {
    "new_business": (1.0, 0.0, 0.0, 0.0),
    "expansion": (0.0, 0.7, 0.15, 0.15),
    "channel": (0.8, 0.2, 0.0, 0.0),
}
LOSS_REASONS = ("No Budget", "Product Fit", "Timing", "Unresponsive", "Lost to Competitor", "Price", "No Decision")
LOSS_REASON_MIX = np.array(
    [
        [0.3, 0.2, 0.2, 0.2, 0.1, 0.0, 0.0],  # lost in the first half of the stages
        [0.0, 0.0, 0.15, 0.0, 0.35, 0.3, 0.2],  # lost in the second half
        [0.0, 0.0, 0.15, 0.5, 0.0, 0.0, 0.35],  # lost after 10+ weeks in the stage
    ]
)
STALE_LOSS_WEEKS = 10

FIRST_NAMES = (
    "Aaliyah", "Adrian", "Aisha", "Alejandro", "Amelia", "Andre", "Anika", "Ben", "Bianca", "Carlos",
    "Chen", "Chloe", "Daniel", "Deepa", "Diego", "Elena", "Emeka", "Emma", "Fatima", "Felix", "Grace",
    "Hannah", "Hiro", "Ines", "Isaac", "Jamal", "Jana", "Javier", "Julia", "Kai", "Kenji", "Lara",
    "Leo", "Lucia", "Maya", "Mateo", "Mei", "Mohammed", "Nadia", "Noah", "Olga", "Omar", "Priya",
    "Rafael", "Rahul", "Rosa", "Sam", "Sara", "Sofia", "Tariq", "Thomas", "Valentina", "Victor",
    "Wei", "Yara", "Yusuf", "Zoe", "Lukas", "Ingrid", "Pedro",
)  # fmt: skip
LAST_NAMES = (
    "Abara", "Alvarez", "Andersen", "Bauer", "Becker", "Brennan", "Castillo", "Chandra", "Chen",
    "Costa", "Dubois", "Edwards", "Fischer", "Fujita", "Garcia", "Gupta", "Hansen", "Haddad",
    "Ibrahim", "Ito", "Jensen", "Johnson", "Kaur", "Kim", "Kowalski", "Larsen", "Lopez", "Martin",
    "Meyer", "Mendes", "Moreau", "Murphy", "Nakamura", "Nguyen", "Novak", "Okafor", "Olsen", "Park",
    "Patel", "Petrov", "Quinn", "Rossi", "Santos", "Schmidt", "Silva", "Singh", "Sato", "Svensson",
    "Tanaka", "Torres", "Tran", "Walsh", "Weber", "Williams", "Wong", "Yamamoto", "Yilmaz", "Zhang",
    "Ortiz", "Reyes",
)  # fmt: skip
ACCOUNT_WORDS = (
    "Northwind", "Blue Ridge", "Summit", "Silverline", "Redwood", "Harbor", "Granite", "Evergreen",
    "Polaris", "Crescent", "Ironbridge", "Lakeside", "Meridian", "Oakmont", "Pinnacle", "Quantum",
    "Riverbend", "Sterling", "Tidewater", "Vantage", "Westfield", "Apex", "Beacon", "Cobalt",
    "Delta", "Everest", "Falcon", "Golden Gate", "Highland", "Insight", "Juniper", "Keystone",
    "Lighthouse", "Maple", "Nova", "Orion", "Prairie", "Ridgeway", "Sequoia", "Trident", "Union",
    "Vertex", "Willow", "Zenith", "Atlas", "Bright", "Cedar", "Dynamo", "Ember", "Frontier",
)  # fmt: skip
ACCOUNT_NOUNS = (
    "Logistics", "Health", "Foods", "Energy", "Financial", "Robotics", "Media", "Retail", "Systems",
    "Pharma", "Analytics", "Manufacturing", "Telecom", "Insurance", "Motors", "Hotels", "Textiles",
    "Construction", "Software", "Aerospace", "Biotech", "Consulting", "Utilities", "Airlines",
    "Education", "Labs", "Networks", "Outfitters", "Capital", "Brewing", "Semiconductors", "Marine",
    "Packaging", "Chemicals", "Furniture", "Security", "Travel", "Agritech", "Devices", "Studios",
)  # fmt: skip
ACCOUNT_SUFFIXES = ("Inc.", "LLC", "Group", "Corp", "Ltd", "GmbH", "SA", "Holdings", "Partners", "Co.")
INDUSTRIES = (
    "Technology", "Manufacturing", "Healthcare", "Finance", "Retail", "Energy", "Transportation",
    "Education", "Hospitality", "Media", "Telecommunications", "Construction", "Consulting",
)  # fmt: skip
REGION_CITIES = {
    "North America": (
        ("New York", "NY", "USA"), ("Austin", "TX", "USA"), ("Chicago", "IL", "USA"),
        ("San Francisco", "CA", "USA"), ("Toronto", "ON", "Canada"), ("Atlanta", "GA", "USA"),
        ("Boston", "MA", "USA"), ("Denver", "CO", "USA"),
    ),
    "EMEA": (
        ("London", "", "United Kingdom"), ("Paris", "", "France"), ("Berlin", "", "Germany"),
        ("Amsterdam", "", "Netherlands"), ("Madrid", "", "Spain"), ("Stockholm", "", "Sweden"),
        ("Dubai", "", "United Arab Emirates"),
    ),
    "APAC": (
        ("Sydney", "NSW", "Australia"), ("Singapore", "", "Singapore"), ("Tokyo", "", "Japan"),
        ("Bangalore", "KA", "India"), ("Seoul", "", "South Korea"),
    ),
    "LATAM": (
        ("São Paulo", "SP", "Brazil"), ("Mexico City", "CDMX", "Mexico"), ("Bogotá", "", "Colombia"),
        ("Santiago", "", "Chile"), ("Buenos Aires", "", "Argentina"),
    ),
}  # fmt: skip
ACCOUNT_TYPES = ("Customer - Direct", "Customer - Channel", "Prospect")


def pipeline_kind(name: str) -> str:
    """How a pipeline behaves in the simulation: `expansion` (upsell to customers), `channel`
    (through partners) or `new_business`, recognised from its name."""
    lowered = name.lower()
    if any(word in lowered for word in ("expansion", "upsell", "renewal", "cross-sell", "existing")):
        return "expansion"
    if any(word in lowered for word in ("channel", "partner", "reseller", "indirect")):
        return "channel"
    return "new_business"


def week_of_date(day: dt.date) -> int:
    """The index of the Monday-to-Monday week holding `day`."""
    return (day - EPOCH_MONDAY).days // 7


def cumulative_weights(weights: np.ndarray) -> np.ndarray:
    """Row-wise cumulative probabilities of non-negative weights (rows of zeros become uniform)."""
    w = np.asarray(weights, dtype=np.float64)
    w = np.where(w.sum(axis=-1, keepdims=True) > 0, w, 1.0)
    cum = np.cumsum(w / w.sum(axis=-1, keepdims=True), axis=-1)
    cum[..., -1] = 1.0
    return cum


def draw_categories(uniforms: np.ndarray, cumulative: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Categorical draws: the category whose cumulative band holds each uniform (per group row)."""
    table = cumulative[None, :] if group is None else cumulative[group]
    if group is None:
        return np.searchsorted(cumulative, uniforms, side="right").astype(np.int16)
    return (uniforms[:, None] >= table).sum(axis=1).astype(np.int16)


def civil_from_days(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Year, month, day of days since 1970-01-01 (proleptic Gregorian, vectorised)."""
    z = days.astype(np.int64) + 719_468
    era = np.floor_divide(z, 146_097)
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def calendar_factors(weeks: np.ndarray, fiscal_year_start_month: int) -> np.ndarray:
    """Calendar multipliers of each week's hazards, shape (len(weeks), 4): forward moves, backward
    moves, losses, wins; from the week's Thursday."""
    year, month, day = civil_from_days(np.asarray(weeks, dtype=np.int64) * 7 + EPOCH_MONDAY_DAY + 3)
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    days_in_month = _MONTH_DAYS[month - 1] + ((month == 2) & leap)
    quarter_month = (month - fiscal_year_start_month) % 3 == 2
    quarter_end = quarter_month & (day > days_in_month - 14)
    summer = np.isin(month, (7, 8))
    holiday = ((month == 12) & (day >= 20)) | ((month == 1) & (day <= 3))
    factors = np.ones((len(month), 4))
    factors[:, 0] = np.where(quarter_month, 1.1, 1.0) * np.where(summer, 0.8, 1.0) * np.where(holiday, 0.5, 1.0)
    factors[:, 1] = np.where(holiday, 0.5, 1.0)
    factors[:, 2] = np.where(quarter_end, 1.2, 1.0) * np.where(summer, 0.85, 1.0) * np.where(holiday, 0.6, 1.0)
    factors[:, 3] = (
        np.where(quarter_month, 1.25, 1.0)
        * np.where(quarter_end, 1.4, 1.0)
        * np.where(summer, 0.8, 1.0)
        * np.where(holiday, 0.45, 1.0)
    )
    return factors


def creation_season(weeks: np.ndarray, fiscal_year_start_month: int) -> np.ndarray:
    _, month, day = civil_from_days(np.asarray(weeks, dtype=np.int64) * 7 + EPOCH_MONDAY_DAY + 3)
    summer = np.isin(month, (7, 8))
    holiday = ((month == 12) & (day >= 20)) | ((month == 1) & (day <= 3))
    quarter_start = (month - fiscal_year_start_month) % 3 == 0
    return np.where(summer, 0.85, 1.0) * np.where(holiday, 0.35, 1.0) * np.where(quarter_start, 1.05, 1.0)
