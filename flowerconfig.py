"""Flower's configuration file, read by ``celery flower`` from the working directory (Flower's
``--conf``, default ``flowerconfig.py``; `make run` and the compose file start it here).

Flower 2.2 checks ``--basic-auth`` on its pages and API but not on ``/metrics``, which it serves
to anyone. There is no option for that, so this file, which Flower executes before it builds its
handlers, puts ``/metrics`` behind the same authentication as the rest (401 without the right
credentials). ``/healthcheck`` stays open for probes. Prometheus scrapes it with
``basic_auth`` (docs/OPERATIONS.md, "Flower").
"""

from flower.views.monitor import Metrics
from tornado import web

if not getattr(Metrics.get, "__wrapped__", None):
    Metrics.get = web.authenticated(Metrics.get)
