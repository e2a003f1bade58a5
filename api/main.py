"""ASGI entry point for uvicorn: ``uvicorn api.main:app``. Logs are JSON lines (common.logs)."""

from api.app import create_app
from api.middleware import request_id_var
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
