"""roost.llama: the only package that imports llama_cpp."""

import os

os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # a llama.cpp abort must not start gdb
