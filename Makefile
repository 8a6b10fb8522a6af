# Two commands on a fresh machine:  make demo   (the whole pipeline, tiny preset, local Ray)
#                                   make test   (the test suite)
# Both install what they need: OS packages (apt, when missing), a virtualenv in .venv with the
# project and its dev tools, and a separate .venv-tools with checkov (its pins clash with Ray's).

SHELL := /bin/bash
VENV ?= .venv
TOOLS ?= .venv-tools
PY := $(VENV)/bin/python
, := ,
DATA ?= ./vlm3r-data
TORCH_VERSION := 2.13.0
APT_PACKAGES := libusb-1.0-0 libgl1 libegl1 libx11-6 libgomp1 g++ ninja-build
# Headless Chromium for the browser tests (make test only). Debian names; where the distribution has
# no such package (Ubuntu ships Chromium as a snap) they are skipped and the browser tests skip too.
BROWSER_PACKAGES := chromium chromium-driver
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test cluster-test lint clean os-packages browser-packages

# apt-get runs only for missing packages (through sudo when not root); $(1): the packages,
# $(2): "optional" to skip packages the distribution does not have.
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "[install] OS packages: $$missing (apt-get, about a minute)"; \
		$$SUDO apt-get update -qq; \
		if [ "$(2)" = optional ]; then \
			missing=$$(for p in $$missing; do apt-cache show $$p >/dev/null 2>&1 && echo $$p || echo "[install] $$p: not in this distribution, skipped" >&2; done); \
		fi; \
		[ -z "$$missing" ] || DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

os-packages:
	$(call apt_install,$(APT_PACKAGES),required)

browser-packages:
	$(call apt_install,$(BROWSER_PACKAGES),optional)

# One install step: $(1) its name and expected time, $(2) the pip arguments. pip's own output goes to
# $(VENV)/install.log (shown when a step fails).
define pip_step
	@echo "[install] $(1)"
	@$(PY) -m pip install -q $(2) >> $(VENV)/install.log 2>&1 || { tail -n 30 $(VENV)/install.log; exit 1; }
endef

$(VENV)/.installed: pyproject.toml | os-packages
	@echo "[install] 3 steps into $(VENV), about 5-8 minutes on a fresh machine (log: $(VENV)/install.log)"
	@test -x $(PY) || python3 -m venv $(VENV)
	$(call pip_step,1/3 pip (seconds),--upgrade pip)
	$(call pip_step,2/3 torch $(TORCH_VERSION)$(,) CPU wheel (1-2 minutes),torch==$(TORCH_VERSION))
	$(call pip_step,3/3 the project and its libraries: Ray$(,) transformers$(,) DeepSpeed$(,) PyAV$(,) open3d ... (3-5 minutes),-e '.[dev]')
	@echo "[install] done: $$($(PY) -c 'import ray, torch, transformers; print(f"torch {torch.__version__}, ray {ray.__version__}, transformers {transformers.__version__}")')"
	@touch $@

$(TOOLS)/.installed:
	@echo "[install] checkov in $(TOOLS) (its pins clash with Ray's; about a minute)"
	@test -x $(TOOLS)/bin/python || python3 -m venv $(TOOLS)
	@$(TOOLS)/bin/python -m pip install -q --upgrade pip > $(TOOLS)/install.log 2>&1 || { tail -n 30 $(TOOLS)/install.log; exit 1; }
	@$(TOOLS)/bin/python -m pip install -q 'checkov>=3.2,<4' >> $(TOOLS)/install.log 2>&1 || { tail -n 30 $(TOOLS)/install.log; exit 1; }
	@touch $@

install: os-packages $(VENV)/.installed $(TOOLS)/.installed

# The whole pipeline on the tiny preset, a local Ray and a local folder ($(DATA)), one stage after
# another (jobs/demo.py: a header, a progress bar and a summary line per stage; each stage's full
# output in $(DATA)/logs/<stage>.log). Every stage resumes: re-running `make demo` skips what is
# already written.
demo: os-packages $(VENV)/.installed
	@$(PY) jobs/demo.py --data $(DATA)

test: os-packages browser-packages $(VENV)/.installed $(TOOLS)/.installed
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(PY) -m pytest -q -p no:cacheprovider --durations=15

# The multi-node cluster proof at full size (make test runs it CI-sized, -m cluster): a head and 2
# worker nodes on loopback (cluster/local), every job through `ray job submit --working-dir .` on a moto
# S3, a worker node lost in precompute and in training, both Serve deployments scaling on their own.
cluster-test: os-packages $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider -s --durations=10 tests/cluster/test_local_cluster.py --cluster-full

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DATA) .pytest_cache
