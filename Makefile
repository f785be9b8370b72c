# Everything runs from a virtual environment the Makefile creates (.venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv demo demo-runserver test test-slow test-all unit lint bench bench-storm bench-scaleout clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml ws4redis_uwsgi/bus/_fanout.c
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is needed"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# uWSGI builds from source; its websocket handshake needs OpenSSL headers.
	$(PY) -m pip install -q -e '.[test,testing,lint,demo,bench]' || { echo "install failed: uWSGI needs a C compiler and libssl-dev (apt-get install build-essential libssl-dev)"; exit 1; }
	touch $@

venv: $(VENV)/.installed

## The demo chat on http://127.0.0.1:8000/ under the uWSGI emperor (Ctrl-C stops it).
demo: venv
	$(PY) deploy/run_demo.py

## The same demo under `manage.py runserver` (the development path), on http://127.0.0.1:8000/.
demo-runserver: venv
	$(PY) deploy/run_demo.py --runserver

## The test suite: unit tests and integration tests against real redis-server and uWSGI (about 5 minutes on 2 cores).
test: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

## The slow ones: Sentinel and Cluster topologies and their failovers, fault scenarios of 5 s or more each (about 5 minutes more).
test-slow: venv
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

## Everything, as .ci/run runs it.
test-all: test test-slow

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check ws4redis_uwsgi tests bench deploy
	$(VENV)/bin/ruff format --check ws4redis_uwsgi tests bench deploy
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

## ws4redis_uwsgi against ws4redis 0.6 and Channels 4 (environments built once under bench/.envs).
bench: venv
	$(PY) bench/peers.py

## The reconnect storm: 10,000 resuming clients through a worker crash and a reload (bench/README.md).
bench-storm: venv
	$(PY) bench/storm.py

## Scale-out: two vassals on one Redis, publishes to many users, history's cost, Sentinel and Cluster (bench/README.md).
bench-scaleout: venv
	$(PY) bench/scaleout.py

clean:
	rm -rf $(VENV) build *.egg-info
