"""The quarantine reason codes of every step that quarantines a row: readers, ingest and
validation (the `quarantine.reason_code` contract: stable, add new ones, never rename).

Deals, in the order that decides `reason_code`:
  missing_id              deal_id is blank
  duplicate_id            deal_id repeats: identical copies keep the first copy in reading order
                          and quarantine the others; copies that differ are all quarantined
  unknown_pipeline        pipeline blank or not in the stage catalogue
  unknown_stage           stage blank or not a stage of the deal's pipeline
  invalid_status          status blank or not one of open / won / lost
  status_stage_mismatch   status disagrees with the stage (an open deal in "Closed Won")
  missing_close_date      a won or lost deal without closed_at
  implausible_date        created_at blank, or created_at / expected_close_date / closed_at before
                          `earliest_date` or after as_of + `latest_years_ahead` years
  closed_before_created   closed_at earlier than the day of created_at (a close date carries no
                          time, so a deal created and closed the same day is fine)
  amount_out_of_range     amount or amount_reporting (the amount converted into the reporting
                          currency) outside [min_amount, max_amount], or not a number (a blank
                          amount is accepted and counted by the warning `deals.amount_present`)
  unknown_currency        currency neither the reporting currency nor one of the rates file's
  probability_out_of_range  crm_probability outside 0-1 (the CRM's 0-100 %): never clipped
  text_too_long           a text value longer than its warehouse column holds (deal_id 64
                          characters, names 255: `etl.tables`); deal_id is checked right after
                          missing_id, the other columns last
Deal history, in order:
  missing_id              deal_id is blank
  text_too_long           deal_id longer than its warehouse column holds
  orphan_history          the deal is not among the deals read
  deal_quarantined        the deal was read but quarantined (its history goes with it)
  implausible_date        changed_at blank or outside the plausible window
  unknown_stage           stage not a stage of the deal's pipeline (a blank stage is fine)
  amount_out_of_range     amount or amount_reporting outside [min_amount, max_amount]
  probability_out_of_range  crm_probability outside 0-1
  text_too_long           another text value longer than its warehouse column holds
The reader's own codes (rows it could not parse) pass through unchanged, and so do the codes of
the ingest step: `duplicate_id` (a later copy of a deal id within one CRM), `unknown_currency` (no
rate for the deal's currency in the rates file), `no_rate_for_date` (the deal's date is before the
currency's first rate) and `deal_quarantined` (history of a deal quarantined by ingest).

Rows a reader cannot parse: `missing_required_value` (a required value is blank),
`unparseable_date`, `unparseable_amount`, `unparseable_number`, `unparseable_boolean` (a value not
written in the column's form), `malformed_row` and `malformed_quoting` (a CSV line that does not
split into the header's fields), `blank_row` (a line with no value at all).

Rows left out on purpose (`EXCLUDED_CODES`): quarantined so that every row is accounted for,
but no data defect.
"""

MISSING_ID = "missing_id"
DUPLICATE_ID = "duplicate_id"
UNKNOWN_PIPELINE = "unknown_pipeline"
UNKNOWN_STAGE = "unknown_stage"
INVALID_STATUS = "invalid_status"
STATUS_STAGE_MISMATCH = "status_stage_mismatch"
MISSING_CLOSE_DATE = "missing_close_date"
IMPLAUSIBLE_DATE = "implausible_date"
CLOSED_BEFORE_CREATED = "closed_before_created"
AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
ORPHAN_HISTORY = "orphan_history"
DEAL_QUARANTINED = "deal_quarantined"
AMOUNT_MISSING = "amount_missing"
HISTORY_BEFORE_CREATION = "history_before_creation"
HISTORY_OUT_OF_ORDER = "history_out_of_order"
UNKNOWN_CURRENCY = "unknown_currency"
PROBABILITY_OUT_OF_RANGE = "probability_out_of_range"
TEXT_TOO_LONG = "text_too_long"

# The reason code of rows a mapping's [filter] leaves out (etl.ingest.readers.mapped): not a problem.
EXCLUDED_BY_FILTER = "excluded_by_filter"
# Records deleted in the CRM (Salesforce IsDeleted, a loader's _fivetran_deleted, Pipedrive's
# deleted status) and earlier versions of a record kept by a loader's history mode.
DELETED_IN_CRM = "deleted_in_crm"
INACTIVE_VERSION = "inactive_version"
# Rows left out on purpose: quarantined so that every row is accounted for, but no data defect.
EXCLUDED_CODES = (EXCLUDED_BY_FILTER, DELETED_IN_CRM, INACTIVE_VERSION)

# Rows a reader cannot parse.
MISSING_REQUIRED_VALUE = "missing_required_value"
UNPARSEABLE_DATE = "unparseable_date"
UNPARSEABLE_AMOUNT = "unparseable_amount"
UNPARSEABLE_NUMBER = "unparseable_number"
UNPARSEABLE_BOOLEAN = "unparseable_boolean"
MALFORMED_ROW = "malformed_row"
MALFORMED_QUOTING = "malformed_quoting"
BLANK_ROW = "blank_row"
# A deal dated before its currency's first rate (etl.ingest.currency).
NO_RATE_FOR_DATE = "no_rate_for_date"
