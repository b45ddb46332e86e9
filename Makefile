# `make run` starts the whole fleet on this machine; `make test` runs the whole suite.
# Both create the virtual environment and install the pinned packages on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

# Settings come from the environment with the defaults in common/settings.py (the local fleet uses
# vhost `fleet` and database `fleet` on 127.0.0.1); e.g. `RABBITMQ_URL=... make run` overrides them.

PYTEST_ARGS ?=

.PHONY: help venv run run-sync test lint format procfile docs monitoring kubernetes lock clean bench compare faults cluster

# The Docker path (docker-compose-async.yml); credentials from .env (see .env.example).
# `make up UP_ARGS="--scale emailservice=3"`, `make logs SERVICE=emailservice`, `make load PROFILE=smoke`
.PHONY: up up-cluster down logs load
COMPOSE := docker compose -f docker-compose-async.yml
UP_ARGS ?=
SERVICE ?=
PROFILE ?= default

# The synchronous fleet in Docker (docker-compose-sync.yml): FLEET_MODE=sync, no broker, ports 8001-8010.
.PHONY: up-sync down-sync logs-sync load-sync
COMPOSE_SYNC := docker compose -f docker-compose-sync.yml

help:
	@echo "make run    - start all ten services (honcho) against the local RabbitMQ and PostgreSQL"
	@echo "make run-sync - the synchronous fleet (HTTP calls, no broker) on ports 8001-8010, database fleet_sync"
	@echo "make up     - build the images and start the whole stack in Docker, waiting until it is healthy"
	@echo "make up-cluster - the same stack on a 3-node RabbitMQ cluster (compose profile \`cluster\`)"
	@echo "make down   - stop and remove the stack's containers (its data volumes stay)"
	@echo "make up-sync, down-sync, logs-sync, load-sync - the same for the synchronous fleet (docker-compose-sync.yml)"
	@echo "make logs   - follow the stack's logs (SERVICE=emailservice for one service)"
	@echo "make load   - run the k6 load test inside the compose network (PROFILE=smoke|default|stress)"
	@echo "make test   - lint, then run the whole test suite (unit, integration, end-to-end)"
	@echo "make faults - the fault-injection suite alone; rewrites docs/fault-injection-report.md"
	@echo "make cluster - a 3-node RabbitMQ cluster on this machine (free ports, .cluster/); prints how to run the fleet on it"
	@echo "make bench  - measure the fleet on this machine (a few minutes); writes docs/bench/ and README.md"
	@echo "make compare - both fleets under the same load, side by side (~15 min); writes docs/compare/ and README.md"
	@echo "make lint   - ruff"
	@echo "make docs   - regenerate docs/asyncapi.json and the README diagram from the topology"
	@echo "make monitoring - regenerate the Prometheus configs and Grafana dashboards"
	@echo "make kubernetes - regenerate deploy/kubernetes/ and docs/capacity.md (after make bench, too)"
	@echo "make lock   - re-pin requirements*.txt from requirements*.in"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(STAMP)

# Every variable in the environment reaches every service (EMAIL_SEND_DELAY_S=0.05 make run).
# `-e /dev/null` keeps honcho from reading .env, which holds the Docker setup's values.
run: $(STAMP)
	$(BIN)/python -m devtools.provision
	PATH="$(BIN):$$PATH" $(BIN)/honcho start --procfile Procfile --env /dev/null

# The synchronous fleet: the same services with FLEET_MODE=sync, a database of its own, no broker; it can
# run beside `make run`'s fleet.
SYNC_DATABASE_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/fleet_sync
run-sync: $(STAMP)
	DATABASE_URL=$(SYNC_DATABASE_URL) $(BIN)/python -m devtools.provision --database-only
	FLEET_MODE=sync DATABASE_URL=$(SYNC_DATABASE_URL) PATH="$(BIN):$$PATH" \
		$(BIN)/honcho start --procfile Procfile.sync --env /dev/null

# Both fleets, one after the other, on free ports with databases of their own; COMPARE_ARGS=--short is CI's.
COMPARE_ARGS ?=
compare: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/python -m bench.compare $(COMPARE_ARGS)

