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

TOKENS = $(DATA)/tokens/tiny-112px-32f-vf

# The whole pipeline on the tiny preset, a local Ray and a local folder ($(DATA)). Every step
# resumes: re-running `make demo` skips what is already written.
demo: os-packages $(VENV)/.installed
	$(PY) jobs/make_scenes.py --num-scenes 8 --val-fraction 0.25 --out $(DATA) --seed 0
	$(PY) jobs/generate_qa.py --scenes $(DATA) --out $(DATA) --seed 0
	$(PY) jobs/precompute_tokens.py --scenes $(DATA) --out $(DATA) --preset tiny --with-vision-features
	$(PY) jobs/train.py --qa $(DATA)/qa/conversations/train --tokens $(TOKENS) --out $(DATA)/runs/tiny \
		--preset tiny --num-workers 2 --cpus-per-worker 0.5 --max-steps 200 --micro-batch-size 4 --lr 1e-3 \
		--checkpoint-every 100
	$(PY) jobs/evaluate.py --model tiny --benchmark $(DATA)/qa/benchmark/val --tokens $(TOKENS) \
		--out $(DATA)/eval/untrained --title "untrained tiny"
	$(PY) jobs/evaluate.py --model $(DATA)/runs/tiny/model --benchmark $(DATA)/qa/benchmark/val \
		--tokens $(TOKENS) --out $(DATA)/eval/trained --title "trained tiny" --baseline $(DATA)/eval/untrained/summary.json
	$(PY) -m serve_apps.demo_client --model $(DATA)/runs/tiny/model \
		--video $(DATA)/scenes/synthetic/syn-000003/video.mp4 --question "How many chairs are in this room?"
	@echo "demo done. Under $(DATA): scenes/synthetic (videos + scene.json), qa/ (benchmark + conversations),"
	@echo "  tokens/tiny-112px-32f-vf (token shards), runs/tiny/model (trained model),"
	@echo "  eval/untrained and eval/trained (report.html, summary.md, predictions.jsonl, plots/)"
	@echo "demo page: $(VENV)/bin/serve run serve_apps.app:build_app model=$(DATA)/runs/tiny/model demo_videos=$(DATA)"
	@echo "  then open http://127.0.0.1:8000/"

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
