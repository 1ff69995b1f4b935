# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip's own banners (a newer pip is out, running as root) and setuptools' notice about editable
# installs are nothing a user of `make run` acts on: the install is into this project's virtual
# environment. pip's errors still show (they are not Python warnings).
PIP := PIP_ROOT_USER_ACTION=ignore PYTHONWARNINGS=ignore $(BIN)/pip --quiet --disable-pip-version-check

.PHONY: run test install install-dev lint bench

# The runtime only: what `moodwatch run` needs.
$(BIN)/moodwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	touch $@

# The test and lint tools on top (pytest, ruff, Playwright...) and PyTorch for the face-model
# trainer's tests: only for `make test`.
$(VENV)/.dev-installed: $(BIN)/moodwatch
	$(PIP) install -e '.[dev,face-training]'
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
