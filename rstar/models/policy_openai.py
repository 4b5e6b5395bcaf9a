"""`openai` policy backend: any OpenAI-compatible *completions* server (vLLM, SGLang, a hosted bootstrap model).

    policy = OpenAIPolicy("http://gpu-node:8000/v1", "Qwen2.5-Math-7B")     # or load_policy("openai:URL#MODEL")
    outs = policy.generate(prompts, SamplingSpec(n=8, stop=STOP_STRINGS), seeds=[...])

How it behaves:

- One HTTP request per prompt (`POST {base_url}/completions` with `n`, `max_tokens`, `temperature`, `top_p`, `stop`,
  `seed`), sent concurrently (at most `max_concurrency` in flight) from an asyncio loop on a private background
  thread. `generate` is synchronous and safe to call from any thread, including one that runs its own event loop.
  One request per prompt, because the `seed` field is per request: each prompt gets its own seed, so a tree's samples
  do not depend on which other trees share the batch (as in the `hf` backend).
- Transient failures (connect errors, timeouts, dropped connections, HTTP 429 and 5xx) are retried with exponential
  backoff and jitter (`Retry-After` honoured), up to `max_retries` times; other HTTP errors fail at once with the
  server's message. Any request that still fails raises `OpenAIServerError` for the whole batch.
- At construction `GET {base_url}/models` is checked once: an unreachable server raises an error naming the URL, a
  wrong model name one naming the models the server has; `model=None` picks the server's only model.
- Which stop string ended a completion: vLLM reports it in `choices[i].stop_reason` (a string; an int or null means a
  stop token / EOS), SGLang in `matched_stop`. For servers that report neither (e.g. OpenAI's hosted API) we fall
  back, in order, to (1) a stop string the server left at the end of the text, which is then cut off; (2) when the
  request had exactly one stop string and `finish_reason` is "stop", that string (EOS is then indistinguishable from
  the stop string: documented ambiguity); (3) otherwise None. The step format needs to tell `<end_of_step>` from
  `<end_of_code>`, so serve the policy with vLLM or SGLang.
- Token counts: per-choice counts are not part of the completions API; the request's `usage.completion_tokens` is
  split over its choices in proportion to their text length (exact for n=1, and the sum is always exact). Without
  `usage` the count is estimated as characters / 4.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from rstar.types import Completion, SamplingSpec

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAIServerError(RuntimeError):
    """The server is unreachable, rejected a request, or does not serve the requested model."""


def normalize_base_url(url: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1/` all mean `http://host:8000/v1`."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OpenAIServerError(f"not an http(s) URL: {url!r} (expected e.g. http://host:8000/v1)")
    if parts.path in ("", "/"):
        url += "/v1"
    return url


class _LoopThread:
    """A daemon thread running one asyncio loop; `run(coro)` blocks the caller until the coroutine finishes there."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("OpenAIPolicy.generate called from inside its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class OpenAIPolicy:
    """A `PolicyLM` backed by an OpenAI-compatible completions server. See the module docstring."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        max_concurrency: int = 64,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        check_model: bool = True,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = normalize_base_url(base_url)
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_concurrency = max_concurrency
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.extra_body = dict(extra_body or {})
        self.requests_sent = 0  # HTTP attempts, retries included
        self.retries = 0
        self._rng = random.Random()  # backoff jitter only; never touches sampling
        self._runner: _LoopThread | None = None
        self._client: httpx.AsyncClient | None = None
        self._lock = threading.Lock()
        self._model = model
        self.available_models: list[str] | None = None
        if check_model:
            try:
                self._model = self._run(self._resolve_model(model))
            except BaseException:
                self.close()  # do not leave the loop thread and its connections behind
                raise

    # -- public API ----------------------------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._run(self._resolve_model(None))
        return self._model

    @property
    def model_id(self) -> str:
        return f"openai:{self.base_url}#{self.model}"

    def generate(
        self, prompts: Sequence[str], spec: SamplingSpec, *, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        """`spec.n` completions per prompt, in prompt order (one concurrent request per prompt)."""
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        if not prompts:
            return []
        model = self.model
        per_prompt: list[int | None] = (
            [int(s) for s in seeds]
            if seeds is not None
            else [None if spec.seed is None else spec.seed + i for i in range(len(prompts))]
        )
        return self._run(self._generate(list(prompts), spec, per_prompt, model))

    def list_models(self) -> list[str]:
        """The model ids the server lists under /models."""
        return self._run(self._list_models())

    def close(self) -> None:
        """Close the HTTP connections and stop the background loop (the policy cannot be used afterwards)."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._client is not None:
            client, self._client = self._client, None
            try:
                runner.run(client.aclose())
            except Exception:
                pass
        runner.close()

    def __enter__(self) -> OpenAIPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAIPolicy({self.base_url!r}, {self._model!r})"

    # -- plumbing ------------------------------------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._runner is None:
                self._runner = _LoopThread(name=f"openai-policy-{self.base_url}")
            runner = self._runner
        return runner.run(coro)

    def _http(self) -> httpx.AsyncClient:
        # Created lazily inside the background loop, which owns it for its whole life.
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                headers=headers,
                limits=httpx.Limits(
                    max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
                ),
            )
        return self._client

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        return base * (0.5 + 0.5 * self._rng.random())

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One API call with retries on transient errors; returns the final non-transient response."""
        url = f"{self.base_url}{path}"
        client = self._http()
        last: str = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
            self.requests_sent += 1
            retry_after: str | None = None
            try:
                resp = await client.request(method, url, json=body)
            except httpx.ConnectError as exc:
                last = f"cannot connect ({exc or type(exc).__name__})"
            except httpx.TimeoutException as exc:
                last = f"timed out ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                if resp.status_code not in TRANSIENT_STATUS:
                    return resp
                last = f"HTTP {resp.status_code}: {_error_message(resp)}"
                retry_after = resp.headers.get("retry-after")
            if attempt < self.max_retries:
                await asyncio.sleep(self._backoff(attempt, retry_after))
        tries = self.max_retries + 1
        if last.startswith("cannot connect"):
            raise OpenAIServerError(
                f"no OpenAI-compatible server answers at {self.base_url} ({last}, {tries} attempts): "
                "is it running, and is the URL right (e.g. http://host:8000/v1)?"
            )
        raise OpenAIServerError(f"{method} {url} failed after {tries} attempts: {last}")

    async def _list_models(self) -> list[str]:
        resp = await self._request("GET", "/models")
        if resp.status_code != 200:
            raise OpenAIServerError(
                f"GET {self.base_url}/models returned HTTP {resp.status_code}: {_error_message(resp)}"
            )
        try:
            data = resp.json()["data"]
            return [str(m["id"]) for m in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise OpenAIServerError(f"{self.base_url}/models did not return an OpenAI model list") from exc

    async def _resolve_model(self, model: str | None) -> str:
        try:
            models = await self._list_models()
        except OpenAIServerError as exc:
            # A server without /models (some proxies) is usable when the model is named explicitly.
            if model is not None and "returned HTTP 404" in str(exc):
                return model
            raise
        self.available_models = models
        if model is None:
            if len(models) == 1:
                return models[0]
            raise OpenAIServerError(
                f"{self.base_url} serves {len(models)} models ({', '.join(models) or 'none'}); "
                "name one: openai:URL#MODEL"
            )
        if model not in models:
            raise OpenAIServerError(
                f"model {model!r} is not served by {self.base_url}; available: {', '.join(models) or 'none'}"
            )
        return model

    async def _generate(
        self, prompts: list[str], spec: SamplingSpec, seeds: list[int | None], model: str
    ) -> list[list[Completion]]:
        sem = asyncio.Semaphore(self.max_concurrency)

        async def one(prompt: str, seed: int | None) -> list[Completion]:
            body: dict[str, Any] = {
                "model": model,
                "prompt": prompt,
                "n": spec.n,
                "max_tokens": spec.max_tokens,
                "temperature": spec.temperature,
                "top_p": spec.top_p,
                **self.extra_body,
            }
            if spec.stop:
                body["stop"] = list(spec.stop)
            if seed is not None:
                body["seed"] = seed
            async with sem:
                resp = await self._request("POST", "/completions", body)
            if resp.status_code != 200:
                msg = _error_message(resp)
                if resp.status_code == 404 and "model" in msg.lower():
                    raise OpenAIServerError(f"{self.base_url} does not serve model {model!r}: {msg}")
                raise OpenAIServerError(f"POST {self.base_url}/completions returned HTTP {resp.status_code}: {msg}")
            return parse_completions(resp.json(), spec)

        return list(await asyncio.gather(*(one(p, s) for p, s in zip(prompts, seeds, strict=True))))


def _error_message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            return str(err.get("message", err))[:300]
        if err is not None:
            return str(err)[:300]
    return str(data)[:300]


def resolve_stop(text: str, finish_reason: str, choice: dict[str, Any], stop: Sequence[str]) -> tuple[str, str | None]:
    """(text without the stop string, the stop string that ended it or None). See the module docstring."""
    reported: Any = None
    if "stop_reason" in choice:  # vLLM: str (stop string), int (stop token id) or null (EOS / length)
        reported = choice["stop_reason"]
        said = True
    elif "matched_stop" in choice:  # SGLang
        reported = choice["matched_stop"]
        said = True
    else:
        said = False
    if isinstance(reported, str) and reported in stop:
        if text.endswith(reported):  # a server that includes the stop string in the text
            text = text[: -len(reported)]
        return text, reported
    if said and reported is not None:  # a stop token id, not one of our strings
        return text, None
    for s in stop:  # the server left the stop string in the text
        if text.endswith(s):
            return text[: -len(s)], s
    if not said and finish_reason == "stop" and len(stop) == 1:
        return text, stop[0]
    return text, None


def _split_tokens(total: int, texts: Sequence[str]) -> list[int]:
    """Split `total` tokens over choices in proportion to their text length; the parts sum to `total` exactly."""
    if len(texts) == 1:
        return [total]
    weights = [max(1, len(t)) for t in texts]
    wsum = sum(weights)
    raw = [total * w / wsum for w in weights]
    parts = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - parts[i], reverse=True)
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def parse_completions(data: dict[str, Any], spec: SamplingSpec) -> list[Completion]:
    """Turn one /completions response into `spec.n` `Completion`s (ordered by choice index)."""
    try:
        choices = sorted(data["choices"], key=lambda c: int(c.get("index", 0)))
    except (KeyError, TypeError) as exc:
        raise OpenAIServerError(f"malformed completions response (no choices): {str(data)[:300]}") from exc
    if len(choices) != spec.n:
        raise OpenAIServerError(f"asked for n={spec.n} completions, the server returned {len(choices)}")
    texts: list[str] = []
    meta: list[tuple[str, str | None]] = []
    for ch in choices:
        finish = "length" if ch.get("finish_reason") == "length" else "stop"
        text, stop_reason = resolve_stop(str(ch.get("text") or ""), finish, ch, spec.stop)
        texts.append(text)
        meta.append((finish, stop_reason))
    usage = data.get("usage") or {}
    total = usage.get("completion_tokens")
    counts = (
        _split_tokens(int(total), texts) if isinstance(total, int) else [max(1, len(t) // 4) if t else 0 for t in texts]
    )
    return [
        Completion(text=t, finish_reason="length" if f == "length" else "stop", stop_reason=s, num_tokens=k)
        for t, (f, s), k in zip(texts, meta, counts, strict=True)
    ]
