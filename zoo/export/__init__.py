"""Exports of the zoo to the engines people already run: vLLM / SGLang (PEFT folders checked against their loader
rules, launch scripts, the router's name mapping) in `vllm.py`, llama.cpp (LoRA adapter GGUFs) in `gguf.py`."""
