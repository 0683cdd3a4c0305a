"""A client for a running ``lloco serve``: the same answers over HTTP, for apps that do not load a model.

    from lloco_runtime import LLoCOClient
    client = LLoCOClient("http://127.0.0.1:8000")
    client.ask("Who kept the light?", group="lighthouse")["answer"]
    for delta in client.stream_ask("Who kept the light?", group="lighthouse"):
        print(delta, end="")

Answers are the ``lloco ask --json`` dicts (``answer``, ``sources``, ``adapter_id``, ``context_tokens``,
``raw_context_tokens``, ...); the server's JSON errors become lloco's exceptions (404 ->
:class:`NotFoundError`, 422 -> :class:`InputError`, 503 and other failures -> :class:`RemoteError` with the
status), and a server that cannot be reached is a :class:`RemoteError` naming the URL and ``lloco serve``.
The LlamaIndex and LangChain classes take ``endpoint=`` and use this client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Literal

from .errors import ConfigError, InputError, LLoCOError, NotFoundError

#: ``adapter`` of a request: ``"active"`` (the group's active adapter), ``"none"`` (None too), or an adapter
#: id; the server routes it (:func:`lloco_runtime.route_adapter`)
AdapterChoice = int | Literal["active", "none"]


class RemoteError(LLoCOError):
    """A ``lloco serve`` request failed on the server or could not reach it; ``status`` is the HTTP status
    (None when no server answered)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _httpx():
    try:
        import httpx
    except ImportError:
        raise ConfigError(
            "a remote lloco client needs httpx, which is in lloco's [serve] extra: pip install 'lloco[serve]'"
        ) from None
    return httpx


def _error(status: int, body: Any, url: str) -> LLoCOError:
    err = body.get("error") if isinstance(body, Mapping) else None
    message = err.get("message") if isinstance(err, Mapping) else None
    message = message or f"HTTP {status} from {url}"
    if status == 404:
        return NotFoundError(message)
    if status in (400, 422):
        return InputError(message)
    return RemoteError(f"{message} (HTTP {status})", status)


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, up to ``data: [DONE]``; error events raise."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        obj = json.loads(data)
        if isinstance(obj, Mapping) and "error" in obj:
            err = obj["error"] if isinstance(obj["error"], Mapping) else {}
            raise _error(int(err.get("code") or 500), obj, "the stream")
        yield obj


def _given(**options: Any) -> dict[str, Any]:
    """The options that are not None."""
    return {k: v for k, v in options.items() if v is not None}


