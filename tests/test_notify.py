"""Webhook notifications, received by a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import pytest

from kvsnap import __version__, notify
from kvsnap.logs import configure_logging, register_secret
from kvsnap.notify import Event, WebhookRetry
from kvsnap.policy import Policy
from tests.webhooks import TOKEN, Receiver, Reply

# Retries without waiting, so a test's three tries take milliseconds.
FAST = WebhookRetry(
    attempts=3,
    timeout_seconds=5.0,
    backoff_seconds=0.001,
    max_backoff_seconds=0.001,
    max_retry_after_seconds=0.05,
)


@pytest.fixture
def kvsnap_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture kvsnap's records at DEBUG, then put the logger back as it was."""
    logger = logging.getLogger("kvsnap")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    # caplog puts back the level it finds here, so it must look before the change.
    caplog.set_level(logging.DEBUG, logger="kvsnap")
    configure_logging(logging.DEBUG)
    logger.addHandler(caplog.handler)
    yield caplog
    logger.handlers[:], logger.level, logger.propagate = saved


def policy_for(*urls: str, webhook_format: str = "json", **extra: Any) -> Policy:
    for url in urls:
        register_secret(url)
    return Policy(webhooks=urls, webhook_format=webhook_format, **extra)


def failure_event() -> Event:
    return Event(
        type="failure",
        run="a1b2c3d4e5f6",
        summary="kvsnap run a1b2c3d4e5f6 failed: backup of shop: HTTP 500",
        details={"exit_code": 12, "namespaces": ["shop", "users"]},
        time=datetime(2025, 3, 1, 3, 0, 5, tzinfo=UTC),
    )


def send(policy: Policy, event: Event, retry: WebhookRetry = FAST) -> None:
    asyncio.run(notify.send(policy, event, retry=retry))


def test_send_json_body(receiver: Receiver) -> None:
    send(policy_for(receiver.url()), failure_event())

    assert len(receiver.requests) == 1
    path, headers, _ = receiver.requests[0]
    assert path == f"/hooks/{TOKEN}"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"kvsnap/{__version__}"
    assert receiver.bodies()[0] == {
        "type": "failure",
        "run": "a1b2c3d4e5f6",
        "time": "2025-03-01T03:00:05.000Z",
        "summary": "kvsnap run a1b2c3d4e5f6 failed: backup of shop: HTTP 500",
        "details": {"exit_code": 12, "namespaces": ["shop", "users"]},
        "tool": "kvsnap",
        "version": __version__,
    }


def test_send_slack_body(receiver: Receiver) -> None:
    send(policy_for(receiver.url(), webhook_format="slack"), failure_event())

    body = receiver.bodies()[0]
    assert set(body) == {"text", "blocks"}
    assert body["text"] == (
        ":x: kvsnap failure: kvsnap run a1b2c3d4e5f6 failed: backup of shop: HTTP 500"
    )
    section, fields, context = body["blocks"]
    assert section == {
        "type": "section",
        "text": {"type": "mrkdwn", "text": body["text"]},
    }
    assert fields["type"] == "section"
    assert [f["text"] for f in fields["fields"]] == [
        "*exit_code*\n12",
        "*namespaces*\nshop, users",
    ]
    assert context["type"] == "context"
    assert "run a1b2c3d4e5f6" in context["elements"][0]["text"]
    assert "2025-03-01T03:00:05.000Z" in context["elements"][0]["text"]


def test_slack_fields_read_as_text() -> None:
    event = Event(
        type="failure",
        run="a1b2c3d4e5f6",
        summary="failed",
        details={"ok": False, "error": None, "backup": {"namespaces": [{"id": "x"}]}},
    )

    [_, fields, _] = notify.event_body(event, "slack")["blocks"]

    assert [f["text"] for f in fields["fields"]] == [
        "*ok*\nno",
        "*error*\n-",
        '*backup*\n{"namespaces": [{"id": "x"}]}',
    ]


def test_slack_body_caps_fields() -> None:
    details = {f"field{i}": "x" * 3000 for i in range(15)}
    event = Event(type="anomaly", run=None, summary="held", details=details)

    body = notify.event_body(event, "slack")

    fields = body["blocks"][1]["fields"]
    assert len(fields) == notify.SLACK_MAX_FIELDS
    assert all(len(f["text"]) == notify.SLACK_MAX_FIELD_CHARS for f in fields)
    assert body["text"].startswith(":warning: kvsnap anomaly: held")
    assert "run -" in body["blocks"][2]["elements"][0]["text"]


def test_event_details_become_json() -> None:
    moment = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    event = Event(
        type="success",
        run="r",
        summary="done",
        details={"when": moment, "ids": ("a", "b"), "path": PurePosixPath("/tmp/x")},
    )

    details = event.to_json()["details"]

    assert details["when"] == "2025-01-02T03:04:05.000Z"
    assert details["ids"] == ["a", "b"]
    assert details["path"] == "/tmp/x"
    json.dumps(details)


def test_event_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="invalid event type"):
        Event(type="party", run=None, summary="")  # type: ignore[arg-type]


def test_send_every_webhook(receiver: Receiver) -> None:
    urls = [receiver.url(f"/first/{TOKEN}"), receiver.url(f"/second/{TOKEN}")]

    send(policy_for(*urls), failure_event())

    assert sorted(path for path, _, _ in receiver.requests) == [
        f"/first/{TOKEN}",
        f"/second/{TOKEN}",
    ]


def test_send_without_webhooks_posts_nothing(receiver: Receiver) -> None:
    send(Policy(), failure_event())

    assert receiver.requests == []


