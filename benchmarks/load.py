"""Load and fault injection against vLLM's OpenAI server running on the XLA backend.

Starts ``vllm serve`` on loopback (or targets ``--url``), then:

1. runs each greedy case alone (one request at a time): the *solo* reference text;
2. fires a bounded burst of concurrent streaming requests with mixed parameters (greedy and
   sampled, completions and chat, varied prompt and output lengths); a fraction of the clients
   close their connection after a few chunks (the server must abort those requests);
3. waits until vLLM's own metrics (``/metrics``) say no request is running or waiting and the
   KV cache is empty again (``vllm:kv_cache_usage_perc`` 0: the aborted requests' blocks were
   freed), then checks ``/health`` and that a greedy request still gives its solo text.

The default server has a KV cache smaller than the burst needs, so vLLM's scheduler preempts
and resumes requests (``vllm:num_preemptions``). Every request ends in exactly one outcome:

==============  =============================================================================
completed       the stream ended with ``[DONE]`` and every choice has a ``finish_reason``
errored         an explicit error: an HTTP status other than 200, or an error event in the stream
disconnected    the client closed the stream on purpose (fault injection)
lost            anything else: the stream broke off, or no answer before the timeout
==============  =============================================================================

Prints a table (counts, TTFT and total latency percentiles, checks) and writes JSON::

    python benchmarks/load.py --requests 200 --json load.json
    python benchmarks/load.py --url http://127.0.0.1:8000 --model smollm2

The CI test ``tests/test_openai_server.py`` runs the same code (:func:`run_load`) with a
smaller burst against its own server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
import jsonschema
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

# Server limits small enough that start-up compilation is short on XLA:CPU, and a KV cache that
# holds just one request of max_model_len: 16 blocks of 16 tokens, plus the block vLLM keeps
# aside as its null block (SmolLM2 in float32 needs 30 layers x 2 x 3 KV heads x 64 dims x
# 4 bytes = 46,080 bytes per token). Eight running requests of 40-80 tokens need more than
# that, so vLLM's scheduler must preempt and resume them.
KV_CACHE_BLOCKS = 17
DEFAULT_SERVER_ARGS: dict[str, str] = {
    "dtype": "float32",
    "max-model-len": "256",
    "max-num-seqs": "8",
    "max-num-batched-tokens": "128",
    "kv-cache-memory-bytes": str(KV_CACHE_BLOCKS * 16 * 46_080),
    "max-logprobs": "5",
    "seed": "0",
}

# Prompts of different lengths; greedy cases pair a prompt with a fixed max_tokens so the solo
# run and the burst ask for the same thing.
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "List three colours of the rainbow:",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Explain in one sentence why the sky is blue. The sky is blue because",
    "Q: What is the largest planet in the solar system?\nA:",
    "Write a haiku about autumn leaves falling on a quiet river at dusk.\n",
]
GREEDY_CASES = [
    (prompt, 8 + 6 * (i % 4), "completion" if i % 3 else "chat") for i, prompt in enumerate(PROMPTS)
]

# Structured requests: greedy chat constrained to this schema; a completed answer that stopped
# by itself (not cut by max_tokens) must parse and validate.
JSON_PROMPT = "Where is the Eiffel Tower? Answer in JSON with the city and the country."
JSON_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}

OUTCOMES = ("completed", "errored", "disconnected", "lost")
# Output length of the requests whose clients disconnect: far more than they can generate
# before the server notices, so tokens beyond the completed requests' show what aborts saved.
DISCONNECT_MAX_TOKENS = 200


@dataclasses.dataclass
class RequestSpec:
    """One request of the burst.

    Attributes:
        index: position in the burst.
        kind: ``"completion"`` or ``"chat"``.
        prompt: the prompt text (the user message for chat).
        max_tokens: output length limit.
        temperature: 0 for greedy.
        top_p, top_k, seed, n: sampling parameters (sampled requests only).
        greedy_case: index into :data:`GREEDY_CASES` for greedy requests, else None.
        disconnect_after: close the stream after this many chunks (fault), or None.
        ignore_eos: keep generating past end-of-sequence (long requests to disconnect from).
        json_schema: constrain the output to this schema (``response_format``), or None.
        extra: further body fields (penalties, logprobs).
    """

    index: int
    kind: str
    prompt: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    n: int = 1
    greedy_case: int | None = None
    disconnect_after: int | None = None
    ignore_eos: bool = False
    json_schema: dict | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    def body(self, model: str) -> dict:
        """The JSON body for ``/v1/completions`` or ``/v1/chat/completions``."""
        body: dict = {
            "model": model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "n": self.n,
            "stream": True,
            # The last chunk then carries the token counts (see ``tokens_of_completed``).
            "stream_options": {"include_usage": True},
            "ignore_eos": self.ignore_eos,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.json_schema is not None:
            schema = {"name": "answer", "schema": self.json_schema}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        body |= self.extra
        if self.kind == "chat":
            body["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        return body

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.kind == "chat" else "/v1/completions"


@dataclasses.dataclass
class RequestResult:
    """What the client saw for one request; ``outcome`` is one of :data:`OUTCOMES`."""

    index: int
    outcome: str
    texts: list[str]
    finish_reasons: list[str | None]
    ttft_s: float | None = None
    total_s: float | None = None
    completion_tokens: int = 0
    error: str | None = None


def make_burst(
    num_requests: int, disconnect_fraction: float, max_tokens: int = 64, seed: int = 0
) -> list[RequestSpec]:
    """A deterministic request mix.

    A ``disconnect_fraction`` of the requests ask for :data:`DISCONNECT_MAX_TOKENS` tokens
    (``ignore_eos``) and disconnect after 0-4 chunks. Of the rest, ~40% are greedy (one of the
    :data:`GREEDY_CASES`), ~10% greedy chat constrained to :data:`JSON_SCHEMA`, and the others
    sampled with 4 to ``max_tokens`` output tokens and varied temperature / top-p / top-k /
    seed / ``n`` / penalties / logprobs, a quarter of them chat.
    """
    rng = np.random.default_rng(seed)
    specs = []
    num_disconnect = round(num_requests * disconnect_fraction)
    for i in range(num_requests):
        draw = rng.random()
        if i < num_disconnect:
            prompt = PROMPTS[int(rng.integers(len(PROMPTS)))]
            spec = RequestSpec(
                i, "completion", prompt, max_tokens=DISCONNECT_MAX_TOKENS, ignore_eos=True
            )
            # 0: right after the response headers, mostly while the request still waits for a
            # batch slot; 1-4: mid-stream, while it runs (or is preempted).
            spec.disconnect_after = int(rng.integers(0, 5))
        elif draw < 0.4:
            case = int(rng.integers(len(GREEDY_CASES)))
            prompt, case_max_tokens, kind = GREEDY_CASES[case]
            spec = RequestSpec(i, kind, prompt, case_max_tokens, greedy_case=case)
        elif draw < 0.5:
            spec = RequestSpec(i, "chat", JSON_PROMPT, max_tokens=48, json_schema=JSON_SCHEMA)
        else:
            spec = _sampled_spec(i, rng, max_tokens)
        specs.append(spec)
    order = rng.permutation(num_requests)  # disconnecting clients spread through the burst
    return [specs[j] for j in order]


def _sampled_spec(index: int, rng: np.random.Generator, max_tokens: int) -> RequestSpec:
    kind = "chat" if rng.random() < 0.25 else "completion"
    extra: dict = {}
    if rng.random() < 0.3:
        extra["presence_penalty"] = float(rng.choice([0.5, 1.0]))
        extra["frequency_penalty"] = float(rng.choice([0.0, 0.5]))
        extra["repetition_penalty"] = float(rng.choice([1.0, 1.2]))
    if rng.random() < 0.2:
        num = int(rng.integers(1, 6))
        extra |= {"logprobs": True, "top_logprobs": num} if kind == "chat" else {"logprobs": num}
    return RequestSpec(
        index,
        kind,
        PROMPTS[int(rng.integers(len(PROMPTS)))],
        max_tokens=int(rng.integers(4, max_tokens + 1)),
        temperature=float(rng.choice([0.5, 0.8, 1.0])),
        top_p=float(rng.choice([1.0, 0.9])),
        top_k=int(rng.choice([-1, 20])),
        seed=int(rng.integers(1000)) if rng.random() < 0.5 else None,
        n=2 if rng.random() < 0.1 else 1,
        extra=extra,
    )


async def stream_request(
    client: httpx.AsyncClient, base_url: str, model: str, spec: RequestSpec, timeout_s: float
) -> RequestResult:
    """Send one streaming request and classify how it ended (see the module docstring)."""
    result = RequestResult(spec.index, "lost", [""] * spec.n, [None] * spec.n)
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await _consume_stream(client, base_url + spec.path, spec.body(model), spec, result)
    except TimeoutError:
        result.outcome, result.error = "lost", f"no end of stream within {timeout_s:.0f} s"
    except httpx.HTTPError as err:  # connection reset, broken chunked body, ...
        result.outcome, result.error = "lost", f"{type(err).__name__}: {err}"
    if result.ttft_s is not None:
        result.ttft_s -= start
    result.total_s = time.perf_counter() - start
    return result


async def _consume_stream(
    client: httpx.AsyncClient, url: str, body: dict, spec: RequestSpec, result: RequestResult
) -> None:
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            result.outcome, result.error = "errored", f"HTTP {response.status_code}: {text[:300]}"
            return
        chunks = 0
        if spec.disconnect_after == 0:
            result.outcome = "disconnected"
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = all(reason is not None for reason in result.finish_reasons)
                result.outcome = "completed" if done else "lost"
                return
            event = json.loads(data)
            if "error" in event:
                result.outcome, result.error = "errored", json.dumps(event["error"])[:300]
                return
            _record_chunk(event, result)
            chunks += 1
            if spec.disconnect_after is not None and chunks >= spec.disconnect_after:
                # Leaving the ``async with`` closes the half-read response: httpx drops the
                # connection, which is what a client that goes away does.
                result.outcome = "disconnected"
                return
        result.error = "stream ended without [DONE]"


def _record_chunk(event: dict, result: RequestResult) -> None:
    if event.get("usage"):
        result.completion_tokens = event["usage"]["completion_tokens"]
    for choice in event.get("choices", []):
        i = choice["index"]
        text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
        if text and result.ttft_s is None:
            result.ttft_s = time.perf_counter()  # made relative to the start by the caller
        result.texts[i] += text
        if choice.get("finish_reason") is not None:
            result.finish_reasons[i] = choice["finish_reason"]


async def run_specs(
    base_url: str, model: str, specs: list[RequestSpec], concurrency: int, timeout_s: float
) -> list[RequestResult]:
    """Run ``specs`` with at most ``concurrency`` in flight; results in the order of ``specs``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s)) as client:

        async def one(spec: RequestSpec) -> RequestResult:
            async with gate:
                return await stream_request(client, base_url, model, spec, timeout_s)

        return await asyncio.gather(*(one(spec) for spec in specs))


