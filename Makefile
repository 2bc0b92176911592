# The newcomer's path: `make install`, then `make test`.
# Another interpreter: `make install PYTHON=/path/to/python3.13` (3.11 to 3.13).
PYTHON ?= python3
VENV := .venv

.PHONY: install test lint clean

install:
	PYTHON="$(PYTHON)" bash scripts/install.sh

test: $(VENV)/bin/python
	$(VENV)/bin/python -m pytest

# Both checkers always run; lint fails if either does.
lint: $(VENV)/bin/python
	@status=0; \
	echo "$(VENV)/bin/ruff check ."; $(VENV)/bin/ruff check . || status=1; \
	echo "$(VENV)/bin/mypy"; $(VENV)/bin/mypy || status=1; \
	exit $$status

$(VENV)/bin/python:
	@echo "no $(VENV): run 'make install' first" >&2; exit 1

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis
