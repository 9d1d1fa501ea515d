import datetime as dt

import pandas as pd

from etl.ingest.crm_load import previous_deal_count


def test_volume_baseline_is_the_latest_earlier_as_of():
    recon = pd.DataFrame(
        {
            "as_of": pd.to_datetime(["2026-11-20", "2026-11-20", "2026-11-21", "2026-11-21", "2026-11-22"]),
            "content": ["deals", "history", "deals", "lookup", "deals"],
            "accepted": [900, 5000, 950, 12, 990],
        }
    )
    # A run for 11-22 (first or re-run) compares with 11-21's 950 deals, never with its own 990.
    assert previous_deal_count(recon, dt.date(2026, 11, 22)) == 950
    assert previous_deal_count(recon, dt.date(2026, 11, 21)) == 900
    assert previous_deal_count(recon, dt.date(2026, 11, 20)) is None
    assert previous_deal_count(recon.iloc[0:0], dt.date(2026, 11, 20)) is None
