"""The Celery app Dealcast's workers run: `celery -A assets.celery_app worker` (or `make worker`).

It is built from the same environment as the executor (DEALCAST_CELERY_BROKER, DEALCAST_CELERY_BACKEND,
DEALCAST_CELERY_QUEUE; see assets/execution.py), so a worker listens where the runs submit their
steps. A worker executes each step it receives by loading `assets.definitions` itself: it needs the
project's code and environment (warehouse URL, store URL, exports folder), and the run's Dagster
instance (DAGSTER_HOME with a shared run storage, e.g. PostgreSQL, when workers are on other machines).
"""

from dagster_celery.executor import CeleryExecutor
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from assets.execution import celery_config

app = make_app(CeleryExecutor.for_cli(**celery_config()).app_args())
execute_plan = create_task(app)
