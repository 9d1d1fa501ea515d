"""Reading CRM exports into the canonical frames, one module per job:

- `readers/`: one reader per export format (Salesforce, HubSpot, HubSpot warehouse tables,
  Pipedrive, mapped); each recognises its files and returns canonical deals and deal history,
  the rows it could not parse, and the raw suites its columns must meet (declared, not run);
- `csvfiles`: CSV I/O and value parsing shared by the readers (sniffing, quoting, numbers, dates);
- `currency`: conversion of amounts into the reporting currency from the rates file;
- `exports`: `read_exports`, which detects each file's format, runs its reader, completes deals
  from their history where the reader leaves that to it, runs the declared raw suites and combines
  several CRMs into one set of frames;
- `source_warehouse`: reading the same tables from a warehouse a loader fills instead of files;
- `crm_load`: `load_crm`, one nightly load: read, validate, rebuild stage history.
"""
