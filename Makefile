# Two commands on a fresh machine:  make demo   (the embedded demo)   and   make test   (the test suite).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean install-service uninstall-service tools

# the full install (fitting, every method, CUDA, the backtest's Ray cluster, the tests): torch and its CUDA libraries,
# about 6 GB
$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[fit,cluster,test]'
	touch $@

# the line PC's install (`pip install .`: scoring, the daemon, the page; no torch, about 0.5 GB) with pytest, on
# which `make test` runs the scoring, daemon and model-install tests again
SLIM := .venv-slim
$(SLIM)/.installed: pyproject.toml constraints.txt
	test -x $(SLIM)/bin/python || $(PY) -m venv $(SLIM)
	$(SLIM)/bin/pip install --quiet -c constraints.txt -e . pytest pytest-xdist
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/monitor demo --workdir demo-run --images 12

SLIM_TESTS := tests/test_slim.py tests/test_graph.py tests/test_daemon.py tests/test_install.py
test: $(BIN)/.installed $(SLIM)/.installed tools
	$(BIN)/ruff check monitor tests bench
	$(BIN)/python -m pytest -q -n 3 --dist loadfile
	rm -rf .slim-models && $(BIN)/python -m tests.slim_model .slim-models >/dev/null
	MONITOR_TEST_MODEL=$(CURDIR)/.slim-models $(SLIM)/bin/python -m pytest -q -n 3 -p no:cacheprovider -m line_pc $(SLIM_TESTS)

# The real Prometheus, promtool, Alertmanager and amtool the tests run against: Debian's packages unpacked into
# .tools/ (apt-get download + dpkg-deb -x), never installed, so no service is created or enabled on this host.
# The headless Chromium and its WebDriver that the results-page test drives are installed from Debian when missing
# (they bring no service).
TOOLS_DIR := .tools
TOOLS_BIN := $(CURDIR)/$(TOOLS_DIR)/root/usr/bin
TOOL_DEBS := prometheus prometheus-alertmanager
BROWSER := /usr/bin/chromium /usr/bin/chromedriver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
tools: $(TOOLS_DIR)/.unpacked
	@missing=0; for f in $(BROWSER); do test -x $$f || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    --no-install-recommends chromium chromium-driver; \
	fi

$(TOOLS_DIR)/.unpacked:
	rm -rf $(TOOLS_DIR) && mkdir -p $(TOOLS_DIR)/debs
	cd $(TOOLS_DIR)/debs && { apt-get download $(TOOL_DEBS) || { $(SUDO) apt-get update -qq && apt-get download $(TOOL_DEBS); }; }
	for d in $(TOOLS_DIR)/debs/*.deb; do dpkg-deb -x $$d $(TOOLS_DIR)/root; done
	rm -rf $(TOOLS_DIR)/debs
	$(TOOLS_BIN)/promtool --version >/dev/null && $(TOOLS_BIN)/amtool --version >/dev/null
	touch $@

clean:
	rm -rf demo-run evaluation .slim-models $(TOOLS_DIR)

# as root: the code and its own virtualenv under PREFIX, the units, one configuration per line, the system user;
# see systemd/README.md. DESTDIR=<scratch root> installs there instead (no user, no systemctl).
PREFIX ?= /opt/sem-line-monitor
EXPORT ?= /srv/sem-export
LINES ?=
LINE ?= line1
DESTDIR ?=
DEPS_FROM ?=
EXTRAS ?=
install-service uninstall-service:
	PREFIX='$(PREFIX)' EXPORT='$(EXPORT)' LINES='$(LINES)' LINE='$(LINE)' DESTDIR='$(DESTDIR)' \
	  DEPS_FROM='$(DEPS_FROM)' EXTRAS='$(EXTRAS)' PY='$(PY)' systemd/install.sh $(if $(filter uninstall-service,$@),uninstall,install)
