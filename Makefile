# Each target is a thin cargo line. `make run` and `make test` are all a newcomer needs.
CARGO       ?= cargo
PLUGINS_DIR := target/plugins
# The plugin libraries built into target/plugins, where plugins.toml and the example profiles
# look for them: the OSS defaults (file stores, single-user auth, log monitoring, standalone
# manager) and the enterprise ones (PostgreSQL stores, SaaS auth). The Dockerfile bundles the
# same list (a test checks it).
BUNDLED     := file_stores default_auth log_monitoring saas_monitoring standalone_manager sandbox_runtime openhands_runtime clustered_manager postgres_stores saas_auth billing integrations
EXAMPLE     := examples/token-auth/Cargo.toml

.PHONY: build plugins examples run test test-browser services openhands-env bench bench-openhands lint fmt frontend

build:
	$(CARGO) build --workspace

# Copies the bundled libraries where plugins.toml looks for them (0644 in a 0755 directory:
# the host refuses libraries that other users could replace).
plugins: build
	install -d -m 0755 $(PLUGINS_DIR)
	for p in $(BUNDLED); do install -m 0644 target/debug/lib$$p.so $(PLUGINS_DIR)/; done

# The third-party example, built on its own as an outside author would (shares target/).
examples:
	$(CARGO) build --manifest-path $(EXAMPLE) --target-dir target

# The profile: $OPENHANDS_PLUGINS_TOML when set (the example profiles' usage lines), else
# plugins.toml; ARGS go to the server (`make run ARGS="--bind 127.0.0.1:3001 --admin-bind off"`).
OPENHANDS_PLUGINS_TOML ?= plugins.toml
ARGS ?=

run: plugins
	target/debug/oh-host --config $(OPENHANDS_PLUGINS_TOML) $(ARGS)

services:
	bash .ci/services

# OpenHands' action execution server in a cached virtual environment (OPENHANDS_VENV), for the
# OpenHandsRuntime's tests and for running it locally; a complete one is left as it is.
openhands-env:
	bash .ci/openhands-env

# The web client: OpenHands' 0.62.0 frontend build into ./frontend/build, where the server
# looks for it when FRONTEND_DIRECTORY is unset. FRONTEND_SRC names a build (`npm run build`
# in OpenHands' frontend/ at tag 0.62.0); the default is the one next to this checkout.
FRONTEND_SRC ?= ../shared/openhands-frontend-0.62.0
frontend:
	@if [ -f "$(FRONTEND_SRC)/index.html" ]; then \
	  rm -rf frontend/build && mkdir -p frontend && cp -R "$(FRONTEND_SRC)" frontend/build && \
	  echo "web client: frontend/build (from $(FRONTEND_SRC)); make run serves it"; \
	else \
	  echo "make frontend: no build at $(FRONTEND_SRC): build OpenHands' frontend at tag 0.62.0 (npm ci && npm run build in its frontend/) and pass FRONTEND_SRC=<its build directory>" >&2; \
	  exit 1; \
	fi

test: services openhands-env plugins examples
	$(CARGO) test --workspace
	$(CARGO) test --manifest-path $(EXAMPLE) --target-dir target

# Only the browser tests (the OpenHands web client in headless Chromium); fails when the
# client's build is absent (OH_FRONTEND_DIR, default ../shared/openhands-frontend-0.62.0).
test-browser: services plugins
	OH_REQUIRE_BROWSER=1 $(CARGO) test -p oh-e2e --test it -- browser::

# `make bench SECTIONS="2 7"` runs only those sections (numbered in bench/src/main.rs).
bench: services
	bash bench/run $(SECTIONS)

# oh-host next to OpenHands 0.62.0 itself (bench section 13): the same routes and files, one run.
bench-openhands: services openhands-env
	bash bench/run 13

# Formatting, clippy, and the repository's own checks (unused dependencies, a complete
# configuration reference, no citation outside the repository).
lint: plugins
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test -p oh-e2e --test it -- hygiene::

fmt:
	$(CARGO) fmt --all
