# Two commands on a fresh machine:  make demo   (the embedded demo)   and   make test   (the test suite).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/monitor demo --workdir demo-run --images 8

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf demo-run evaluation