# ---- server and metrics ------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(
    model: str,
    server_args: dict[str, str],
    served_model_name: str,
    log_path: pathlib.Path,
    startup_timeout_s: float = 900.0,
) -> Iterator[str]:
    """Run ``vllm serve`` on loopback until the block exits; yields its base URL.

    The server runs in its own process group (vLLM's engine core is a child process), so the
    whole group is terminated on exit, whatever happened in the block. Output goes to
    ``log_path``; its tail is in the error if the server dies or is not healthy in time.
    """
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += ["--served-model-name", served_model_name]
    for key, value in server_args.items():
        command += [f"--{key}", value]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, base_url, log_path, startup_timeout_s)
        yield base_url
    finally:
        _terminate(process)


def _wait_healthy(
    process: subprocess.Popen, base_url: str, log_path: pathlib.Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vllm serve exited ({process.returncode}):\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base_url + "/health", timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise TimeoutError(f"vllm serve not healthy after {timeout_s:.0f} s:\n{_tail(log_path)}")


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(path: pathlib.Path, num_chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-num_chars:]


def read_metrics(base_url: str) -> dict[str, float]:
    """vLLM's Prometheus metrics as ``{sample name{labels}: value}``, plus the plain sample name
    summed over label sets (e.g. ``vllm:num_requests_running``)."""
    text = httpx.get(base_url + "/metrics", timeout=30).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def wait_until_idle(base_url: str, timeout_s: float = 60.0) -> dict[str, float]:
    """Poll ``/metrics`` until no request runs or waits and the KV cache is empty.

    Raises:
        TimeoutError: with the last readings, if that does not happen within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = read_metrics(base_url)
        state = {k: metrics.get(k, -1.0) for k in IDLE_GAUGES}
        if all(value == 0.0 for value in state.values()):
            return metrics
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not idle after {timeout_s:.0f} s: {state}")
        time.sleep(0.5)


IDLE_GAUGES = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
)


# ---- the whole run -----------------------------------------------------------------------


def run_load(
    base_url: str,
    model: str,
    num_requests: int = 200,
    concurrency: int | None = None,
    disconnect_fraction: float = 0.1,
    max_tokens: int = 64,
    timeout_s: float = 900.0,
    seed: int = 0,
) -> dict:
    """Solo greedy references, the burst, then the recovery checks; returns the report.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000``.
        model: the served model name.
        num_requests: size of the burst.
        concurrency: requests in flight at once (default: the whole burst).
        disconnect_fraction: share of clients that close their stream after 0-4 chunks.
        max_tokens: upper end of the sampled requests' output lengths.
        timeout_s: a request with no end of stream by then counts as lost.
        seed: seed of the request mix.

    Returns:
        A JSON-able dict: outcome counts, latency percentiles, greedy mismatches against the
        solo runs, metric deltas (preemptions, generated tokens) and the after-burst checks.
    """
    specs = make_burst(num_requests, disconnect_fraction, max_tokens, seed)
    concurrency = concurrency or num_requests
    solo_specs = [
        RequestSpec(-1 - case, kind, prompt, max_tokens, greedy_case=case)
        for case, (prompt, max_tokens, kind) in enumerate(GREEDY_CASES)
    ]
    solo = asyncio.run(run_specs(base_url, model, solo_specs, 1, timeout_s))
    if any(r.outcome != "completed" for r in solo):
        raise RuntimeError(f"a solo greedy request failed: {[r.error for r in solo]}")
    solo_texts = [r.texts[0] for r in solo]

    before = wait_until_idle(base_url)
    start = time.perf_counter()
    results = asyncio.run(run_specs(base_url, model, specs, concurrency, timeout_s))
    burst_s = time.perf_counter() - start
    after = wait_until_idle(base_url)

    health = httpx.get(base_url + "/health", timeout=30).status_code
    probe = asyncio.run(run_specs(base_url, model, solo_specs[:1], 1, timeout_s))[0]
    return _report(specs, results, solo_texts, before, after, burst_s, concurrency) | {
        "health_after": health,
        "greedy_after_equals_solo": probe.outcome == "completed"
        and probe.texts[0] == solo_texts[0],
    }


def _report(specs, results, solo_texts, before, after, burst_s, concurrency) -> dict:
    pairs = list(zip(specs, results, strict=True))
    counts = {outcome: sum(r.outcome == outcome for r in results) for outcome in OUTCOMES}
    greedy = [(s, r) for s, r in pairs if s.greedy_case is not None and r.outcome == "completed"]
    structured = [
        r.texts[0]
        for s, r in pairs
        if s.json_schema is not None and r.outcome == "completed" and r.finish_reasons[0] == "stop"
    ]
    done = [r for r in results if r.outcome == "completed"]

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    return {
        "requests": len(specs),
        "concurrency": concurrency,
        "counts": counts,
        "greedy_checked": len(greedy),
        "greedy_mismatches": [
            {"index": s.index, "solo": solo_texts[s.greedy_case], "burst": r.texts[0]}
            for s, r in greedy
            if r.texts[0] != solo_texts[s.greedy_case]
        ],
        "structured_checked": len(structured),
        "structured_invalid": [text for text in structured if not _valid_json(text)],
        "errors": sorted({r.error for r in results if r.outcome in ("errored", "lost")}),
        "burst_s": burst_s,
        "ttft_s": _percentiles([r.ttft_s for r in done if r.ttft_s is not None]),
        "total_s": _percentiles([r.total_s for r in done]),
        "preemptions": delta("vllm:num_preemptions_total"),
        "idle_after": {name: after.get(name) for name in IDLE_GAUGES},
        "generation_tokens": delta("vllm:generation_tokens_total"),
        "completed_tokens": sum(r.completion_tokens for r in done),
        # A disconnected request generates at most this many tokens if it is never aborted.
        "disconnected_tokens_bound": counts["disconnected"] * DISCONNECT_MAX_TOKENS,
    }


def _valid_json(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), JSON_SCHEMA)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99]).tolist()
    return {"p50": p50, "p90": p90, "p99": p99, "max": max(values)}


def print_report(report: dict) -> None:
    """The report as a short table."""
    c = report["counts"]
    sent = report["requests"]
    rows = [
        ("sent / concurrency", f"{sent} / {report['concurrency']}"),
        ("completed", c["completed"]),
        ("errored", c["errored"]),
        ("disconnected (injected)", c["disconnected"]),
        ("lost", c["lost"]),
        ("preemptions", f"{report['preemptions']:.0f}"),
        (
            "greedy equal to solo",
            f"{report['greedy_checked'] - len(report['greedy_mismatches'])}"
            f" / {report['greedy_checked']}",
        ),
        (
            "structured (JSON schema) valid",
            f"{report['structured_checked'] - len(report['structured_invalid'])}"
            f" / {report['structured_checked']}",
        ),
        ("burst wall time", f"{report['burst_s']:.1f} s"),
        ("generated tokens (server)", f"{report['generation_tokens']:.0f}"),
        ("  of which completed requests'", report["completed_tokens"]),
        (
            "  of which disconnected requests' (bound if never aborted)",
            f"{report['generation_tokens'] - report['completed_tokens']:.0f}"
            f" ({report['disconnected_tokens_bound']})",
        ),
    ]
    for key in ("ttft_s", "total_s"):
        p = report[key]
        if p["p50"] is not None:
            rows.append((f"{key[:-2]} p50/p90/p99/max", "/".join(f"{p[q]:.2f}" for q in p) + " s"))
    rows += [
        ("metrics after (running, waiting, kv usage)", tuple(report["idle_after"].values())),
        ("/health after", report["health_after"]),
        ("greedy after equals solo", report["greedy_after_equals_solo"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for error in report["errors"][:10]:
        print("error:", error)


# ---- command line --------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="target a running server instead of starting one")
    p.add_argument(
        "--model",
        help="checkpoint dir to serve (default: SmolLM2), or with --url the served model name",
    )
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, help="in flight at once (default: all)")
    p.add_argument("--disconnect-fraction", type=float, default=0.1)
    p.add_argument("--max-tokens", type=int, default=64, help="longest sampled output")
    p.add_argument("--timeout", type=float, default=900.0, help="per request, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override/add a `vllm serve --KEY VALUE` option (default: DEFAULT_SERVER_ARGS)",
    )
    p.add_argument("--json", help="write the report here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    server_args = DEFAULT_SERVER_ARGS | dict(kv.split("=", 1) for kv in args.server_arg)
    with contextlib.ExitStack() as stack:
        if args.url:
            base_url, model = args.url.rstrip("/"), args.model or "default"
        else:
            checkpoint = args.model
            if checkpoint is None:
                from vllm_xla_gpu.checkpoints.smollm2 import ensure_smollm2

                checkpoint = str(ensure_smollm2())
            model = "smollm2"
            log = pathlib.Path(tempfile.mkdtemp()) / "server.log"
            print(f"starting vllm serve {checkpoint} (log: {log})", flush=True)
            start = time.perf_counter()
            base_url = stack.enter_context(serve(checkpoint, server_args, model, log))
            print(f"server healthy after {time.perf_counter() - start:.0f} s", flush=True)
        report = run_load(
            base_url,
            model,
            args.requests,
            args.concurrency,
            args.disconnect_fraction,
            args.max_tokens,
            args.timeout,
            args.seed,
        )
    report["server_args"] = None if args.url else server_args
    report["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    print_report(report)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
