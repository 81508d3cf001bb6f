"""Storage errors are classified (outage vs refusal), retried with backoff for a bounded time, written atomically."""

from __future__ import annotations

import errno

import pytest

from pipeline.actor.decoding import InputUnavailable, VideoError, open_video
from pipeline.io import storage
from pipeline.io.storage import is_transient, retrying, write_bytes


@pytest.mark.parametrize("exc,transient", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
    (ConnectionResetError(errno.ECONNRESET, "reset"), True),
    (TimeoutError("read timed out"), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError("SlowDown: Please reduce your request rate"), True),
    (FileNotFoundError(errno.ENOENT, "missing"), False),
    (PermissionError(errno.EACCES, "Access Denied"), False),
    (ValueError("bad value"), False),
])
def test_errors_are_classified(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_a_cause_chain_is_followed() -> None:
    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


class _Clock:
    """The storage module's ``time`` in this test: only its sleeps move the clock, so no load or machine speed can
    shift a deadline."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_retrying_gives_up_at_its_deadline_and_at_once_on_a_refusal(monkeypatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(storage, "time", clock)
    calls = []

    def outage() -> None:
        calls.append(clock.now)
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    with pytest.raises(ConnectionRefusedError):
        retrying(outage, "probe", retry_s=10.0)
    assert len(calls) >= 3 and calls[0] == 0.0 and calls[-1] == pytest.approx(10.0)  # the last try at the deadline
    refusals = []

    def refused() -> None:
        refusals.append(1)
        raise PermissionError(errno.EACCES, "Access Denied")

    with pytest.raises(PermissionError):
        retrying(refused, "probe", retry_s=10.0)
    assert refusals == [1]

    flaky = iter([ConnectionResetError(errno.ECONNRESET, "reset"), None])

    def recovers() -> str:
        error = next(flaky)
        if error is not None:
            raise error
        return "ok"

    assert retrying(recovers, "probe", retry_s=10.0) == "ok"


def test_an_unreachable_video_store_is_retryable_a_missing_video_is_not(tmp_path) -> None:
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    with pytest.raises(InputUnavailable, match="storage unavailable"):
        open_video("s3://bucket/video.mp4", options)
    with pytest.raises(VideoError, match="no such video"):
        open_video(str(tmp_path / "missing.mp4"))


def test_local_writes_are_atomic(tmp_path) -> None:
    target = tmp_path / "a" / "b.json"
    write_bytes(str(target), b"first")
    write_bytes(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]  # no temporary left behind
