"""Serving: one `Runtime` loads the base once and answers with any mix of the zoo's adapters per batch.

`Runtime` (runtime.py) is the entry point; every caller (the CLI, the demo, evaluation, combine, the API server)
goes through it; `engine.py` decodes step by step on a runtime's model for the API server (continuous batching).
`attention.py` owns the attention each phase runs (training, prefill, decode); the runtime installs the serving
one, training switches to its own for the run. The other modules are the CPU kernels the runtime installs on the
loaded model; each patches one piece of transformers, PEFT or bitsandbytes and says why:

- `attention.py`     the runtime's attention: prompt by prompt in packed prefill passes, grouped matmuls for
                     decode steps over left-padded KV caches
- `prefill.py`       batch prefill without pad tokens (shared prefix once, remainders packed)
- `kvcache.py`       a KV cache layer with room to grow, laid out from packed prefill rows
- `dense.py`         dense copies of NF4 weights for long prefill passes (plain matmuls, no dequantizing)
- `lora_serving.py`  fewer tensor ops per LoRA layer; mixed-adapter batches as one stacked LoRA
"""
