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


def test_identifying_text_in_one_unicode_form_changes_only_what_it_must():
    from etl.ingest.exports import normalise_identifying_text

    nfd = "Ile\u0302"  # I, l, e + combining circumflex: NFC is "Ile" with e-circumflex, one character
    frame = pd.DataFrame(
        {
            "deal_id": pd.Series(["006A", "006B\t", "\x1c006C", "006D\x0b", "\u200b006E", "006F\u3000", "  ", "006 G"],
                                 dtype="string"),
            "region": pd.Series([nfd, "EMEA", "EMEA", "EMEA", "EMEA", "EMEA", "EMEA", None], dtype="string"),
            "source_file": "Opportunity.csv",
            "source_row": range(2, 10),
        }
    )
    out, changes = normalise_identifying_text(frame)
    # ASCII blanks and separators at either end (tab, \x1c, vertical tab), a zero-width space and
    # an ideographic space go; a blank-only id becomes missing; an inner blank stays.
    assert out["deal_id"].tolist()[:6] == ["006A", "006B", "006C", "006D", "006E", "006F"]
    assert pd.isna(out["deal_id"].iloc[6]) and out["deal_id"].iloc[7] == "006 G"
    assert out["region"].iloc[0] == "Il\u00ea" and out["region"].iloc[1] == "EMEA"
    assert sorted(zip(changes["column"], changes["source_row"])) == [
        ("deal_id", 3), ("deal_id", 4), ("deal_id", 5), ("deal_id", 6), ("deal_id", 7), ("deal_id", 8), ("region", 2)
    ]
    assert str(out["deal_id"].dtype) == str(frame["deal_id"].dtype)
