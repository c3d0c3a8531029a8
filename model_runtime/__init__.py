"""The in-process Keye-VL-2.0 runtime.

Video decode and sampling (`video/`), the PyTorch model (`config`, `vision`, `model`, `vlm`), weight
loading, tokenizer and processor, the generation engines (`engine/`) and temporal grounding
(`grounding/`). Nothing here reads the environment, the database or the queue: callers pass arguments.
"""
