"""The ``extended`` server: ``POST /1.0/extended`` (microcluster's example endpoint).

A direct call (from the CLI or curl) answers with this member's greeting and fans the
message out to every other member as a *notification* (``User-Agent:
lxd-cluster-notifier``, body ``{"sender": "ip:port", "message": ...}``); each of them answers
one line and does not fan out again. The answers are joined with newlines.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from quart import Request

import microtrio

__all__ = ["EXTENDED_SERVER", "NOTIFIER_USER_AGENT"]

logger = logging.getLogger("microd.api")

#: The User-Agent of a member-to-member notification (as LXD and microcluster).
NOTIFIER_USER_AGENT = "lxd-cluster-notifier"


async def _body(req: Request) -> dict[str, Any]:
    data = await req.get_json(force=True, silent=True)
    if data is None and await req.get_data():
        raise microtrio.BadRequestError("The body must be JSON")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise microtrio.BadRequestError("The body must be a JSON object")
    return data


async def extended(state: microtrio.State, req: Request) -> Any:
    """Greet this member and every other one (fan-out unless this is a notification)"""
    body = await _body(req)
    message = str(body.get("message", "Testing 1 2 3..."))
    if req.headers.get("User-Agent", "") == NOTIFIER_USER_AGENT:
        sender = str(body.get("sender", "?"))
        logger.info("%s: extended notification from %s: %s", state.name, sender, message)
        return f"{state.name} ({state.address}) received {message!r} from {sender}"
    answers = [f"{state.name} ({state.address}) says {message!r}"]
    clients = await state.cluster_clients()

    async def ask(client: microtrio.Client) -> None:
        async with client:
            try:
                with trio.fail_after(10):
                    answer = await client.notifier(state.address).query(
                        "POST", "/1.0/extended", {"sender": state.address, "message": message}
                    )
                answers.append(str(answer))
            except (microtrio.MicrotrioError, trio.TooSlowError) as exc:
                logger.warning("%s: extended fan-out failed: %s", state.name, exc)
                answers.append(f"error: {exc}")

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(ask, client)
    return "\n".join(answers)


EXTENDED_SERVER = microtrio.Server(
    resources=[
        microtrio.Resources(
            "1.0",
            [
                microtrio.Endpoint(
                    "extended",
                    name="extended",
                    post=microtrio.EndpointAction(extended, allow_untrusted=True),
                )
            ],
        )
    ],
    core_api=True,
    serve_unix=True,
)
