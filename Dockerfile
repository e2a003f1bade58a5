# syntax=docker/dockerfile:1
# One image for every process of the service: api, worker, beat, flower and the migrate job
# (docker-compose.yml picks the command). Multi-stage: compilers and pip stay in "build"; the
# runtime stage holds the virtualenv and the source, and runs as an unprivileged user.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first, from the lock alone (exact versions, hashes checked: the image installs
# what the tests ran against, docs/SETUP.md "Dependencies"), so a source change does not
# reinstall them. Then the project itself, without resolving anything again. The editable
# install points /opt/venv at /app, where `ebs db upgrade` finds alembic.ini and migrations/
# beside the code (a plain wheel would leave them behind).
COPY requirements/base.txt ./requirements/
RUN pip install --require-hashes -r requirements/base.txt
COPY pyproject.toml ./
RUN mkdir api worker common && touch api/__init__.py worker/__init__.py common/__init__.py \
    celeryconfig.py && pip install --no-deps -e .
COPY api ./api
COPY worker ./worker
COPY common ./common
COPY migrations ./migrations
COPY celeryconfig.py flowerconfig.py alembic.ini ./

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APP_ENV=production \
    FORWARDED_ALLOW_IPS="" \
    WS_MAX_SIZE=65536
RUN groupadd --system --gid 10001 ebs \
    && useradd --system --uid 10001 --gid ebs --home-dir /app --shell /usr/sbin/nologin ebs
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /app /app
WORKDIR /app
USER 10001:10001
# The API's port (the original image exposed 3000 while the server listened elsewhere).
EXPOSE 8000
# WS_MAX_SIZE is a setting uvicorn enforces: the shell passes it on (exec: uvicorn stays PID 1).
CMD ["sh", "-c", "exec uvicorn api.main:app --host 0.0.0.0 --port 8000 --timeout-graceful-shutdown 30 --http api.protocol:HttpProtocol --ws-max-size \"$WS_MAX_SIZE\""]
