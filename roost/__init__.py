"""roost: a stateful, OpenAI-compatible inference server for local LLMs on llama.cpp."""

__version__ = "0.1.0"
