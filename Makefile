# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install lint bench

$(BIN)/moodwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/moodwatch

run: install
	$(BIN)/moodwatch run

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: install
	$(BIN)/moodwatch bench --images ../shared/datasets/web-happy-sad