class LLoCOClient:
    """HTTP client for ``lloco serve`` (``/v1/ask``, ``/v1/chat/completions``, ``/healthz``); sync and async.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        timeout: seconds for connecting and for each read (a stream's gap between tokens included).
        headers: extra headers sent with every request (e.g. an auth header of a proxy in front).
    """

    def __init__(self, url: str, *, timeout: float = 300.0, headers: Mapping[str, str] | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
        if not timeout or timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"LLoCOClient({self.url!r})"

    # -- request bodies -------------------------------------------------------------------------------------

    # Retrieval options left as None are left out of the body: the server applies the one set of defaults
    # (lloco_runtime.store.RetrievalOptions), so this light module (no torch, no database) repeats none.

    @staticmethod
    def ask_body(
        question: str,
        *,
        group: str,
        collection: str | None = None,
        top_k: int | None = None,
        mode: str | None = None,
        adapter: AdapterChoice | None = "active",
        max_new_tokens: int = 64,
        stream: bool = False,
        with_text: bool = False,
    ) -> dict[str, Any]:
        """A ``/v1/ask`` body (``collection``, ``top_k``, ``mode``: the server's defaults when None)."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty")
        if not group:
            raise InputError(
                "a remote question needs group= (the server retrieves that group's cheat sheets)"
            )
        body = {
            "question": question,
            "group": group,
            "adapter": "none" if adapter is None else adapter,
            "max_new_tokens": max_new_tokens,
            "stream": stream,
            "with_text": with_text,
        }
        return body | _given(collection=collection, top_k=top_k, mode=mode)

    @staticmethod
    def chat_body(
        messages: Sequence[Mapping[str, str]],
        *,
        group: str | None = None,
        collection: str | None = None,
        top_k: int | None = None,
        max_tokens: int = 64,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        stream: bool = False,
    ) -> dict[str, Any]:
        """A ``/v1/chat/completions`` body (``group``: retrieve from it; ``collection``, ``top_k``: the server's
        defaults when None)."""
        body: dict[str, Any] = {
            "model": "lloco",
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": stream,
        }
        return body | _given(group=group, collection=collection, top_k=top_k, stop=list(stop or ()) or None)

    # -- plumbing -------------------------------------------------------------------------------------------

    def _unreachable(self, exc: Exception) -> RemoteError:
        return RemoteError(
            f"no lloco server answered at {self.url} ({type(exc).__name__}: {exc}); start one "
            "with `lloco serve` or check the endpoint URL"
        )

    def _json(self, resp) -> Any:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400:
            raise _error(resp.status_code, body, self.url)
        if body is None:
            raise RemoteError(
                f"{self.url} answered HTTP {resp.status_code} without JSON; is it a lloco server?",
                resp.status_code,
            )
        return body

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        httpx = _httpx()
        try:
            with httpx.Client(timeout=self.timeout, headers=self.headers) as c:
                return self._json(c.post(self.url + path, json=body))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        httpx = _httpx()
        try:
            with (
                httpx.Client(timeout=self.timeout, headers=self.headers) as c,
                c.stream("POST", self.url + path, json=body) as resp,
            ):
                if resp.status_code >= 400:
                    resp.read()
                    self._json(resp)
                yield from _events(resp.iter_lines())
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    async def _apost(self, path: str, body: dict[str, Any]) -> Any:
        httpx = _httpx()
        try:
            async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as c:
                return self._json(await c.post(self.url + path, json=body))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    # -- API ------------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: status, model, encoder fingerprint, replicas."""
        httpx = _httpx()
        try:
            with httpx.Client(timeout=self.timeout, headers=self.headers) as c:
                return self._json(c.get(self.url + "/healthz"))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def ask(self, question: str, **options: Any) -> dict[str, Any]:
        """The server's answer dict for ``question`` over ``group`` (options of :meth:`ask_body`)."""
        return self._post("/v1/ask", self.ask_body(question, **options))

    async def aask(self, question: str, **options: Any) -> dict[str, Any]:
        return await self._apost("/v1/ask", self.ask_body(question, **options))

    def stream_ask(
        self, question: str, *, state: dict[str, Any] | None = None, **options: Any
    ) -> Iterator[str]:
        """Text deltas as the server decodes them; ``state["answer"]`` receives the final answer dict."""
        for obj in self._stream("/v1/ask", self.ask_body(question, stream=True, **options)):
            if "delta" in obj:
                yield obj["delta"]
            elif state is not None:
                state["answer"] = obj

    async def astream_ask(
        self, question: str, *, state: dict[str, Any] | None = None, **options: Any
    ) -> AsyncIterator[str]:
        body = self.ask_body(question, stream=True, **options)
        async for obj in self._astream_live("/v1/ask", body):
            if "delta" in obj:
                yield obj["delta"]
            elif state is not None:
                state["answer"] = obj

    def chat(self, messages: Sequence[Mapping[str, str]], **options: Any) -> dict[str, Any]:
        """An OpenAI-format ``chat.completion`` for ``messages`` (``{"role", "content"}`` dicts)."""
        return self._post("/v1/chat/completions", self.chat_body(messages, **options))

    async def achat(self, messages: Sequence[Mapping[str, str]], **options: Any) -> dict[str, Any]:
        return await self._apost("/v1/chat/completions", self.chat_body(messages, **options))

    def stream_chat(self, messages: Sequence[Mapping[str, str]], **options: Any) -> Iterator[str]:
        """Content deltas of a streamed chat completion."""
        for obj in self._stream("/v1/chat/completions", self.chat_body(messages, stream=True, **options)):
            for choice in obj.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text

    async def astream_chat(self, messages: Sequence[Mapping[str, str]], **options: Any) -> AsyncIterator[str]:
        body = self.chat_body(messages, stream=True, **options)
        async for obj in self._astream_live("/v1/chat/completions", body):
            for choice in obj.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield text

    async def _astream_live(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Server-sent events as they arrive (not buffered)."""
        httpx = _httpx()
        try:
            async with (
                httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as c,
                c.stream("POST", self.url + path, json=body) as resp,
            ):
                if resp.status_code >= 400:
                    await resp.aread()
                    self._json(resp)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    for obj in _events(iter([line])):
                        yield obj
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
