"""`python -m bots.llama_server ...`: llama_cpp.server with llama.cpp's weight repacking off.

llama-cpp-python 0.3.36, built natively on a CPU with AMX (Sapphire Rapids and later, common
on cloud VMs), crashes with SIGSEGV in `decode` as soon as a prompt is longer than a couple
of tokens: the crash is in the repacked ("extra buffer type") weights. llama.cpp's own
`--no-repack` is not an option of the Python server, so this launcher clears
`use_extra_bufts` in the default model parameters before the server loads the model. For a
model as small as the shipped one the speed difference is not measurable.
"""

from __future__ import annotations

import runpy

from llama_cpp import llama

_defaults = llama.llama_cpp.llama_model_default_params


def _without_repack() -> object:
    params = _defaults()
    params.use_extra_bufts = False
    return params


llama.llama_cpp.llama_model_default_params = _without_repack
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
