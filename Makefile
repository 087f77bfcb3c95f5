# Quick start: `make demo` (local cluster + benchmark) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the integration tests' own virtualenv: LMCache pins an older grpcio (1.78, through
# grpcio-observability) than the one the rest of the suite is run and checked with
INT_VENV := .venv-integrations
INT_STAMP := $(INT_VENV)/.installed

.PHONY: demo test proto system-deps venv clean

NATIVE := $(wildcard native/src/*.c native/include/*.h) native/build_native.py setup.py
# Debian packages the build needs: venv, a C toolchain, OpenSSL's libcrypto (grant HMACs in
# the data server), rdma-core's headers (the RDMA transport compiles whenever they exist),
# the openssl command (the TLS tests make their certificates with it) and etcd (the HA tests
# start their own /usr/bin/etcd on free ports).
APT_PACKAGES := python3-venv python3-dev gcc libssl-dev libibverbs-dev openssl etcd-server

# apt only when something is missing (you are root in CI): each package must be installed
# ("ii"; `dpkg -s` also passes a removed package whose configuration files remain). Nothing
# the install brings may keep running (etcd-server would start a system etcd): while apt
# runs, a policy-rc.d that refuses every service start stands in, unless the machine has
# one of its own.
system-deps:
	@installed=$$(dpkg-query -W -f='$${db:Status-Abbrev}\n' $(APT_PACKAGES) 2>/dev/null \
	    | grep -c '^ii'); \
	if ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
	    [ "$$installed" -ne $(words $(APT_PACKAGES)) ]; then \
	  apt-get update || exit 1; \
	  policy=/usr/sbin/policy-rc.d; own=; \
	  if [ ! -e $$policy ]; then \
	    own=1; printf '#!/bin/sh\nexit 101\n' > $$policy && chmod 755 $$policy || exit 1; \
	  fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_PACKAGES); status=$$?; \
	  if [ -n "$$own" ]; then rm -f $$policy; fi; \
	  exit $$status; \
	fi

$(STAMP): pyproject.toml $(NATIVE) | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -f native/_native*.so  # an in-place build of another suffix would shadow this one
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# the packages the integration tests run against (LMCache, CPU torch): only `make test` needs them
$(INT_STAMP): pyproject.toml $(NATIVE) | system-deps $(STAMP)
	test -x $(INT_VENV)/bin/python || $(PYTHON) -m venv $(INT_VENV)
	$(INT_VENV)/bin/pip install --quiet --upgrade pip
	$(INT_VENV)/bin/pip install --quiet -e '.[test,integrations]'
	touch $(INT_STAMP)

demo: venv
	$(BIN)/mooncake-bench --local --json bench-results.json

# MOONCAKE_REQUIRE_ETCD and _INTEGRATIONS: the HA and integration tests fail, rather than
# skip, when etcd or LMCache and torch are missing. tests/integrations run in their own venv.
# Both runs run, whatever the first found; the target fails if either did.
test: venv $(INT_STAMP)
	MOONCAKE_REQUIRE_ETCD=1 $(BIN)/python -m pytest -q --ignore=tests/integrations; \
	suite=$$?; \
	MOONCAKE_REQUIRE_INTEGRATIONS=1 $(INT_VENV)/bin/python -m pytest -q tests/integrations; \
	integrations=$$?; \
	test $$suite -eq 0 -a $$integrations -eq 0

# Regenerates the checked-in gRPC stubs (grpcio-tools is pinned to the grpcio floor).
proto: venv
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) $(INT_VENV) build *.egg-info .pytest_cache .hypothesis bench-results.json
