# Two entry points (see README): `make demo` and `make test`. Every install step lives here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/coldstart: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build first: otherwise the SFT extra pulls torch with several GB of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test system-deps
install: $(BIN)/coldstart

# Debian's Chromium, for the test that renders the HTML report headless.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium) >/dev/null; } || \
	  echo "warning: chromium could not be installed; the report's browser test will fail under CI"

demo: install
	$(BIN)/coldstart demo

# pytest exits 5 when it collected nothing; that must fail the build, and it does (non-zero).
test: install system-deps
	$(BIN)/python -m pytest -q
