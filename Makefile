# Two commands on a fresh machine:  make demo   (the embedded demo)   and   make test   (the test suite).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean install-service tools

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/monitor demo --workdir demo-run --images 12

test: $(BIN)/.installed tools
	$(BIN)/python -m pytest -q

# the real Prometheus, promtool, Alertmanager and amtool the tests run against, and the headless Chromium and
# its WebDriver the results-page test drives (Debian packages), when missing
TOOLS := prometheus promtool prometheus-alertmanager amtool
BROWSER := /usr/bin/chromium /usr/bin/chromedriver
tools:
	@missing=0; for t in $(TOOLS); do command -v $$t >/dev/null || missing=1; done; \
	for f in $(BROWSER); do test -x $$f || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	    --no-install-recommends prometheus prometheus-alertmanager chromium chromium-driver; \
	fi

clean:
	rm -rf demo-run evaluation

# as root: system user, units rendered for this host, default configuration; see systemd/README.md
PREFIX ?= /opt/sem-line-monitor
EXPORT ?= /srv/sem-export
install-service:
	id -u sem-monitor >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin sem-monitor
	systemd/render.sh $(PREFIX) $(EXPORT) /etc/systemd/system
	install -d /etc/sem-line-monitor
	test -e /etc/sem-line-monitor/config.yaml || install -m 0644 config.yaml /etc/sem-line-monitor/config.yaml
	systemctl daemon-reload
