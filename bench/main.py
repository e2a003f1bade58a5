"""ASGI entry point of the bench's API processes (bench/stack.py): ``api.main`` with the
synchronous baseline's route added (bench/baseline.py)."""

from api.middleware import request_id_var
from bench.baseline import create_app
from common.logs import configure_logging
from common.settings import get_settings

settings = get_settings()
configure_logging(
    settings.LOG_LEVEL,
    service="api",
    context={"request_id": request_id_var.get},
    access_log=settings.ACCESS_LOG,
)
app = create_app()
