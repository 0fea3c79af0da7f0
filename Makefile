# shiftstream developer tasks. `make help` lists them.
PYTHON ?= .venv/bin/python
VENV := .venv

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets with their descriptions
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VENV)/bin/python -m pip install --quiet -e ".[dev,darec]"
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install shiftstream with its dev and darec extras

.PHONY: test
test: install ## Run the whole test suite (unit + integration on the embedded broker)
	$(PYTHON) -m pytest

.PHONY: test-unit
test-unit: install ## Run the tests that need no broker
	$(PYTHON) -m pytest -m "not integration"

.PHONY: lint
lint: install ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: fmt
fmt: install ## Format and autofix with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: broker
broker: install ## Start the embedded Kafka-compatible broker on 127.0.0.1:9092
	$(PYTHON) -m stream.broker --port 9092

# ML-1M comes from ML1M_DIR when set (default: the shared subset beside the checkout, if present),
# else it is downloaded from GroupLens once and cached.
ML1M_DIR ?= $(wildcard ../shared/data/ml-1m-subset)
DEMO_DATA := $(if $(ML1M_DIR),--data-dir $(ML1M_DIR),)

# The demo: ML-1M from 2001 on (at most 40,000 events; users with long histories), a genre swap
# injected for 30 % of the users 40 % of the way in, six models (each adaptive one beside its
# frozen twin), 90 s of CPU training per model; about 12 minutes on a 2-core CPU.
DEMO_FLAGS := --start 2001-01-01 --limit 40000 --inject genre-swap --inject-at 0.4 \
	--cohort-frac 0.3 --seed 0 --models pop,sasrec,ttt4rec,ttt4rec:frozen,t2arec,t2arec:frozen \
	--train-budget-s 90 --batch-size 64

.PHONY: demo
demo: install ## Run the main job end to end: embedded broker, worker, replay, Parquet, report
	SHIFTSTREAM_SESSION_TIMEOUT_S=60 $(PYTHON) -m stream run ml-1m $(DEMO_DATA) $(DEMO_FLAGS) --out runs/demo
	@echo "report: runs/demo/report/report.html"

.PHONY: bench
bench: install ## Run the benchmark scripts under bench/ (prints tables)
	@for script in bench/bench_*.py; do echo "== $$script"; $(PYTHON) $$script || exit 1; done

.PHONY: up
up: ## docker compose up (Apache Kafka + worker + replayer; needs Docker)
	docker compose up --build

.PHONY: down
down: ## docker compose down
	docker compose down