def test_send_retries_after_500(
    receiver: Receiver, kvsnap_logs: pytest.LogCaptureFixture
) -> None:
    receiver.replies = [Reply(500), Reply(503)]

    send(policy_for(receiver.url()), failure_event())

    assert len(receiver.requests) == 3
    assert receiver.bodies()[0] == receiver.bodies()[2]
    messages = [r.getMessage() for r in kvsnap_logs.records]
    assert "webhook 1 of 1: HTTP 500, try 1 of 3; retrying in 0.0 s" in messages
    assert "webhook 1 of 1: HTTP 503, try 2 of 3; retrying in 0.0 s" in messages
    assert "webhook 1 of 1 accepted the failure event" in messages
    assert not [r for r in kvsnap_logs.records if r.levelno >= logging.WARNING]


def test_send_honours_retry_after(
    receiver: Receiver, kvsnap_logs: pytest.LogCaptureFixture
) -> None:
    receiver.replies = [Reply(429, {"Retry-After": "0.02"}), Reply(429)]

    send(policy_for(receiver.url()), failure_event())

    assert len(receiver.requests) == 3
    messages = [r.getMessage() for r in kvsnap_logs.records]
    assert "webhook 1 of 1: HTTP 429, try 1 of 3; retrying in 0.0 s" in messages
    assert "webhook 1 of 1 accepted the failure event" in messages


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("5", 5.0),
        ("3600", 60.0),  # capped at max_retry_after_seconds
        ("-4", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_parsing(header: str, expected: float | None) -> None:
    import httpx

    headers = {"Retry-After": header} if header else {}
    response = httpx.Response(429, headers=headers)

    assert notify._retry_after(response, notify.DEFAULT_RETRY) == expected


def test_retry_after_ignored_for_500() -> None:
    import httpx

    response = httpx.Response(503, headers={"Retry-After": "5"})

    assert notify._retry_after(response, notify.DEFAULT_RETRY) is None


def test_send_gives_up_after_cap(
    receiver: Receiver, kvsnap_logs: pytest.LogCaptureFixture
) -> None:
    receiver.replies = [Reply(500)] * 10

    send(policy_for(receiver.url()), failure_event())

    assert len(receiver.requests) == FAST.attempts
    warnings = [r for r in kvsnap_logs.records if r.levelno == logging.WARNING]
    assert [w.getMessage() for w in warnings] == [
        "webhook 1 of 1 failed for the failure event after 3 tries: HTTP 500"
    ]


def test_send_names_webhook_by_position(
    receiver: Receiver, kvsnap_logs: pytest.LogCaptureFixture
) -> None:
    working = receiver.url(f"/ok/{TOKEN}")
    # Nothing listens on port 9 of 127.0.0.1 (discard), so this one cannot connect.
    unreachable = f"http://127.0.0.1:9/down/{TOKEN}"

    send(policy_for(working, unreachable), failure_event())

    assert [path for path, _, _ in receiver.requests] == [f"/ok/{TOKEN}"]
    warnings = [r.getMessage() for r in kvsnap_logs.records if r.levelno >= 30]
    assert warnings == [
        "webhook 2 of 2 failed for the failure event after 3 tries: "
        "request failed (ConnectError)"
    ]


def test_send_does_not_retry_404(
    receiver: Receiver, kvsnap_logs: pytest.LogCaptureFixture
) -> None:
    receiver.replies = [Reply(404)]

    send(policy_for(receiver.url()), failure_event())

    assert len(receiver.requests) == 1
    warnings = [r.getMessage() for r in kvsnap_logs.records if r.levelno >= 30]
    assert warnings == [
        "webhook 1 of 1 rejected the failure event with HTTP 404; not retried"
    ]


def test_send_times_out_and_goes_on(kvsnap_logs: pytest.LogCaptureFixture) -> None:
    # A server that accepts connections and never answers.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/{TOKEN}"
    retry = WebhookRetry(
        attempts=2,
        timeout_seconds=0.2,
        backoff_seconds=0.001,
        max_backoff_seconds=0.001,
    )
    try:
        send(policy_for(url), failure_event(), retry)
    finally:
        listener.close()

    warnings = [r.getMessage() for r in kvsnap_logs.records if r.levelno >= 30]
    assert warnings == [
        "webhook 1 of 1 failed for the failure event after 2 tries: "
        "request failed (ReadTimeout)"
    ]


def test_url_never_logged(
    receiver: Receiver,
    kvsnap_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    receiver.replies = [Reply(500), Reply(429, {"Retry-After": "0"}), Reply(502)]
    urls = [receiver.url(), f"http://127.0.0.1:9/{TOKEN}", "http://[::1"]

    send(policy_for(*urls, webhook_format="slack"), failure_event())

    captured = capsys.readouterr()
    logged = "\n".join(
        kvsnap_logs.text.splitlines() + [r.getMessage() for r in kvsnap_logs.records]
    )
    assert "webhook 3 of 3 failed for the failure event: InvalidURL" in logged
    for text in (logged, captured.err, captured.out):
        assert TOKEN not in text
        assert "s3cr3t" not in text
    assert len(kvsnap_logs.records) >= 5


def test_url_not_logged_without_mask(
    receiver: Receiver, kvsnap_logs: pytest.LogCaptureFixture
) -> None:
    # The URL is not registered as a secret here, so the mask cannot hide it:
    # only the messages themselves keep it out.
    url = f"http://127.0.0.1:9/unregistered/{TOKEN}-x"

    send(Policy(webhooks=(url,)), failure_event())

    assert kvsnap_logs.records
    for record in kvsnap_logs.records:
        assert "unregistered" not in record.getMessage()
        assert record.exc_info is None
