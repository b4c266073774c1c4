# PlayVault — every command a developer or CI needs. `make test` and `make run`
# install what they need themselves (virtualenvs in .venv and .venv-sam).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Lambda runtime is python3.12: find a matching interpreter on this machine
# (PATH first, then pyenv's installs) instead of assuming one.
PYTHON ?= $(shell for c in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	  $$c -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$c; break; }; done)

VENV := .venv
VENV_SAM := .venv-sam
PY := $(VENV)/bin/python
SAM := $(VENV_SAM)/bin/sam
# sam build looks for python3.12 on PATH; the app virtualenv provides it.
SAM_ENV := PATH=$(CURDIR)/$(VENV)/bin:$$PATH SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1
PYTEST_ARGS ?=
# `make test` runs pytest on every core (pytest-xdist): most tests wait on servers, not the CPU.
PYTEST_WORKERS ?= auto

.PHONY: help browser-deps install test test-deep unit integration e2e lint validate build deploy run serve bench rebuild-rollups clean

help:
	@echo "make run       the whole system locally on the embedded emulators, then a report (about 2 min)"
	@echo "               options: make run ARGS=\"--users 20 --hours 6\"; defaults 100 users, 24 simulated hours,"
	@echo "               no faults (--faults chaos adds them), --report FILE (JSON), --dashboard FILE (SVG),"
	@echo "               --parameter Name=Value (a template parameter, repeatable); every option: make run ARGS=--help"
	@echo "               the runner exits 0 (nothing lost or duplicated), 1 (plays lost or duplicated, or users charged for app failures),"
	@echo "               2 (bad usage), 3 (a function made an AWS call its IAM role in template.yaml would refuse: see IAM in the report);"
	@echo "               make prints that code and itself exits 2 on any non-zero one (GNU make's rule)"
	@echo "make test      lint, sam validate + build, unit, integration and e2e tests"
	@echo "make test-deep the stateful property test of the whole archive, long profile (about 10 min)"
	@echo "make bench     benchmarks -> bench/results.json, discussed in BENCHMARKS.md (about 6 min on 2 cores)"
	@echo "               options: make bench ARGS=\"--latency-ms 100,300 --dispatcher-users 10000\" (lists are"
	@echo "               comma-separated; defaults: latency 20,100,300 ms, 50 users a message, dispatcher 10000,100000"
	@echo "               users, 7 cold-start runs, both DynamoDB emulators); every option: make bench ARGS=--help"
	@echo "make serve     keep the local stack up with the sign-in page on 127.0.0.1 (make serve ARGS=--help)"
	@echo "make rebuild-rollups ARGS=\"--user ID | --all --endpoint-url URL\"   recompute rollups from the plays"
	@echo "               on the local stack at URL (make serve prints it as AWS (moto))"
	@echo "make validate | build | deploy   SAM template checks, build, deploy (ARGS passed to sam deploy)"

$(VENV)/.installed: requirements-dev.txt layers/playvault/requirements.txt
	@test -n "$(PYTHON)" || { echo "error: python3.12 not found (PATH or pyenv); install it first" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@# The layer package, the local tools and the bench are importable without copying.
	@echo -e "$(CURDIR)/layers/playvault\n$(CURDIR)/local\n$(CURDIR)" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/playvault-dev.pth
	@touch $@

$(VENV_SAM)/.installed: requirements-sam.txt
	@test -n "$(PYTHON)" || { echo "error: python3.12 not found (PATH or pyenv); install it first" >&2; exit 1; }
	@test -x $(VENV_SAM)/bin/python || $(PYTHON) -m venv $(VENV_SAM)
	$(VENV_SAM)/bin/python -m pip install -q -r requirements-sam.txt
	@touch $@

# The browser test drives Debian's Chromium (never a downloaded browser build).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

install: $(VENV)/.installed $(VENV_SAM)/.installed browser-deps

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The template as CloudFormation gets it (what sam deploy would create a change set from).
TRANSLATED := .aws-sam/translated.json
SAM_TRANSLATOR_VERSION := -c 'from importlib.metadata import version; print(version("aws-sam-translator"))'

# README.md (Development) lists what each step checks; no AWS credentials needed.
validate: $(VENV)/.installed $(VENV_SAM)/.installed
	$(SAM_ENV) $(SAM) validate --lint --template template.yaml
	$(VENV)/bin/cfn-lint --regions us-east-1 --append-rules tools/cfn_rules cfn_lint_serverless.rules -- template.yaml
	@# The translation checked below must be the one sam deploy makes: the SAM CLI's aws-sam-translator.
	@ours=$$($(PY) $(SAM_TRANSLATOR_VERSION)); sams=$$($(VENV_SAM)/bin/python $(SAM_TRANSLATOR_VERSION)); \
	  test "$$ours" = "$$sams" || { echo "error: .venv has aws-sam-translator $$ours, the SAM CLI in .venv-sam" \
	    "uses $$sams: pin aws-sam-translator==$$sams in requirements-dev.txt" >&2; exit 1; }
	$(PY) -m playvault_local.translate $(TRANSLATED)
	$(VENV)/bin/cfn-lint --regions us-east-1 --append-rules cfn_lint_serverless.rules -- $(TRANSLATED)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_template_deploys.py

build: $(VENV)/.installed $(VENV_SAM)/.installed
	$(SAM_ENV) $(SAM) build --template template.yaml --build-dir .aws-sam/build

# Stack name, region, capabilities and parameters: samconfig.toml (README.md, Operate).
# Another environment: make deploy ARGS="--config-env prod"; first time interactively: ARGS=--guided.
deploy: build
	$(SAM_ENV) $(SAM) deploy $(ARGS)

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: $(VENV)/.installed
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

e2e: $(VENV)/.installed
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# Everything before pytest two at a time (the virtualenvs side by side, then validate beside build:
# pip and sam build mostly wait on downloads); one make runs them, so no target is built twice at once.
# validate has just run tests/unit/test_template_deploys.py: pytest does not run it again.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target install lint validate build
	$(PY) -m pytest tests -n $(PYTEST_WORKERS) --ignore=tests/unit/test_template_deploys.py $(PYTEST_ARGS)

# The stateful property test (tests/integration/test_archive_stateful.py) with its long Hypothesis
# profile: many more and longer random interleavings than `make test` runs.
test-deep: $(VENV)/.installed
	PLAYVAULT_STATEFUL_PROFILE=archive-deep $(PY) -m pytest tests/integration/test_archive_stateful.py $(PYTEST_ARGS)

# The runner's own exit code is printed; make itself exits 2 whenever a recipe fails.
run: $(VENV)/.installed
	@$(PY) -m playvault_local run $(ARGS); rc=$$?; case $$rc in \
	  0) ;; \
	  1) echo "make run: the runner exited 1: plays lost or duplicated, or users charged for app failures (see the report above)" >&2 ;; \
	  2) echo "make run: the runner exited 2: bad usage or startup failure (make run ARGS=--help)" >&2 ;; \
	  3) echo "make run: the runner exited 3: AWS calls a function's IAM role would refuse (see IAM, DENIED above)" >&2 ;; \
	  *) echo "make run: the runner exited $$rc" >&2 ;; \
	esac; exit $$rc

serve: $(VENV)/.installed
	$(PY) -m playvault_local serve $(ARGS)

bench: $(VENV)/.installed
	$(PY) -m bench $(ARGS)

rebuild-rollups: $(VENV)/.installed
	$(PY) -m playvault_local rebuild-rollups $(ARGS)

clean:
	rm -rf $(VENV) $(VENV_SAM) .aws-sam .pytest_cache .ruff_cache
