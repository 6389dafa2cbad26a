# `make demo` and `make test` each build .venv on first use (pinned install), then run.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install clean browser

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/faircompress run

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# Debian's Chromium for the report's browser test, installed where missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { timeout 120 $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		timeout 600 $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
		|| echo "note: chromium could not be installed; the browser test will be skipped"

clean:
	rm -rf $(VENV) runs .pytest_cache
