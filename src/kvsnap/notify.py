"""Webhook notifications: a POST per event to every URL of the policy.

An event is sent as JSON (`format = "json"`, the default)::

    {"type": "failure", "run": "20250101T030000Z-1a2b3c", "time": "...",
     "summary": "...", "details": {...}, "tool": "kvsnap", "version": "0.1.0"}

or, with `format = "slack"`, as a body that Slack incoming webhooks and the
chat tools that copy their format accept: `text` for notifications and
clients without blocks, plus `blocks` with the same content laid out.

Webhook URLs carry their credential in the path or the query, so they are
secrets. `send` never puts one in a log line or an exception. It names a
webhook by its position ("webhook 2 of 3") and an HTTP error by its status.
It names a connection error by its class name only, because the text of an
httpx exception contains the URL. A webhook that still fails after its
retries is logged as a warning and skipped: a notification never fails the
run it reports on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx

from kvsnap import __version__
from kvsnap.logs import mask
from kvsnap.policy import Policy
from kvsnap.repository import format_timestamp

log = logging.getLogger(__name__)

EventType = Literal["failure", "anomaly", "success", "drill"]
EVENT_TYPES: tuple[str, ...] = ("failure", "anomaly", "success", "drill")

# Slack shows at most 10 fields in a section block, each up to 2,000
# characters (api.slack.com/reference/block-kit/blocks#section).
SLACK_MAX_FIELDS = 10
SLACK_MAX_FIELD_CHARS = 2000
_SLACK_ICONS = {
    "failure": ":x:",
    "anomaly": ":warning:",
    "success": ":white_check_mark:",
    "drill": ":clipboard:",
}


@dataclass(frozen=True)
class WebhookRetry:
    """How often and how long `send` tries one webhook.

    A try that gets a connection error, a timeout, HTTP 429 or a 5xx status
    is repeated after `backoff_seconds`, doubled each time up to
    `max_backoff_seconds`, with up to 25% random jitter added. A 429's
    Retry-After replaces the computed delay but is capped at
    `max_retry_after_seconds`. Other statuses (4xx, 3xx) are not retried.
    """

    attempts: int = 4
    timeout_seconds: float = 10.0
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    max_retry_after_seconds: float = 60.0


DEFAULT_RETRY = WebhookRetry()


@dataclass(frozen=True)
class Event:
    """One notification: what happened, in which run, in a sentence and as data."""

    type: EventType
    run: str | None
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"invalid event type {self.type!r}")
        if self.time.tzinfo is None:
            raise ValueError("Event.time must be timezone-aware")

    def to_json(self) -> dict[str, Any]:
        """Return the JSON body of the event, with secrets masked in the text."""
        return {
            "type": self.type,
            "run": self.run,
            "time": format_timestamp(self.time),
            "summary": mask(self.summary),
            "details": _masked(dict(self.details)),
            "tool": "kvsnap",
            "version": __version__,
        }

    def to_slack(self) -> dict[str, Any]:
        """Return a Slack-compatible body: `text`, plus `blocks` with the details."""
        icon = _SLACK_ICONS[self.type]
        summary = mask(self.summary)
        text = f"{icon} kvsnap {self.type}: {summary}"
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}}
        ]
        fields = [
            {
                "type": "mrkdwn",
                "text": _clip(f"*{name}*\n{_slack_value(value)}"),
            }
            for name, value in _masked(dict(self.details)).items()
        ]
        if fields:
            blocks.append({"type": "section", "fields": fields[:SLACK_MAX_FIELDS]})
        context = f"run {self.run or '-'} · {format_timestamp(self.time)}"
        context += f" · kvsnap {__version__}"
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}
        )
        return {"text": text, "blocks": blocks}


def event_body(event: Event, webhook_format: str) -> dict[str, Any]:
    """Return the body posted for `event` in the policy's webhook format."""
    return event.to_slack() if webhook_format == "slack" else event.to_json()


async def send(
    policy: Policy,
    event: Event,
    *,
    retry: WebhookRetry = DEFAULT_RETRY,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Post `event` to every webhook of the policy, all at once; never raises.

    Each webhook gets up to `retry.attempts` tries. A failure is logged as a
    warning naming the webhook by position, never by URL. `transport` is for
    tests that replace the network.
    """
    if not policy.webhooks:
        return
    body = event_body(event, policy.webhook_format)
    headers = {"User-Agent": f"kvsnap/{__version__}"}
    async with httpx.AsyncClient(
        timeout=retry.timeout_seconds,
        headers=headers,
        follow_redirects=False,
        transport=transport,
    ) as client:
        total = len(policy.webhooks)
        await asyncio.gather(
            *(
                _post(client, url, body, event, f"webhook {index} of {total}", retry)
                for index, url in enumerate(policy.webhooks, start=1)
            )
        )


async def _post(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    event: Event,
    name: str,
    retry: WebhookRetry,
) -> bool:
    """Post to one webhook with retries; return whether it accepted the event."""
    context = {"run": event.run}
    for attempt in range(1, retry.attempts + 1):
        last = attempt == retry.attempts
        try:
            response = await client.post(url, json=body)
        except httpx.TransportError as exc:
            # str(exc) may contain the URL, so only the class name is logged.
            problem = f"request failed ({type(exc).__name__})"
            delay = _backoff(retry, attempt)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            log.warning(
                "%s failed for the %s event: %s; not retried",
                name,
                event.type,
                type(exc).__name__,
                extra=context,
            )
            return False
        else:
            if response.is_success:
                log.info("%s accepted the %s event", name, event.type, extra=context)
                return True
            problem = f"HTTP {response.status_code}"
            if response.status_code != 429 and response.status_code < 500:
                log.warning(
                    "%s rejected the %s event with %s; not retried",
                    name,
                    event.type,
                    problem,
                    extra=context,
                )
                return False
            delay = _retry_after(response, retry)
            if delay is None:
                delay = _backoff(retry, attempt)
        if last:
            log.warning(
                "%s failed for the %s event after %d tries: %s",
                name,
                event.type,
                retry.attempts,
                problem,
                extra=context,
            )
            return False
        log.info(
            "%s: %s, try %d of %d; retrying in %.1f s",
            name,
            problem,
            attempt,
            retry.attempts,
            delay,
            extra=context,
        )
        await asyncio.sleep(delay)
    return False


def _backoff(retry: WebhookRetry, attempt: int) -> float:
    delay = min(retry.backoff_seconds * 2 ** (attempt - 1), retry.max_backoff_seconds)
    return delay * (1 + random.uniform(0, 0.25))


def _retry_after(response: httpx.Response, retry: WebhookRetry) -> float | None:
    """Return the capped Retry-After delay of a 429, or None if it has none."""
    if response.status_code != 429:
        return None
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), retry.max_retry_after_seconds)


def _masked(value: Any) -> Any:
    """Turn a details value into JSON types, with secrets masked in every text.

    A datetime becomes RFC 3339 text and any other type its str(), so that
    encoding the body cannot fail.
    """
    if isinstance(value, str):
        return mask(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat() if value.tzinfo is None else format_timestamp(value)
    if isinstance(value, Mapping):
        return {mask(str(key)): _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(item) for item in value]
    return mask(str(value))


def _slack_value(value: Any) -> str:
    """Write a detail as a person reads it, not as Python prints it."""
    if isinstance(value, str):
        return value
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple) and all(
        isinstance(item, str | int | float) for item in value
    ):
        return ", ".join(str(item) for item in value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _clip(text: str) -> str:
    if len(text) <= SLACK_MAX_FIELD_CHARS:
        return text
    return text[: SLACK_MAX_FIELD_CHARS - 1] + "…"
