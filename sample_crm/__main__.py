"""`python -m sample_crm`: the `dealcast-sample` command line."""

import sys

from sample_crm.cli import main

sys.exit(main())
