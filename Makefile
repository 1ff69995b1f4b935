# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-dev lint bench

# The runtime only: what `moodwatch run` needs.
$(BIN)/moodwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# The test and lint tools on top (pytest, ruff, Playwright...) and PyTorch for the face-model
# trainer's tests: only for `make test`.
$(VENV)/.dev-installed: $(BIN)/moodwatch
	$(BIN)/pip install --quiet -e '.[dev,face-training]'
	touch $@

install: $(BIN)/moodwatch

install-dev: $(VENV)/.dev-installed

run: install
	$(BIN)/moodwatch run

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: install
	$(BIN)/moodwatch bench --images ../shared/datasets/web-happy-sad
