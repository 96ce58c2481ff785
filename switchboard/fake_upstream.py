"""A fake OpenRouter-compatible upstream, for tests and benchmarks of the gateway.

``POST /api/v1/chat/completions`` (also ``/v1/...``) needs ``Authorization: Bearer <anything>``
(else 401) and, when the server has prices, a priced model (else 400). It answers ``"echo: " +
<last user text>``, cut to ``max_tokens`` words (finish_reason ``length``); with ``tools`` and
"call a tool" in that text it calls the first tool with ``{}``. Tokens are whitespace-separated
words (prompt: of all message texts); ``usage.cost`` is ``prompt_tokens * prompt_price +
completion_tokens * completion_price``, absent for unpriced models. Streams are SSE: ``:
OPENROUTER PROCESSING``, a chunk per word, a finish chunk, a usage chunk (``choices: []``) only
with ``stream_options.include_usage``, then ``data: [DONE]``. Errors have OpenRouter's shape
``{"error": {"code", "message", "metadata"?}}``. ``GET /api/v1/models`` lists the priced
models. A request for a JSON ``response_format`` is answered with one JSON object,
``{"echo": <last user text>}``; with ``n`` it answers ``n`` choices, all billed.

Control API: ``POST /_control/faults`` ``{"model": id or "*", "fault": kind, "times": 1 (-1 =
forever), "latency_ms"?, "retry_after"?}`` (``GET`` lists, ``DELETE`` clears the rules);
``GET /_control/requests`` logs every chat request (path, model, stream, body, headers with the
Authorization value redacted, fault, and ``billed_usd``: what a provider would bill for the
answer, or for the part streamed before a cut), ``DELETE`` clears it. Fault kinds: ``429 500
502 503`` (``Retry-After`` when ``retry_after`` is given); ``timeout`` and ``slow_first_byte`` (wait
``latency_ms``, default 30 s and 1 s, then answer); ``reset`` (TCP RST instead of any response);
``malformed`` (200 whose body, or SSE data, is not JSON); for streams only, ``cut_stream`` (two
content chunks, then the connection closes mid-body) and ``error_in_stream`` (one chunk, then an
``error`` event, then the end); ``echo_key`` (an upstream that quotes the credentials it was
sent: a 502 whose message carries the request's ``Authorization`` value, or, streamed, one chunk
and then an ``error`` event carrying it, written in two pieces split inside the key). ``none``
only adds ``latency_ms``. Per request, every matching ``none`` rule adds its latency and the
first other matching rule (registration order) fires;
each counts its ``times`` down. Non-streamed requests skip (do not use up) stream-only rules.
Waits end early when the client disconnects.

With ``capabilities`` (``catalog_capabilities(models)``), the listing states what each model
supports (``supported_parameters``, ``architecture.input_modalities``, ``context_length``) and a
request using what its model does not support gets OpenRouter's 404 "No endpoints found that
support ...".

Judge mode (``judge_grades``, ``switchboard fake-upstream --judge``), for trying calibration
offline: every answer names the model that wrote it (``echo[<model>]: ...``), and a grading
prompt (its last user message ends with ``Grade:`` after an ``Answer:`` block, as
training/judge.py writes them) is answered with the grade of the model its answer names: the
configured one, else a stable one from the model id; a model configured with ``None`` gets a
reply that holds no grade (``I cannot grade this answer.``), as a judge that does not follow the
rubric would write.

ASGI gives no access to the socket, so ``reset`` and ``cut_stream`` rely on ``ResettableProtocol``:
uvicorn's own HTTP protocol, which also records each connection's transport under its (server,
client) address pair, the same pair as the ASGI scope's. A reset sets ``SO_LINGER`` to 0 and
aborts the transport: the kernel sends RST. Serve the app with ``FakeUpstreamServer`` (tests,
benchmarks) or ``serve`` / ``switchboard fake-upstream --port 9000``, not with plain uvicorn.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from typing import Any, cast

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

Prices = dict[str, tuple[float, float]]
JudgeGrades = dict[str, int | None]  # judge mode: model -> its grade (None: a reply without one)
Capabilities = dict[str, dict[str, Any]]  # model -> supported_parameters, input_modalities
PROVIDER = "FakeProvider"
FAULT_KINDS = (
    *("none", "429", "500", "502", "503", "timeout", "slow_first_byte", "reset", "malformed"),
    *("cut_stream", "error_in_stream", "echo_key"),
)
STREAM_ONLY = ("cut_stream", "error_in_stream")
DEFAULT_LATENCY_MS = {"timeout": 30_000, "slow_first_byte": 1_000}
MESSAGES = {
    429: "Rate limit exceeded (fake upstream)",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "No available model provider that meets your routing requirements",
}
PROCESSING, DONE = b": OPENROUTER PROCESSING\n\n", b"data: [DONE]\n\n"

# --- connection control: uvicorn's protocol, plus a registry of live transports ----------------

_TRANSPORTS: dict[tuple[str, int, str, int], asyncio.Transport] = {}


def _conn_key(server: Any, client: Any) -> tuple[str, int, str, int] | None:
    if not server or not client:
        return None
    return (str(server[0]), int(server[1]), str(client[0]), int(client[1]))


def _connection_made(self: Any, transport: asyncio.Transport) -> None:
    AutoHTTPProtocol.connection_made(self, transport)
    self.fake_key = _conn_key(
        transport.get_extra_info("sockname"), transport.get_extra_info("peername")
    )
    if self.fake_key:
        _TRANSPORTS[self.fake_key] = transport


def _connection_lost(self: Any, exc: Exception | None) -> None:
    _TRANSPORTS.pop(getattr(self, "fake_key", None) or ("", 0, "", 0), None)
    AutoHTTPProtocol.connection_lost(self, exc)


ResettableProtocol = cast(
    "type[asyncio.Protocol]",
    type(
        "ResettableProtocol",
        (AutoHTTPProtocol,),
        {"connection_made": _connection_made, "connection_lost": _connection_lost},
    ),
)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _pause(receive: Receive, seconds: float) -> bool:
    """Sleep ``seconds``; return True as soon as the client disconnects instead."""
    if seconds <= 0:
        return False
    try:
        await asyncio.wait_for(_wait_disconnect(receive), seconds)
    except TimeoutError:
        return False
    return True


async def _drop_connection(scope: Scope, receive: Receive, *, reset: bool) -> None:
    """Close this request's connection: RST when ``reset``, else FIN after pending writes."""
    key = _conn_key(scope.get("server"), scope.get("client"))
    transport = _TRANSPORTS.get(key) if key else None
    if transport is None:
        raise ConnectionAbortedError("connection faults need FakeUpstreamServer or serve()")
    if reset and (sock := transport.get_extra_info("socket")) is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if reset:
        transport.abort()
    else:
        transport.close()
    await _wait_disconnect(receive)


