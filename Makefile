# Two commands on a fresh machine:  make demo   (the embedded demo)   and   make test   (the test suite).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean install-service tools

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/monitor demo --workdir demo-run --images 12

test: $(BIN)/.installed tools
	$(BIN)/python -m pytest -q

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
	rm -rf demo-run evaluation $(TOOLS_DIR)

# as root: system user, units rendered for this host, default configuration; see systemd/README.md
PREFIX ?= /opt/sem-line-monitor
EXPORT ?= /srv/sem-export
install-service:
	id -u sem-monitor >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin sem-monitor
	systemd/render.sh $(PREFIX) $(EXPORT) /etc/systemd/system
	install -d /etc/sem-line-monitor
	test -e /etc/sem-line-monitor/config.yaml || install -m 0644 config.yaml /etc/sem-line-monitor/config.yaml
	systemctl daemon-reload
