# Quick start: `make demo` (local cluster + benchmark) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test proto system-deps venv clean

# System packages the build needs; apt only when something is missing (you are root in CI).
system-deps:
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
	  (apt-get update && apt-get install -y python3-venv python3-dev)

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/mooncake-bench --local --json bench-results.json

test: venv
	$(BIN)/python -m pytest -q

# Regenerates the checked-in gRPC stubs (grpcio-tools is pinned to the grpcio floor).
proto: venv
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis bench-results.json