async def _no_response(scope: Scope, receive: Receive, send: Send) -> None:
    """What a client that is gone gets: nothing."""


class _EventStream:
    """An SSE response written by hand, so that it can also stop without finishing."""

    def __init__(self, events: list[bytes], gen_id: str, cut: bool = False) -> None:
        self.events, self.gen_id, self.cut = events, gen_id, cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        headers.append((b"x-generation-id", self.gen_id.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if self.cut:
            await _drop_connection(scope, receive, reset=False)
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


# --- state --------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One fault rule registered through the control API."""

    id: int
    model: str
    fault: str
    times: int
    latency_ms: int | None = None
    retry_after: float | None = None

    @property
    def delay_s(self) -> float:
        """Seconds to wait before answering (or misbehaving)."""
        ms = self.latency_ms if self.latency_ms is not None else DEFAULT_LATENCY_MS.get(self.fault)
        return (ms or 0) / 1000


class UpstreamState:
    """Prices, fault rules and request log of one fake upstream; safe to use from any thread."""

    def __init__(
        self,
        prices: Prices | None = None,
        judge_grades: JudgeGrades | None = None,
        capabilities: Capabilities | None = None,
    ):
        self.prices = dict(prices) if prices is not None else None
        self.judge_grades = judge_grades  # None: not in judge mode
        self.capabilities = capabilities or {}  # model -> what its listing states
        self.lock = threading.Lock()
        self.rules: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        self._rule_ids, self._gen_ids = itertools.count(1), itertools.count(1)

    def add_fault(
        self,
        model: str = "*",
        fault: str | int = "none",
        times: int = 1,
        latency_ms: int | None = None,
        retry_after: float | None = None,
    ) -> Fault:
        """Register a fault rule (ValueError or TypeError if it is not valid) and return it."""
        if str(fault) not in FAULT_KINDS:
            raise ValueError(f"unknown fault {fault!r}; kinds: {', '.join(FAULT_KINDS)}")
        if not isinstance(model, str) or not model:
            raise TypeError("model must be a model id or '*'")
        if int(times) == 0 or int(times) < -1:
            raise ValueError("times must be a positive count, or -1 for forever")
        latency = None if latency_ms is None else int(latency_ms)
        retry = None if retry_after is None else float(retry_after)
        with self.lock:
            rule = Fault(next(self._rule_ids), model, str(fault), int(times), latency, retry)
            self.rules.append(rule)
            return replace(rule)

    def take_faults(self, model: str, stream: bool) -> tuple[float, Fault | None]:
        """Use up the rules matching a request: the added latency (s) and the fault to apply."""
        latency, chosen = 0.0, None
        with self.lock:
            for rule in list(self.rules):
                if rule.model not in ("*", model):
                    continue
                if rule.fault == "none":
                    latency += rule.delay_s
                elif chosen is None and (stream or rule.fault not in STREAM_ONLY):
                    chosen = replace(rule)
                else:
                    continue
                if rule.times > 0:  # -1: forever
                    rule.times -= 1
                    if rule.times == 0:
                        self.rules.remove(rule)
        return latency, chosen

    def next_generation_id(self) -> str:
        """A fresh ``gen-<n>`` id."""
        return f"gen-{next(self._gen_ids)}"


# --- answers ------------------------------------------------------------------------------------


@dataclass
class _Answer:
    pieces: list[str]  # the content's words, each with the whitespace before it
    tool_call: dict[str, Any] | None
    finish: str
    usage: dict[str, Any]
    n: int = 1  # choices, each the same answer (``n`` in the request)


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(t for t in texts if isinstance(t, str))
    return content if isinstance(content, str) else ""


_GRADED = re.compile(r".*Answer:\n(.*)\n\nGrade:\s*$", re.DOTALL)  # the last Answer: block
_AUTHOR = re.compile(r"echo\[([^\]]+)\]:")


NO_GRADE = "I cannot grade this answer."


def judge_grade(grades: JudgeGrades, model: str) -> int | None:
    """The grade judge mode gives the answers of ``model``: configured (None: no grade), else
    stable from its id (0 to 10)."""
    if model in grades:
        return grades[model]
    return int(hashlib.sha256(model.encode()).hexdigest()[:4], 16) % 11


def _reply_text(last_user: str, model: str, grades: JudgeGrades | None) -> str:
    if grades is None:
        return "echo: " + last_user
    graded = _GRADED.search(last_user)
    if graded is not None:
        author = _AUTHOR.search(graded.group(1))
        grade = judge_grade(grades, author.group(1)) if author else 5
        return NO_GRADE if grade is None else str(grade)
    return f"echo[{model}]: " + last_user


def _asks_json(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    return kind in ("json_object", "json_schema")


def _answer(
    body: dict[str, Any],
    model: str,
    gen_id: str,
    prices: Prices | None,
    judge_grades: JudgeGrades | None = None,
) -> _Answer:
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    prompt_tokens = sum(len(_text(m.get("content")).split()) for m in messages)
    users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
    last_user, tools = (users[-1] if users else ""), body.get("tools")
    pieces: list[str] = []
    tool_call, finish = None, "stop"
    if tools and isinstance(tools[0], dict) and "call a tool" in last_user.lower():
        function = {"name": str((tools[0].get("function") or {}).get("name")), "arguments": "{}"}
        tool_call = {"id": f"call_{gen_id}", "type": "function", "function": function}
        finish, completion_tokens = "tool_calls", 2  # the name and the arguments
    elif _asks_json(body):  # a structured answer: one JSON object
        pieces, completion_tokens = [json.dumps({"echo": last_user})], 1
    else:
        pieces = re.findall(r"\s*\S+", _reply_text(last_user, model, judge_grades))
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if isinstance(limit, int) and len(pieces) > limit:
            pieces, finish = pieces[: max(limit, 0)], "length"
        completion_tokens = len(pieces)
    n = body.get("n")
    answers = n if isinstance(n, int) and n > 1 else 1
    completion_tokens *= answers  # every choice is billed
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    if prices is not None and model in prices:
        usage["cost"] = prompt_tokens * prices[model][0] + completion_tokens * prices[model][1]
    return _Answer(pieces, tool_call, finish, usage, answers)


def _head(model: str, gen_id: str, kind: str) -> dict[str, Any]:
    return dict(id=gen_id, provider=PROVIDER, model=model, object=kind, created=int(time.time()))


def _choice(finish: str | None, **fields: Any) -> dict[str, Any]:
    return dict(index=0, **fields, finish_reason=finish, native_finish_reason=finish, logprobs=None)


def _completion(model: str, gen_id: str, answer: _Answer) -> dict[str, Any]:
    message: dict[str, Any] = dict(role="assistant", content="".join(answer.pieces), refusal=None)
    if answer.tool_call:
        message |= {"content": None, "tool_calls": [answer.tool_call]}
    choices = [_choice(answer.finish, message=message) | {"index": i} for i in range(answer.n)]
    return _head(model, gen_id, "chat.completion") | {"choices": choices, "usage": answer.usage}


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _content_events(head: dict[str, Any], answer: _Answer) -> list[bytes]:
    """The content chunks: one per word, or the tool call's name and then its arguments."""
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": p} for p in answer.pieces]
    if answer.tool_call:
        function = answer.tool_call["function"] | {"arguments": ""}
        first = answer.tool_call | {"index": 0, "function": function}
        deltas = [{"role": "assistant", "content": None, "tool_calls": [first]}]
        deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})
    return [_data(head | {"choices": [_choice(None, delta=delta)]}) for delta in deltas]


def _error(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if code >= 500:
        error["metadata"] = {"provider_name": PROVIDER}
    return JSONResponse({"error": error}, status_code=code, headers=headers)


# --- endpoints ----------------------------------------------------------------------------------


def _state(request: Request) -> UpstreamState:
    return cast(UpstreamState, request.app.state.upstream)


def _rejection(request: Request, body: Any, prices: Prices | None) -> JSONResponse | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _error(401, "No auth credentials found")
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return _error(400, "The body must be a JSON object with a messages array")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _error(400, "model is required")
    if prices is not None and model not in prices:
        return _error(400, f"{model} is not a valid model ID")
    return _unsupported(body, _state(request).capabilities.get(model))


def _unsupported(body: dict[str, Any], stated: dict[str, Any] | None) -> JSONResponse | None:
    """OpenRouter's 404 for a request using what the model's listing does not support."""
    if stated is None:
        return None
    parameters = set(stated.get("supported_parameters") or [])
    modalities = set(stated.get("input_modalities") or ["text"])
    if body.get("tools") and "tools" not in parameters:
        return _error(404, "No endpoints found that support tool use.")
    response_format = body.get("response_format")
    schema = isinstance(response_format, dict) and response_format.get("type") == "json_schema"
    if schema and not parameters & {"structured_outputs", "response_format"}:
        return _error(404, "No endpoints found that can handle the requested parameters.")
    parts = [
        part
        for message in body.get("messages") or []
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
    ]
    images = any(isinstance(p, dict) and p.get("type") == "image_url" for p in parts)
    if images and "image" not in modalities:
        return _error(404, "No endpoints found that support image input.")
    return None


async def _chat(request: Request) -> ASGIApp:
    state = _state(request)
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    model = str(body.get("model")) if isinstance(body, dict) else ""
    stream = isinstance(body, dict) and body.get("stream") is True
    rejection = _rejection(request, body, state.prices)
    latency, fault = (0.0, None) if rejection else state.take_faults(model, stream)
    kind = fault.fault if fault else "none"
    headers = dict(request.headers)
    if "authorization" in headers:
        headers["authorization"] = "<redacted>"
    entry = {"path": request.url.path, "model": model, "stream": stream, "body": body}
    entry |= {"headers": headers, "fault": kind if fault else None, "time": time.time()}
    with state.lock:
        state.requests.append(entry)
    if rejection:
        return rejection
    if await _pause(request.receive, latency + (fault.delay_s if fault else 0)):
        return _no_response
    if kind == "reset":
        await _drop_connection(request.scope, request.receive, reset=True)
        return _no_response
    if fault and kind.isdigit():
        retry = None if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
        return _error(int(kind), MESSAGES[int(kind)], retry)
    credentials = request.headers.get("authorization", "")
    if kind == "echo_key" and not stream:
        return _error(502, f"the provider refused the request sent with {credentials}")
    gen_id = state.next_generation_id()
    answer = _answer(body, model, gen_id, state.prices, state.judge_grades)
    with state.lock:
        entry["billed_usd"] = _billed(answer, model, state.prices, kind)
    if stream:
        return _stream(body, model, gen_id, answer, kind, credentials)
    if kind == "malformed":
        return Response(_broken(gen_id), media_type="application/json")
    completion = _completion(model, gen_id, answer)
    return JSONResponse(completion, headers={"X-Generation-Id": gen_id})


STREAMED_BEFORE_FAILURE = {
    "cut_stream": 2,
    "error_in_stream": 1,
    "echo_key": 1,
}  # content chunks sent


def _billed(answer: _Answer, model: str, prices: Prices | None, kind: str) -> float | None:
    """What a provider would bill for this answer: all of it, or the part streamed before a
    cut; None for an unpriced model or an answer that never came (malformed)."""
    if prices is None or model not in prices or kind == "malformed":
        return None if kind != "malformed" else 0.0
    sent = STREAMED_BEFORE_FAILURE.get(kind)
    if sent is None:
        return float(answer.usage["cost"])
    prompt_price, completion_price = prices[model]
    return answer.usage["prompt_tokens"] * prompt_price + sent * completion_price


def _broken(gen_id: str) -> bytes:
    """A body cut off mid-JSON, for the ``malformed`` fault."""
    return b'{"id": "' + gen_id.encode() + b'", "choices": [{"message": {"content'


def _stream(
    body: dict[str, Any], model: str, gen_id: str, answer: _Answer, kind: str, credentials: str
) -> ASGIApp:
    head = _head(model, gen_id, "chat.completion.chunk")
    content = _content_events(head, answer)
    if kind == "malformed":
        return _EventStream([PROCESSING, b"data: " + _broken(gen_id) + b"\n\n", DONE], gen_id)
    if kind == "cut_stream":
        return _EventStream([PROCESSING, *content[:2]], gen_id, cut=True)
    if kind == "error_in_stream":
        error = {"code": 502, "message": MESSAGES[502], "metadata": {"provider_name": PROVIDER}}
        failed = head | {"error": error, "choices": [_choice("error", delta={"content": ""})]}
        return _EventStream([PROCESSING, *content[:1], _data(failed)], gen_id)
    if kind == "echo_key":
        message = f"the provider refused the request sent with {credentials}"
        echoed = _data(head | {"error": {"code": 502, "message": message}})
        split = echoed.index(credentials.encode()) + len(credentials) // 2
        return _EventStream([PROCESSING, *content[:1], echoed[:split], echoed[split:]], gen_id)
    finish = _choice(answer.finish, delta={"role": "assistant", "content": ""})
    events = [PROCESSING, *content, _data(head | {"choices": [finish]})]
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        events.append(_data(head | {"choices": [], "usage": answer.usage}))
    return _EventStream([*events, DONE], gen_id)


def _price(value: float) -> str:
    return format(Decimal(repr(float(value))).normalize(), "f")


async def _models(request: Request) -> JSONResponse:
    data = []
    state = _state(request)
    for model, (prompt, completion) in (state.prices or {}).items():
        pricing = {"prompt": _price(prompt), "completion": _price(completion), "request": "0"}
        entry = dict(id=model, name=f"Fake: {model}", pricing=pricing, context_length=128_000)
        stated = state.capabilities.get(model)
        if stated is not None:
            entry["supported_parameters"] = list(stated.get("supported_parameters") or [])
            modalities = list(stated.get("input_modalities") or ["text"])
            entry["architecture"] = {"input_modalities": modalities}
            entry["context_length"] = stated.get("context_length") or 128_000
        data.append(entry)
    return JSONResponse({"data": data})


async def _other_endpoint(request: Request) -> JSONResponse:
    """``/embeddings`` (an 8-number vector per input), ``/completions`` (``"echo: " + prompt``)
    and ``/responses`` (``"echo: " + input text``), priced like chat; logged like chat."""
    state = _state(request)
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _error(400, "model is required")
    model, endpoint = body["model"], request.url.path.rsplit("/", 1)[-1]
    entry = {"path": request.url.path, "model": model, "stream": False, "body": body}
    with state.lock:
        state.requests.append(entry | {"headers": {}, "fault": None, "time": time.time()})
    if state.prices is not None and model not in state.prices:
        return _error(400, f"{model} is not a valid model ID")
    prompt_price, completion_price = (state.prices or {}).get(model, (0.0, 0.0))
    gen_id = state.next_generation_id()
    if endpoint == "embeddings":
        inputs = body.get("input")
        texts = inputs if isinstance(inputs, list) else [inputs]
        tokens = sum(len(str(t).split()) for t in texts)
        data = [{"object": "embedding", "index": i, "embedding": [0.125] * 8}
                for i in range(len(texts))]  # fmt: skip
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "cost": tokens * prompt_price}
        return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})
    text = str(body.get("prompt") if endpoint == "completions" else _input_text(body.get("input")))
    words = re.findall(r"\s*\S+", "echo: " + text)
    prompt_tokens, completion_tokens = len(text.split()), len(words)
    cost = prompt_tokens * prompt_price + completion_tokens * completion_price
    if endpoint == "completions":
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens, "cost": cost}  # fmt: skip
        choice = {"index": 0, "text": "".join(words), "finish_reason": "stop"}
        answer = {"id": gen_id, "object": "text_completion", "model": model, "choices": [choice]}
        return JSONResponse(answer | {"usage": usage})
    usage = {"input_tokens": prompt_tokens, "output_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens, "cost": cost}  # fmt: skip
    content = [{"type": "output_text", "text": "".join(words), "annotations": []}]
    output = [{"type": "message", "id": f"msg_{gen_id}", "role": "assistant",
               "status": "completed", "content": content}]  # fmt: skip
    return JSONResponse({"id": f"resp_{gen_id}", "object": "response", "status": "completed",
                         "model": model, "output": output, "usage": usage})  # fmt: skip


def _input_text(given: Any) -> str:
    if isinstance(given, str):
        return given
    texts = []
    for item in given if isinstance(given, list) else []:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
    return " ".join(texts)


async def _control(request: Request) -> JSONResponse:
    state, what = _state(request), request.url.path.rsplit("/", 1)[-1]
    with state.lock:
        if request.method == "DELETE":
            (state.rules if what == "faults" else state.requests).clear()
            return JSONResponse({"cleared": True})
        if request.method == "GET":
            listed = [asdict(rule) for rule in state.rules] if what == "faults" else state.requests
            return JSONResponse(listed)
    try:
        spec = await request.json()
        if not isinstance(spec, dict):
            raise TypeError("the body must be a JSON object")
        rule = state.add_fault(**spec)
    except (TypeError, ValueError) as exc:
        return _error(400, f"invalid fault: {exc}")
    return JSONResponse(asdict(rule), status_code=201)


def create_fake_upstream(
    prices: Prices | None = None,
    judge_grades: JudgeGrades | None = None,
    capabilities: Capabilities | None = None,
) -> Starlette:
    """Build the fake upstream app; ``prices`` maps model id to USD per (prompt, completion) token.

    Without prices every model is accepted and answers carry no cost. The app's
    ``state.upstream`` is its ``UpstreamState``.
    """
    routes = [
        Route("/_control/faults", _control, methods=["GET", "POST", "DELETE"]),
        Route("/_control/requests", _control, methods=["GET", "DELETE"]),
    ]
    for prefix in ("/api/v1", "/v1"):
        routes.append(Route(f"{prefix}/chat/completions", _chat, methods=["POST"]))
        routes.append(Route(f"{prefix}/models", _models, methods=["GET"]))
        for path in ("embeddings", "completions", "responses"):
            routes.append(Route(f"{prefix}/{path}", _other_endpoint, methods=["POST"]))
    app = Starlette(routes=routes)
    app.state.upstream = UpstreamState(prices, judge_grades, capabilities)
    return app


# --- running it ---------------------------------------------------------------------------------


def _config(app: Starlette, host: str, port: int, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host,
        port,
        http=ResettableProtocol,
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=1,
        **options,
    )


class FakeUpstreamServer:
    """A fake upstream served by uvicorn in a background thread; use it as a context manager.

    ``url`` is the API base for an OpenAI client, ``control_url`` the control API's base, and
    ``state`` the ``UpstreamState`` (``state.add_fault(...)`` works in-process too).
    """

    def __init__(
        self,
        prices: Prices | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        judge_grades: JudgeGrades | None = None,
        capabilities: Capabilities | None = None,
    ):
        self.app = create_fake_upstream(prices, judge_grades, capabilities)
        self.state: UpstreamState = self.app.state.upstream
        self.host, self.port = host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port/api/v1``."""
        return f"http://{self.host}:{self.port}/api/v1"

    @property
    def control_url(self) -> str:
        """``http://host:port/_control``."""
        return f"http://{self.host}:{self.port}/_control"

    def start(self) -> FakeUpstreamServer:
        """Bind (a free port when ``port`` is 0), start serving, and wait until it is ready."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = server = uvicorn.Server(
            _config(self.app, self.host, self.port, log_config=None)
        )
        self._thread = threading.Thread(target=server.run, args=([sock],), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeUpstreamServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    host: str = "127.0.0.1",
    port: int = 9000,
    prices: Prices | None = None,
    log_level: str = "info",
    judge_grades: JudgeGrades | None = None,
) -> None:
    """Serve a fake upstream in the foreground until interrupted."""
    app = create_fake_upstream(prices, judge_grades)
    uvicorn.Server(_config(app, host, port, log_level=log_level)).run()


def catalog_prices(models: list[str] | None = None) -> Prices:
    """Prices for the fake upstream from the shipped catalog: every priced model, or ``models``."""
    from service.catalog import Catalog

    catalog = Catalog.load()
    prices: Prices = {}
    for model in models if models is not None else catalog.ids():
        info = catalog.get(model)
        if info.prompt_usd_per_token is not None and info.completion_usd_per_token is not None:
            prices[model] = (info.prompt_usd_per_token, info.completion_usd_per_token)
    return prices


def catalog_capabilities(models: list[str]) -> Capabilities:
    """What the shipped catalog states each of ``models`` supports, for an OpenRouter-like
    fake (models it states nothing of are left out: accepted with anything)."""
    from service.catalog import Catalog

    catalog = Catalog.load()
    stated: Capabilities = {}
    for model in models:
        info = catalog.get(model)
        if info.supported_parameters is not None:
            stated[model] = {
                "supported_parameters": list(info.supported_parameters),
                "input_modalities": list(info.input_modalities or ("text",)),
                "context_length": info.context_length,
            }
    return stated
