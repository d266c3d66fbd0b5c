# Atelier: the two commands are `make demo` and `make test`. Everything they need is set up here.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
# Pinned runtime (all a worker image installs) and dev/test requirements; the local venv has both.
REQUIREMENTS := requirements.txt requirements-dev.txt
STAMP := $(VENV)/.installed-$(shell cat $(REQUIREMENTS) pyproject.toml | sha256sum | cut -c1-12)
ATELIER := $(VENV)/bin/atelier

.PHONY: venv up down status demo test lint bench chaos lock clean tools browser

venv: $(STAMP)

# The virtualenv with the pinned uv: all `make lock` needs.
$(UV):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Debian: apt-get install python3.11 python3.11-venv)"; exit 1; }
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/python -m pip --version >/dev/null 2>&1 || $(VENV)/bin/python -m ensurepip >/dev/null
	@$(VENV)/bin/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"

$(STAMP): $(REQUIREMENTS) pyproject.toml | $(UV)
	@$(VENV)/bin/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	VIRTUAL_ENV=$(VENV) $(UV) pip install -q -r requirements.txt -r requirements-dev.txt
	VIRTUAL_ENV=$(VENV) $(UV) pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $@

# The executor: LocalExecutor by default (make demo); `make up EXECUTOR=celery WORKERS=2` runs the
# same stack on the CeleryExecutor with that many workers (Redis as broker).
EXECUTOR ?= local
WORKERS ?= 2

up: venv
	ATELIER_EXECUTOR=$(EXECUTOR) ATELIER_WORKERS=$(WORKERS) scripts/stack.sh up

down:
	scripts/stack.sh down

status:
	scripts/stack.sh status

# Runs one catalog drop of 200 sample SKUs end to end on the local stack and prints the summary.
demo: up
	$(ATELIER) demo --skus $${SKUS:-200}

# The deployment checks' tools (tests/deploy), apart from .venv because their pins conflict with
# Airflow's: checkov + check-jsonschema in .venv-tools, python-hcl2 in .venv-hcl2 (checkov's fork of
# it installs the same `hcl2` module). Rebuilt when their lock changes.
TOOLS_STAMP := .venv-tools/.installed-$(shell cat requirements-tools.txt | sha256sum | cut -c1-12)
HCL2_STAMP := .venv-hcl2/.installed-$(shell cat requirements-hcl2.txt | sha256sum | cut -c1-12)

tools: $(TOOLS_STAMP) $(HCL2_STAMP)

$(TOOLS_STAMP) $(HCL2_STAMP): | $(UV)
	@venv=$(@D); lock=requirements-$${venv#.venv-}.txt; rm -rf $$venv \
	  && $(UV) venv -q --python $(PYTHON) $$venv && VIRTUAL_ENV=$$venv $(UV) pip install -q -r $$lock \
	  && touch $@

# The Campaigns page browser test (tests/e2e/test_campaigns_ui_e2e.py) drives the machine's Chromium
# (Debian package, no recommends); Playwright never downloads a browser of its own.
browser:
	@command -v chromium >/dev/null || { if [ "$$(id -u)" = 0 ]; then s=; else s=sudo; fi; \
	  $$s apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$s apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# The whole suite: unit tests, integration tests on real Postgres/Redis/S3, end-to-end on real Airflow.
# Then the same stack on the CeleryExecutor with two workers for the tests marked `celery` (a worker
# killed mid-drop); pytest fails when a phase selects no test.
test: up tools browser
	$(VENV)/bin/ruff check dags include plugins tests
	scripts/stack.sh exec $(VENV)/bin/pytest -q --durations=30 -m "not celery" tests
	$(MAKE) --no-print-directory up EXECUTOR=celery WORKERS=2
	scripts/stack.sh exec $(VENV)/bin/pytest -q -m celery tests

lint: venv
	$(VENV)/bin/ruff check dags include plugins tests
	$(VENV)/bin/ruff format --check dags include plugins tests

# Benchmark: a 2,000-SKU drop (sharded) against one mapped task per SKU; prints the figures.
bench: up
	$(ATELIER) bench --skus $${SKUS:-2000}

# Chaos run: a 2,000-SKU drop against the faulty reference service; prints the accounting.
chaos: up
	$(ATELIER) chaos --skus $${SKUS:-2000} --outage $${OUTAGE:-60}

# Re-pin: requirements.txt from requirements.in (runtime), then requirements-dev.txt from
# requirements-dev.in, constrained by requirements.txt so a package both need has one version.
# Existing pins are kept unless an .in file asks otherwise.
lock: | $(UV)
	$(UV) pip compile requirements.in -o requirements.txt --python-version 3.11
	$(UV) pip compile requirements-dev.in -o requirements-dev.txt --python-version 3.11

clean: down
	rm -rf .state out
