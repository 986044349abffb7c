"""`python -m bots.llama_server MODEL --port PORT ...`: llama.cpp's own server on loopback.

xllamacpp ships llama.cpp's C++ server (OpenAI-compatible, continuous batching) in prebuilt
wheels, so nothing compiles at install time. It runs in this child process, not inside
Parley, so a crash in native code or a model that takes a while to load never takes the bot
down, and the server's log lines never reach `parley chat`'s stdout.

The terminal sends Ctrl-C to its whole process group: the server ignores it, because Ctrl-C
in `parley chat` means "stop this reply", not "unload the model". It exits on SIGTERM, and on
its own when its parent is gone (so a killed `parley` never leaves it running).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

import xllamacpp

_PARENT_CHECK_SECONDS = 1.0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bots.llama_server")
    parser.add_argument("model", help="GGUF file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", required=True, help="model name the server answers to")
    parser.add_argument("--ctx", type=int, required=True, help="context tokens per conversation")
    parser.add_argument("--parallel", type=int, default=2, help="conversations decoded at once")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return parser.parse_args()


def main() -> None:
    arguments = _arguments()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()

    params = xllamacpp.CommonParams()
    params.model.path = arguments.model
    params.model_alias = {arguments.alias}
    params.hostnames = ["127.0.0.1"]
    params.port = arguments.port
    params.offline = True  # never reach for a model hub
    params.use_jinja = True  # the chat template inside the GGUF, as its authors wrote it
    params.n_parallel = arguments.parallel
    # The KV cache is split between the slots: each conversation gets the full window.
    params.n_ctx = arguments.ctx * arguments.parallel
    params.cpuparams.n_threads = arguments.threads
    params.cpuparams_batch.n_threads = arguments.threads
    try:
        server = xllamacpp.Server(params)  # serves from its own threads while referenced
    except RuntimeError as exc:  # llama.cpp's reason is in the log lines above
        raise SystemExit(f"could not load the model {arguments.model}: {exc}") from None
    print(f"listening on 127.0.0.1:{arguments.port}", flush=True)
    while not stop.wait(_PARENT_CHECK_SECONDS):
        if os.getppid() != parent:
            break
    del server
    # The server's threads are native and never joined: leave without waiting for them.
    os._exit(0)


if __name__ == "__main__":
    main()