# Starts its own fleet on free ports (its own vhost and database) and stops it; not part of `make test`.
BENCH_ARGS ?=
bench: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/python -m bench $(BENCH_ARGS)

# Three clustered RabbitMQ nodes of their own (the machine's broker is left alone), until Ctrl-C.
cluster: $(STAMP)
	$(BIN)/python -m devtools.rabbitmq_nodes

# The fault-injection suite on its own (it is part of `make test` too), keeping its table in docs/.
faults: $(STAMP)
	PATH="$(BIN):$$PATH" $(BIN)/pytest tests/faults --fault-report=docs/fault-injection-report.md $(PYTEST_ARGS)

test: $(STAMP) lint
	PATH="$(BIN):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

procfile: $(STAMP)
	$(BIN)/python -m devtools.fleet

# Regenerate docs/asyncapi.json and README.md's message-map diagram from common/topology.py.
docs: $(STAMP)
	$(BIN)/python -m devtools.docs

# Regenerate prometheus/*.yml and grafana/dashboards/*.json from devtools/{monitoring,dashboards}.py.
monitoring: $(STAMP)
	$(BIN)/python -m devtools.monitoring
	$(BIN)/python -m devtools.dashboards

# Regenerate deploy/kubernetes/ (kustomize base, local overlay) and docs/capacity.md from devtools/kubernetes.py:
# the fleet, compose's settings, the message map and docs/bench/results.json.
kubernetes: $(STAMP)
	$(BIN)/python -m devtools.kubernetes

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Generated by 'make lock' from requirements.in: the exact runtime set for the local runner and the images."; \
	  .lock-venv/bin/pip freeze; } > requirements.txt
	.lock-venv/bin/pip install --quiet -r requirements-dev.in
	{ echo "# Generated by 'make lock' from requirements-dev.in: tools for the local runner and the tests."; \
	  echo "-r requirements.txt"; .lock-venv/bin/pip freeze | grep -v -x -F -f <(grep -v '^#' requirements.txt); } \
	  > requirements-dev.txt
	rm -rf .lock-venv

up:
	$(COMPOSE) up -d --build --wait $(UP_ARGS)

# The same stack on three RabbitMQ nodes (the compose `cluster` profile); the services fail over between
# them. The URLs carry the compose defaults' credentials: with others in .env, pass RABBITMQ_USER=...
# RABBITMQ_PASSWORD=... RABBITMQ_VHOST=... to make as well.
RABBITMQ_USER ?= guest
RABBITMQ_PASSWORD ?= guest
RABBITMQ_VHOST ?= fleet
CLUSTER_NODE_URL = amqp://$(RABBITMQ_USER):$(RABBITMQ_PASSWORD)@$(1):5672/$(RABBITMQ_VHOST)
up-cluster:
	RABBITMQ_FAILOVER_URLS=$(call CLUSTER_NODE_URL,rabbitmq-2),$(call CLUSTER_NODE_URL,rabbitmq-3) \
	  $(COMPOSE) --profile cluster up -d --build --wait $(UP_ARGS)

down:
	$(COMPOSE) --profile load --profile cluster down --remove-orphans

logs:
	$(COMPOSE) logs -f --tail=100 $(SERVICE)

# k6 runs as you, so the summaries it writes into k6-tests/results/ are yours.
load:
	mkdir -p k6-tests/results
	K6_UID=$$(id -u) K6_GID=$$(id -g) $(COMPOSE) --profile load run --rm -e PROFILE=$(PROFILE) k6

up-sync:
	$(COMPOSE_SYNC) up -d --build --wait $(UP_ARGS)

down-sync:
	$(COMPOSE_SYNC) --profile load down --remove-orphans

logs-sync:
	$(COMPOSE_SYNC) logs -f --tail=100 $(SERVICE)

load-sync:
	mkdir -p k6-tests/results
	K6_UID=$$(id -u) K6_GID=$$(id -g) $(COMPOSE_SYNC) --profile load run --rm -e PROFILE=$(PROFILE) k6

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
