# Two commands on a fresh machine:  make demo   (the whole pipeline, tiny preset, local Ray)
#                                   make test   (the test suite)
# Both install what they need: OS packages (apt, when missing), a virtualenv in .venv with the
# project and its dev tools, and a separate .venv-tools with checkov (its pins clash with Ray's).

SHELL := /bin/bash
VENV ?= .venv
TOOLS ?= .venv-tools
PY := $(VENV)/bin/python
DATA ?= ./vlm3r-data
TORCH_VERSION := 2.13.0
APT_PACKAGES := libusb-1.0-0 libgl1 libegl1 libx11-6 libgomp1 g++ ninja-build
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint clean os-packages

os-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing OS packages: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml | os-packages
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(TOOLS)/.installed:
	test -x $(TOOLS)/bin/python || python3 -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --upgrade pip
	$(TOOLS)/bin/python -m pip install -q 'checkov>=3.2,<4'
	touch $@

install: os-packages $(VENV)/.installed $(TOOLS)/.installed

demo: os-packages $(VENV)/.installed
	$(PY) jobs/make_scenes.py --num-scenes 6 --out $(DATA) --seed 0

test: os-packages $(VENV)/.installed $(TOOLS)/.installed
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(PY) -m pytest -q -p no:cacheprovider --durations=15

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DATA) .pytest_cache
