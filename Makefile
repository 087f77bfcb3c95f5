# Quick start: `make demo` (local cluster + benchmark) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test proto system-deps venv clean

NATIVE := $(wildcard native/src/*.c native/include/*.h) native/build_native.py setup.py
# Debian packages the build needs: venv, a C toolchain, OpenSSL's libcrypto (grant HMACs in
# the data server), rdma-core's headers (the RDMA transport compiles whenever they exist) and
# the openssl command (the TLS tests make their certificates with it).
APT_PACKAGES := python3-venv python3-dev gcc libssl-dev libibverbs-dev openssl

# apt only when something is missing (you are root in CI)
system-deps:
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null && \
	  dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_PACKAGES))

$(STAMP): pyproject.toml $(NATIVE) | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -f native/_native*.so  # an in-place build of another suffix would shadow this one
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
