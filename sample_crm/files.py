"""The file contract of the sample: file names and columns, as the Salesforce reader and the truth
readers expect them."""

from __future__ import annotations


from etl.config import SalesforceSourceConfig


OPPORTUNITY_FILE = "Opportunity.csv"
HISTORY_FILE = "OpportunityHistory.csv"
ACCOUNT_FILE = "Account.csv"
USER_FILE = "User.csv"
QUOTA_FILE = "quotas.csv"
TRUTH_FILE = "truth_win_probability.csv"

OPPORTUNITY_COLUMNS = (
    "Id", "IsDeleted", "AccountId", "IsPrivate", "Name", "Description", "StageName", "StageSortOrder",
    "Amount", "Probability", "ExpectedRevenue", "TotalOpportunityQuantity", "CloseDate", "Type",
    "NextStep", "LeadSource", "IsClosed", "IsWon", "ForecastCategory", "ForecastCategoryName",
    "CampaignId", "HasOpportunityLineItem", "Pricebook2Id", "OwnerId", "CreatedDate", "CreatedById",
    "LastModifiedDate", "LastModifiedById", "SystemModstamp", "LastActivityDate", "LastStageChangeDate",
    "FiscalYear", "FiscalQuarter", "PrimaryPartnerAccountId", "ContractId",
)  # fmt: skip
HISTORY_COLUMNS = (
    "Id", "OpportunityId", "CreatedById", "CreatedDate", "CreatedDateForInsert", "StageName", "Amount",
    "ExpectedRevenue", "CloseDate", "Probability", "FromForecastCategory", "ForecastCategory",
    "PrevForecastUpdate", "FromOpportunityStageName", "PrevOpportunityStageUpdate", "ValidThroughDate",
    "SystemModstamp", "IsDeleted",
)  # fmt: skip
HISTORY_EXTRA_COLUMNS = ("PrevAmount", "PrevCloseDate")
ACCOUNT_COLUMNS = (
    "Id", "IsDeleted", "MasterRecordId", "Name", "Type", "ParentId", "BillingStreet", "BillingCity",
    "BillingState", "BillingPostalCode", "BillingCountry", "BillingLatitude", "BillingLongitude",
    "BillingGeocodeAccuracy", "ShippingStreet", "ShippingCity", "ShippingState", "ShippingPostalCode",
    "ShippingCountry", "ShippingLatitude", "ShippingLongitude", "ShippingGeocodeAccuracy", "Phone", "Fax",
    "AccountNumber", "Website", "Sic", "Industry", "AnnualRevenue", "NumberOfEmployees", "Ownership",
    "TickerSymbol", "Description", "Rating", "Site", "OwnerId", "CreatedDate", "CreatedById",
    "LastModifiedDate", "LastModifiedById", "SystemModstamp", "LastActivityDate", "Jigsaw",
    "JigsawCompanyId", "CleanStatus", "AccountSource", "DunsNumber", "Tradestyle", "NaicsCode",
    "NaicsDesc", "YearStarted", "SicDesc", "DandbCompanyId",
)  # fmt: skip
USER_COLUMNS = ("Id", "Name", "FirstName", "LastName", "Department", "Division", "Title", "IsActive", "UserRoleId")
QUOTA_COLUMNS = ("quarter", "segment_type", "segment", "amount")
TRUTH_COLUMNS = ("deal_id", "changed_at", "stage", "true_win_probability")
CURRENCY = "USD"


def opportunity_extra_columns(fields: SalesforceSourceConfig | None = None) -> tuple[str, ...]:
    """The Opportunity columns after the standard ones: the currency and the custom fields."""
    f = fields or SalesforceSourceConfig()
    return ("CurrencyIsoCode", f.pipeline_field, f.product_field, f.region_field, f.segment_field, f.lost_reason_field)


OPPORTUNITY_EXTRA_COLUMNS = opportunity_extra_columns()

TRUTH_DEALS_FILE = "truth_deals.csv"
TRUTH_REAL_HISTORY_FILE = "truth_real_history.csv"
TRUTH_MANIFEST_FILE = "truth_sample.json"
RATES_FILE = "exchange_rates.csv"
PIPELINES_CONFIG_FILE = "dealcast_pipelines.toml"

SHAPES = (
    "imported", "keyed_at_close", "never_entered", "no_history", "last_minute_stage", "late_keyed", "stale",
    "purged", "lost_future_close", "outlier",
)  # fmt: skip
TRUTH_DEAL_COLUMNS = (
    "deal_id", "pipeline", "owner_id", "team", "product", "segment", "skill_level", "real_outcome",
    "real_created_at", "real_closed_at", "real_close_date", "hidden_loss_at", "crm_created_at",
    "crm_closed_at", "crm_status", "crm_close_date", "amount", "currency", "amount_reporting", *SHAPES,
)  # fmt: skip
TRUTH_REAL_HISTORY_COLUMNS = ("deal_id", "changed_at", "stage", "amount_reporting", "close_date")
