PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench clean lock histories

run: $(STAMP)
	$(BIN)/bizosaas dev

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Test processes (pytest-xdist); 0 runs the suite in this one.
PYTEST_JOBS ?= 2

unit: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_JOBS) $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

# Record workflow histories for the replay suite (tests/workflows/test_replay.py) into
# tests/histories/: only states not committed yet; committed ones are replayed, never rewritten.
histories: $(STAMP)
	BIZ_RECORD_HISTORIES=1 $(BIN)/pytest -p no:cacheprovider tests/histories/scenarios.py $(PYTEST_ARGS)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Re-pin every dependency after changing pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable --exclude bizosaas > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
