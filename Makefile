# Two commands on a fresh machine: `make run` starts the app, `make test` runs the suite.
# Both build .venv from requirements.txt first when it is missing or older than it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: run test venv browser clean

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

venv: $(STAMP)

# Debian's chromium for the real-browser tests; installed with apt-get when root.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)); \
	  else echo "chromium missing: run 'sudo apt-get install chromium' for the browser tests"; fi; \
	fi

run: $(STAMP)
	$(VENV)/bin/streamlit run app.py --server.address localhost --server.port $(PORT)

test: $(STAMP) browser
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
