"""Serving: one `Runtime` loads the base once and answers with any mix of the zoo's adapters per batch.

`Runtime` (runtime.py) is the entry point; every caller (the CLI, the demo, evaluation, combine, the API server)
goes through it. The other modules are the CPU kernels it installs on the loaded model; each patches one piece
of transformers, PEFT or bitsandbytes and says why:

- `attention.py`     decode/prefill attention for left-padded KV caches (one query token, many rows)
- `prefill.py`       batch prefill without pad tokens (shared prefix once, remainders packed)
- `kvcache.py`       a KV cache layer with room to grow, laid out from packed prefill rows
- `dense.py`         dense copies of NF4 weights for long prefill passes (bf16 matmuls instead of dequantizing)
- `lora_serving.py`  fewer tensor ops per LoRA layer; mixed-adapter batches as one stacked LoRA
"""
