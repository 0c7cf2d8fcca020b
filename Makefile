# Two entry points (see README): `make demo` and `make test`. Every install step lives here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/coldstart: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install demo test
install: $(BIN)/coldstart

demo: install
	$(BIN)/coldstart demo

# pytest exits 5 when it collected nothing; that must fail the build, and it does (non-zero).
test: install
	$(BIN)/python -m pytest -q
