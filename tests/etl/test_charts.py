"""The pipeline waterfall picture: each movement floats from where the previous one left the
pipeline, and the last movement lands on the period's end value."""

import pandas as pd
import pytest

from etl.charts import waterfall_bars, waterfall_chart

# start 100; +20 created, +10 pulled in, +5 increased, -3 decreased, -12 pushed out, -8 lost,
# -30 won: 100 + 20 + 10 + 5 - 3 - 12 - 8 - 30 = 82.
ROW = pd.Series(
    {"start_value": 100.0, "created": 20.0, "pulled_in": 10.0, "increased": 5.0, "decreased": 3.0,
     "pushed_out": 12.0, "lost": 8.0, "won": 30.0, "end_value": 82.0, "period": "2026-Q4"}
)


def test_waterfall_bars_float_from_the_running_level():
    bars = waterfall_bars(ROW).set_index("label")
    expected = {
        "start": (0, 100), "created": (100, 20), "pulled in": (120, 10), "increased": (130, 5),
        "decreased": (132, 3), "pushed out": (120, 12), "lost": (112, 8), "won": (82, 30), "end": (0, 82),
    }
    assert list(bars.index) == list(expected)
    for label, (bottom, height) in expected.items():
        assert (bars.loc[label, "bottom"], bars.loc[label, "height"]) == pytest.approx((bottom, height)), label
    # The won bar ends where the end bar's top is: the identity the table guarantees.
    assert bars.loc["won", "bottom"] == pytest.approx(bars.loc["end", "height"])
    assert bars["sign"].tolist() == [0, 1, 1, 1, -1, -1, -1, -1, 0]


def test_waterfall_chart_is_a_png():
    assert waterfall_chart(ROW, "2026-Q4").startswith(b"\x89PNG\r\n\x1a\n")
