"""Validation of CRM exports with Great Expectations, one module per job:

- `gx_session`: the ephemeral GX context every suite runs in, and the column forms GX checks cheaply;
- `raw`: the raw suites a reader declares (`RawRules`, `RawSuite`) on each export file's text as written,
  and `run_raw_suites`, which checks every declared suite in one session;
- `canonical`: `validate_crm`, the row checks on the canonical deals and deal history, and quarantine;
- `stage_events`: the suite on the rebuilt stage events, before they are published;
- `reconciliation`: per-file accounting (read = accepted + quarantined) and the quarantine shares;
- `outcome`: `ValidationOutcome`, the result rows and the validation report;
- `reason_codes`: every quarantine reason code, used by readers, ingest, currency and validation.
"""
