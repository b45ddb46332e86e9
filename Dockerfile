# One image recipe for the whole fleet: `--build-arg SERVICE=<name>` picks the service it runs.
# Every image holds the same code and the same pinned packages that `make run` installs, so the ten
# builds share every layer but the last, and a service runs in a container exactly as it runs locally.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The services run as an unprivileged user; a numeric id lets Kubernetes check runAsNonRoot.
RUN python -m venv /opt/venv \
 && groupadd --system --gid 10001 fleet \
 && useradd --system --uid 10001 --gid fleet --create-home --shell /usr/sbin/nologin fleet

WORKDIR /app

# Dependencies in their own layer, from the same pinned list as the local runner: it is rebuilt
# only when requirements.txt changes, not on every code change.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# The project itself, installed so `uvicorn <service>.main:app` imports it from anywhere. The
# .dockerignore admits only what this needs: the packages pyproject.toml lists and the two files.
COPY . ./
RUN pip install --no-deps . \
 && rm -rf build ./*.egg-info

USER 10001:10001

# Containers listen on every interface of their own network namespace (the local runner, on loopback).
ENV BIND_HOST=0.0.0.0
# 8101-8110: the asynchronous fleet; 8001-8010: the synchronous one (FLEET_MODE=sync).
EXPOSE 8101-8110 8001-8010

# Only what follows differs between the ten images.
ARG SERVICE
ENV SERVICE=${SERVICE}
RUN python -m devtools.container check

# Liveness: /health answers once the lifespan has opened the database, the broker and the consumers.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "devtools.container", "health"]

# The Procfile's command for SERVICE (devtools/fleet.py), run by a shell that execs uvicorn, which
# then receives `docker stop`'s SIGTERM itself and finishes in-flight work before it exits.
CMD ["python", "-m", "devtools.container", "run"]
