"""How a service talks on the bus: the one file to read.

Three things, each written once for the whole platform:

- **Asking** (`Bus.ask`): a typed request, a typed reply. Whatever the peer, the failures
  mean the same: nobody listening is `unavailable` (503), no answer in time is an upstream
  timeout (504), a handler that failed sends its `ErrorInfo` back (its own status). Any
  other failure to ask (a closed or reconnecting connection) is `unavailable` too, and
  logged on `enclave.bus` with what it was (once per 10 s per peer and kind). `ask`
  raises them as `EnclaveError`; with `failed=` it returns that reply instead (for callers
  that pass an error on as a reply, such as the guardrails' fail-closed verdict). Each
  peer's timeout comes from the settings (`Peers`). A peer asked only read-only questions
  (a turn's route, a guardrail check) is hedged: without an answer after
  `ENCLAVE_ASK_HEDGE_S` (3.5 s) it is asked again, so a replica killed with the request in
  hand (NATS tells nobody) costs seconds, not the whole timeout. A peer whose requests
  must never run twice (a sandbox exec) is watched instead (`Peer.alive_s`): the replica
  that takes the request says so at once on the reply inbox (`enclave-accepted: <its
  liveness subject>`, `serve(accepted=...)`), then answers pings on that subject of its
  own (`serve_alive`); the asker pings it every `alive_s` while it waits, and stops
  waiting with 503 `<peer>_lost` when nobody answers (the replica died: NATS drops a dead
  connection's subscriptions when its socket closes) or `ALIVE_MISSES` pings in a row go
  unanswered. The request is never sent again.
- **Answering** (`serve`, `serve_broker`): a handler is a plain
  `async def handle(request: Model) -> Reply`. It raises `EnclaveError` to refuse; the
  asker gets that error back. `serve` binds it to a raw nats-py subscription (the per-request
  hot path, where FastStream's own handling was measured at 0.25 ms a message:
  bench/gateway.py), `serve_broker` to a FastStream subscriber (everything else). Same handler,
  same error policy either way. `settled` returns once the server has read this
  connection's SUBs (a started service serves from then on), and `leave` takes a replica
  out of its queue group without dropping what was already routed to it: nats-py's own
  `flush()` and `drain()` promise neither (their PING overtakes the SUB or UNSUB).
- **Streams of replies** (`ReplyRouter`): a replica that waits for many streamed answers
  at once (the gateway for its turns' events, a runtime for its generations' deltas)
  subscribes once to `<prefix>*`; each waiting request opens an `Inbox` under a key and
  reads what is sent to `<prefix><key>`. No SUB/UNSUB per request. A sender that sends
  as a request (a heartbeat, `still_wanted`) is told whether that inbox is still open, so
  a runtime learns that its client's gateway, and a worker that its runtime, is gone.

Subjects come from `libs/subjects.py`, the messages from `libs/events.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from faststream.nats import NatsBroker, NatsMessage, NatsResponse
from nats.aio.client import NO_RESPONDERS_STATUS
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import BaseModel, ValidationError

from libs.bus import event_bytes
from libs.errors import EnclaveError, ErrorInfo
from libs.settings import Settings

log = logging.getLogger("enclave.bus")

Request = TypeVar("Request", bound=BaseModel)
Reply = TypeVar("Reply", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Reply]]

# Set on a reply that carries an `ErrorInfo` instead of the reply model.
ERROR_HEADER = "enclave-error"
# A `ReplyRouter`'s answer to a message sent as a request: "open" or "closed".
INBOX_HEADER = "enclave-inbox"
# The first message on a watched request's reply inbox (`Peer.alive_s`): the replica took
# it; the value is the subject on which that replica answers liveness pings.
ACCEPTED_HEADER = "enclave-accepted"
# Pings of a watched request's replica that may go unanswered in a row (a slow, not a dead
# replica: a dead one is "no responders" at once) before the asker stops waiting.
ALIVE_MISSES = 3
INTERNAL = ErrorInfo(status=500, message="Internal error.", code="internal_error")


# -- asking --


@dataclass(frozen=True)
class Peer:
    """A service that is asked over the bus: how its failures read, how long it gets."""

    name: str  # "the memory service": the subject of the error messages
    code: str  # the code of its 503
    timeout_s: float
    # Ask again after this long without an answer (idempotent requests only): a replica
    # killed with the request in hand answers nothing, and NATS tells only a new request
    # that nobody listens any more. None: one request, the whole timeout.
    hedge_s: float | None = None
    # Requests that must never run twice (not idempotent) and run long: the replica that
    # takes one is pinged every `alive_s` while the asker waits (module docstring); None:
    # not watched.
    alive_s: float | None = None

    def unavailable(self) -> ErrorInfo:
        return ErrorInfo(
            status=503,
            message=f"{self.name[:1].upper()}{self.name[1:]} is not available; try again later.",
            code=self.code,
        )

    def timed_out(self) -> ErrorInfo:
        return ErrorInfo(
            status=504,
            message=f"Upstream timeout: {self.name} did not answer in {self.timeout_s:g}s.",
            code="upstream_timeout",
        )

    def lost(self) -> ErrorInfo:
        """The replica that took a watched request died before it answered."""
        return ErrorInfo(
            status=503,
            message=(
                f"{self.name[:1].upper()}{self.name[1:]} was lost while it handled the "
                "request; it was not run again. Try again."
            ),
            code=self.code.removesuffix("_unavailable") + "_lost",
        )


# When each kind of unexpected failure to ask a peer was last logged (monotonic seconds).
_LOGGED: dict[tuple[str, str], float] = {}
LOG_EVERY_S = 10.0


def _unexpected(peer: Peer, subject: str, exc: Exception) -> None:
    """Log a failure to ask that is neither "nobody listens" nor "no answer in time" (a
    connection closed or reconnecting, a client error): the caller sees the peer's 503 all
    the same, and this says which it was. At most once per `LOG_EVERY_S` for each peer and
    kind of failure, so that an outage is not a log line per request."""
    key = (peer.code, type(exc).__name__)
    now = time.monotonic()
    if now - _LOGGED.get(key, -LOG_EVERY_S) < LOG_EVERY_S:
        return
    _LOGGED[key] = now
    log.warning(
        "asking %s on %s failed: %s: %s (answered %s)",
        peer.name,
        subject,
        type(exc).__name__,
        exc,
        peer.code,
    )


class PeerLost(Exception):
    """The replica that accepted a watched request is gone (`Bus.ask` answers `lost()`)."""


class Peers:
    """Every peer of the platform, with its timeout from the settings."""

    def __init__(self, settings: Settings) -> None:
        # A turn's route and its screening: read-only questions, asked again after
        # `ask_hedge_s` without an answer, so that a replica killed while answering costs a
        # turn seconds, not the whole timeout.
        hedge = settings.ask_hedge_s or None
        self.router = Peer(
            "the inference router", "router_unavailable", settings.router_timeout_s, hedge
        )
        self.guardrails = Peer(
            "the guardrails service",
            "guardrails_unavailable",
            settings.guardrails_timeout_s,
            hedge,
        )
        # POST /v1/guardrails/check: an application's own screening waits as long as a model.
        self.guardrails_api = Peer(
            "the guardrails service", "guardrails_unavailable", settings.upstream_timeout_s
        )
        # The context pack and the grounding check of a turn.
        self.memory = Peer("the memory service", "memory_unavailable", settings.memory_timeout_s)
        # Files, vector stores and memories: an upload is parsed and embedded in the request.
        self.memory_api = Peer(
            "the memory service", "memory_unavailable", settings.memory_api_timeout_s
        )
        self.audit = Peer("the audit service", "audit_unavailable", settings.audit_api_timeout_s)
        # Its API (trainer.api): jobs and adapters, a tenant's erasure.
        self.trainer = Peer("the trainer", "trainer_unavailable", settings.trainer_api_timeout_s)
        # The router's embeddings wait for the pool's answer itself.
        self.embeddings = Peer(
            "the inference router", "router_unavailable", settings.upstream_timeout_s
        )
        self.accept_timeout_s = settings.worker_accept_timeout_s
        self.embed_timeout_s = settings.upstream_timeout_s
        self.sandbox_alive_s = settings.sandbox_alive_s or None
        self.sandbox_max_timeout_s = settings.sandbox_max_timeout_s

    def sandbox(self, slack_s: float) -> Peer:
        """The sandbox, waited for up to its longest run plus `slack_s` (a start, a queue);
        an exec is not idempotent: watched (`alive_s`), never asked twice."""
        return Peer(
            "the sandbox service",
            "sandbox_unavailable",
            self.sandbox_max_timeout_s + slack_s,
            alive_s=self.sandbox_alive_s,
        )

    def pool(self, pool: str) -> Peer:
        """The workers of one pool, asked to accept a generation."""
        return Peer(f"a worker of pool `{pool}`", "no_worker_available", self.accept_timeout_s)

    def embedder(self, pool: str) -> Peer:
        """The workers of one embedding pool, asked for vectors (the answer itself)."""
        return Peer(f"a worker of pool `{pool}`", "no_worker_available", self.embed_timeout_s)


class Bus:
    """A service's side of request/reply: one connection, one error mapping."""

    def __init__(self, nc: NatsClient, settings: Settings) -> None:
        self.nc = nc
        self.settings = settings
        self.subjects = settings.subjects
        self.peers = Peers(settings)

    async def ask(
        self,
        peer: Peer,
        subject: str,
        request: BaseModel | bytes,
        reply_type: type[Reply],
        *,
        headers: dict[str, str] | None = None,
        failed: Callable[[ErrorInfo], Reply] | None = None,
    ) -> Reply:
        """`peer`'s typed answer to `request`. A request with a `ctx` sends its headers."""
        if headers is None:
            ctx = getattr(request, "ctx", None)
            headers = ctx.headers() if ctx is not None else None
        data = request if isinstance(request, bytes) else event_bytes(request)
        try:
            msg = await self._request(peer, subject, data, headers)
        except NatsTimeout:
            error = peer.timed_out()
        except NoRespondersError:
            error = peer.unavailable()
        except PeerLost:
            error = peer.lost()
        except Exception as exc:  # no connection now: as unavailable as no responder
            _unexpected(peer, subject, exc)
            error = peer.unavailable()
        else:
            if msg.headers is None or ERROR_HEADER not in msg.headers:
                return reply_type.model_validate_json(msg.data)
            error = ErrorInfo.model_validate_json(msg.data)
        if failed is not None:
            return failed(error)
        raise EnclaveError.of(error)

    async def _request(
        self, peer: Peer, subject: str, data: bytes, headers: dict[str, str] | None
    ) -> Msg:
        """The first answer to `data`, within the peer's timeout. A hedged peer without an
        answer after `hedge_s` is asked a second time while the first request still waits:
        a live replica answers the second (whichever answer comes first wins); nobody
        listening means the replica that took the first is gone too (killed, or draining),
        and then the first gets one more `hedge_s` before the asker hears 503."""
        if peer.alive_s is not None:
            return await self._watched(peer, peer.alive_s, subject, data, headers)
        hedge = peer.hedge_s
        if hedge is None or hedge >= peer.timeout_s:
            return await self.nc.request(subject, data, timeout=peer.timeout_s, headers=headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + peer.timeout_s
        first = asyncio.ensure_future(
            self.nc.request(subject, data, timeout=peer.timeout_s, headers=headers)
        )
        tasks = {first}
        try:
            done, _ = await asyncio.wait(tasks, timeout=hedge)
            if done:
                return first.result()
            again = asyncio.ensure_future(
                self.nc.request(subject, data, timeout=deadline - loop.time(), headers=headers)
            )
            tasks.add(again)
            waiting = set(tasks)
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        return task.result()
                if again in done and isinstance(again.exception(), NoRespondersError):
                    if not first.done():
                        done, _ = await asyncio.wait({first}, timeout=hedge)
                        if done and first.exception() is None:
                            return first.result()
                    raise NoRespondersError
            raise NatsTimeout
        finally:
            for task in tasks:
                task.cancel()
            # Reap what was cancelled or failed unseen (no "exception never retrieved").
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watched(
        self, peer: Peer, every_s: float, subject: str, data: bytes, headers: dict[str, str] | None
    ) -> Msg:
        """The answer to a request sent once, on an inbox of its own (it gets two messages:
        "accepted", then the reply). Until a replica says it took the request, the peer's
        timeout as for any request; after, its replica is pinged after each `every_s` of
        silence, and `PeerLost` ends the wait as soon as it is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + peer.timeout_s
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            await self.nc.publish(subject, data, reply=inbox, headers=headers)
            alive: str | None = None  # where the replica that took it answers pings
            misses = 0
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise NatsTimeout
                try:
                    msg = await sub.next_msg(timeout=left if alive is None else min(left, every_s))
                except NatsTimeout:
                    if alive is None:
                        continue
                    misses = 0 if await self._pong(alive, every_s) else misses + 1
                    if misses >= ALIVE_MISSES:
                        raise PeerLost from None
                    continue
                found = msg.headers or {}
                if found.get("Status") == NO_RESPONDERS_STATUS:
                    raise NoRespondersError
                if ACCEPTED_HEADER in found:
                    alive = found[ACCEPTED_HEADER]
                    continue
                return msg
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone
                await sub.unsubscribe()

    async def _pong(self, subject: str, timeout: float) -> bool:
        """Whether the replica that answers pings on `subject` did; `PeerLost` when
        nobody listens there any more."""
        try:
            await self.nc.request(subject, b"", timeout=timeout)
        except NoRespondersError:
            raise PeerLost from None
        except Exception:  # slow, or no connection right now: a miss
            return False
        return True


# -- answering --


def _error(info: ErrorInfo) -> tuple[bytes, dict[str, str]]:
    return info.model_dump_json().encode(), {ERROR_HEADER: "1"}


async def _outcome(work: Awaitable[BaseModel], what: str) -> tuple[bytes, dict[str, str] | None]:
    """The reply `work` makes, or the error it raised: the one error policy of handlers."""
    try:
        return event_bytes(await work), None
    except EnclaveError as exc:
        return _error(exc.info)
    except Exception:
        log.exception("handling a %s failed", what)
        return _error(INTERNAL)


async def answer(
    request_type: type[Request], handle: Handler[Request, Reply], data: bytes
) -> tuple[bytes, dict[str, str] | None]:
    """The reply to one raw request (and its headers): what every transport sends back."""
    try:
        request = request_type.model_validate_json(data)
    except ValidationError as exc:
        return _error(
            ErrorInfo(status=400, message=f"Unreadable {request_type.__name__}: {exc.errors()[:1]}")
        )
    return await _outcome(handle(request), request_type.__name__)


async def respond(nc: NatsClient, msg: Msg, work: Awaitable[BaseModel], what: str) -> None:
    """Reply to `msg` with what `work` returns, under the same error policy, for a request
    that is not one JSON model (a file upload: raw bytes, metadata in headers)."""
    data, headers = await _outcome(work, what)
    if msg.reply:
        await nc.publish(msg.reply, data, headers=headers)


async def serve(
    nc: NatsClient,
    subject: str,
    request_type: type[Request],
    handle: Handler[Request, Reply],
    *,
    queue: str,
    concurrent: bool = False,
    accepted: str | None = None,
) -> Subscription:
    """Answer `subject` with `handle` on a raw nats-py subscription (the hot path).

    nats-py runs one subscription's callbacks one after another; `concurrent` gives each
    request its own task, for handlers that wait on I/O (a slow ingestion must not hold up
    a search). `accepted`: the subject on which this replica answers liveness pings
    (`serve_alive`), sent at once to each request's reply inbox before it is handled, for
    askers that watch the replica (`Peer.alive_s`)."""

    async def respond(msg: Msg) -> None:
        if accepted is not None and msg.reply:
            await nc.publish(msg.reply, b"", headers={ACCEPTED_HEADER: accepted})
        data, headers = await answer(request_type, handle, msg.data)
        if msg.reply:
            await nc.publish(msg.reply, data, headers=headers)

    if not concurrent:
        return await nc.subscribe(subject, queue=queue, cb=respond)
    running: set[asyncio.Task[None]] = set()

    async def spawn(msg: Msg) -> None:
        task = asyncio.create_task(respond(msg))
        running.add(task)
        task.add_done_callback(running.discard)

    return await nc.subscribe(subject, queue=queue, cb=spawn)


async def settled(nc: NatsClient) -> None:
    """Return once the server has read everything this connection sent before the call:
    its SUBs, UNSUBs and publishes.

    nats-py 2.16's `flush()` cannot promise that alone. Commands wait in the connection's
    buffer for its flusher task, but `flush()` writes its PING straight to the socket, so
    the PING can reach the server before them and its PONG come back while the server
    has not yet read a SUB just made (the first ask then hears "no responders") or an
    UNSUB (see `leave`). Here the buffer is written out first, then the round trip made.

    nats-py's forced flush swallows a cancel that lands while it waits; one lost there is
    raised again here (`cancelling()` counts it), so a timeout or a stop still ends this."""
    task = asyncio.current_task()
    cancels = task.cancelling() if task is not None else 0
    await nc._flush_pending(force_flush=True)
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError
    await nc.flush()


async def leave(nc: NatsClient, member: Subscription) -> None:
    """Leave a queue group (`serve`'s subscription) without dropping a request the server
    has already handed to this member: each one is still answered.

    nats-py's `Subscription.drain()` cannot promise that: it sends UNSUB, then `flush()`,
    whose PING can overtake the UNSUB (`settled`). A request the server routes to this
    member between the PONG and its reading the UNSUB arrives after `drain()` has removed
    the subscription, and nats-py drops it unseen: its asker waits out its whole timeout.
    That was the 30 s "no worker available" in tests/deploy/test_scaling.py, where a full
    worker leaves its pool hundreds of times a run (read off the wire and measured in
    tests/bus/test_rpc.py). Here the UNSUB is settled first; `drain()` then only answers
    what came before it, and removes the subscription."""
    await _unsubscribed(nc, [member])
    await member.drain()


async def _unsubscribed(nc: NatsClient, subs: list[Subscription]) -> None:
    """UNSUB each of `subs`, and return once the server has read every UNSUB: nothing is
    routed to them after this (the subscriptions themselves stay, to take what was)."""
    for sub in subs:
        await nc._send_unsubscribe(sub._id)
    await settled(nc)


async def stop_taking_requests(nc: NatsClient, within_s: float) -> None:
    """A service about to stop: leave every queue group this connection has joined, so
    that no new request, turn or job is routed here, then let each subscription answer
    what was already routed to it (up to `within_s` in all). The subscriptions stay open
    (FastStream and the connection's drain close them), and replies to this service's own
    asks, on subscriptions of no queue group, still arrive.

    Without it a stopping replica took work until its connection closed: FastStream's
    subscribers drop what they hold when they stop (`unsubscribe()`), the connection's
    drain loses what is routed in its PING/UNSUB race (`leave`), and a turn taken in those
    seconds waited out its JetStream ack_wait (300 s) before another runtime got it.

    Limits: the tasks of a `serve(concurrent=True)` are spawned, not awaited, here; and a
    reconnect during the stop joins the queue groups again (nats-py re-sends every
    subscription it holds)."""
    if not nc.is_connected:
        return
    left = [sub for sub in list(nc._subs.values()) if sub._queue]
    try:
        async with asyncio.timeout(within_s):
            await _unsubscribed(nc, left)
            for sub in left:
                await sub._pending_queue.join()
    except TimeoutError:
        log.warning("stopping: not all that was routed here was answered in %.0f s", within_s)
    except (NatsError, OSError) as exc:  # the connection went meanwhile: nothing to leave
        log.warning("stopping: could not leave the queue groups (%s)", type(exc).__name__)


async def serve_alive(nc: NatsClient, subject: str) -> Subscription:
    """Answer liveness pings on `subject`, this replica's own (no queue group): the
    answer is that the process still runs and its connection is up."""

    async def pong(msg: Msg) -> None:
        if msg.reply:
            await nc.publish(msg.reply, b"")

    return await nc.subscribe(subject, cb=pong)


def serve_broker(
    broker: NatsBroker,
    subject: str,
    request_type: type[Request],
    handle: Handler[Request, Reply],
    *,
    queue: str,
) -> None:
    """Answer `subject` with `handle` through a FastStream subscriber (off the hot path).

    FastStream runs the subscription's lifecycle; the reply is built by `answer`, so the
    error policy is the same as `serve`'s."""

    async def respond(message: NatsMessage) -> NatsResponse:
        data, headers = await answer(request_type, handle, message.body)
        return NatsResponse(data, headers=headers or {})

    broker.subscriber(subject, queue=queue)(respond)


# -- streams of replies --


class Inbox:
    """The messages sent to one waiting request, in order."""

    __slots__ = ("_queue", "key", "router", "subject")

    def __init__(self, router: ReplyRouter, key: str) -> None:
        self.router = router
        self.key = key
        self.subject = router.prefix + key
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def next(self, timeout: float) -> Msg | None:
        """The next message, or None when `timeout` passes first."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            return None

    def ready(self) -> list[Msg]:
        """What has arrived, without waiting."""
        out: list[Msg] = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def close(self) -> None:
        self.router.inboxes.pop(self.key, None)


class ReplyRouter:
    """One wildcard subscription per replica; replies routed to their inbox by key.

    `prefix` ends where the key starts, e.g. `subjects.chat_stream(replica, "")`. A message
    for a key nobody waits for (a request that ended) is dropped."""

    def __init__(self, nc: NatsClient, prefix: str) -> None:
        self.nc = nc
        self.prefix = prefix
        self.inboxes: dict[str, Inbox] = {}
        self._cut = len(prefix)

    async def start(self) -> ReplyRouter:
        await self.nc.subscribe(self.prefix + "*", cb=self._route)
        return self

    async def _route(self, msg: Msg) -> None:
        inbox = self.inboxes.get(msg.subject[self._cut :])
        if inbox is not None:
            inbox._queue.put_nowait(msg)
        if msg.reply:  # the sender asks whether anyone still waits
            state = "open" if inbox is not None else "closed"
            await self.nc.publish(msg.reply, b"", headers={INBOX_HEADER: state})

    def open(self, key: str) -> Inbox:
        inbox = Inbox(self, key)
        self.inboxes[key] = inbox
        return inbox


async def still_wanted(
    nc: NatsClient,
    subject: str,
    data: bytes,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> bool:
    """Send `data` to a `ReplyRouter`'s inbox as a request: False when nobody waits for it
    any more (the inbox closed, or no replica listens: it died). A slow or lost answer
    counts as wanted: only a clear "gone" stops work."""
    try:
        msg = await nc.request(subject, data, timeout=timeout, headers=headers)
    except NoRespondersError:
        return False
    except Exception:  # a timeout, or no connection right now
        return True
    return (msg.headers or {}).get(INBOX_HEADER) != "closed"
