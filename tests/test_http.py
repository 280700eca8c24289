"""harness.http against a loopback host that misbehaves: every transient fault retried and resumed to the exact
bytes, Retry-After honoured, permanent answers and broken protocol named at once, the budget bounding a host that
stays away, one connection pool per host shared by threads."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from harness import http
from harness.errors import UserError
from harness.http import HostUnavailable, HttpClient, HttpError, HttpPolicy, MemorySink, NotFound
from tests.helpers.http_server import FileServer

FAST = HttpPolicy(budget=5, backoff=0.001, timeout=0.3, min_rate=2000, stream_bytes=512)
DATA = np.random.default_rng(0).integers(0, 256, size=20_000, dtype=np.uint8).tobytes()


@pytest.fixture
def host(tmp_path):
    (tmp_path / "data.bin").write_bytes(DATA)
    (tmp_path / "text.json").write_bytes(b'{"a": "\xff"}')
    with FileServer(tmp_path) as server:
        server.stall_seconds = 1.0
        server.trickle_seconds = 0.05
        yield server


@pytest.fixture(autouse=True)
def _fresh_stats():
    http.reset_stats()


TRANSIENT = ["503", "429", "half", "drop", "reset", "stall", "trickle"]


@pytest.mark.parametrize("fault", TRANSIENT)
def test_a_range_read_survives_each_transient_fault(host, fault):
    host.retry_after = "0"
    host.script["data.bin"] = [fault, fault]
    got = HttpClient(FAST).read(host.url("data.bin"), 1000, 15_000)
    assert got == DATA[1000:16_000]
    assert [f for _, _, f in host.injected] == [fault, fault]
    stats = http.transfer_stats()
    assert sum(v for k, v in stats.items() if k not in ("requests", "resumed by Range")) == 2, stats


@pytest.mark.parametrize("fault", TRANSIENT)
def test_a_whole_file_survives_each_transient_fault(host, fault):
    host.retry_after = "0"
    host.script["data.bin"] = [fault]
    sink = MemorySink()
    assert HttpClient(FAST).fetch(host.url("data.bin"), sink) == len(DATA)
    assert sink.getvalue() == DATA


def test_a_half_body_resumes_from_the_bytes_received(host):
    host.script["data.bin"] = ["half"]
    assert HttpClient(FAST).read(host.url("data.bin"), 0, 10_000) == DATA[:10_000]
    ranges = [r for _, r in host.requests]
    assert ranges == ["bytes=0-9999", "bytes=5000-9999"]
    assert http.transfer_stats()["resumed by Range"] == 1


def test_retry_after_is_honoured(host):
    host.retry_after = "1"
    host.script["data.bin"] = ["429"]
    started = time.monotonic()
    assert HttpClient(FAST).read(host.url("data.bin"), 0, 100) == DATA[:100]
    assert time.monotonic() - started >= 0.95


def test_a_wait_beyond_the_budget_gives_up_at_once_naming_it(host):
    host.retry_after = "3600"
    host.script["data.bin"] = ["429"]
    started = time.monotonic()
    with pytest.raises(HostUnavailable, match=r"data.bin: .*HTTP 429; it asked to wait 3600 s more"):
        HttpClient(FAST).read(host.url("data.bin"), 0, 100)
    assert time.monotonic() - started < 2


def test_a_host_that_stays_away_is_given_up_after_the_budget(host):
    host.down = True
    policy = HttpPolicy(budget=0.5, backoff=0.05, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(HostUnavailable) as err:
        HttpClient(policy).read(host.url("data.bin"), 0, 100)
    assert 0.2 < time.monotonic() - started < 3
    assert str(err.value).startswith(host.url("data.bin") + ": no complete answer after")
    assert "retry budget 0.5 s" in str(err.value) and "\n" not in str(err.value)
    assert host.unanswered >= 2


def test_a_host_that_trickles_forever_is_given_up(host):
    host.script["data.bin"] = ["trickle"] * 50
    policy = HttpPolicy(budget=1.0, backoff=0.01, timeout=0.2, min_rate=2000)
    with pytest.raises(HostUnavailable, match="under 2000"):
        HttpClient(policy).fetch(host.url("data.bin"), MemorySink())


def test_not_found_and_forbidden_are_named_at_once(host):
    with pytest.raises(NotFound, match=r"nothing.bin: not found \(HTTP 404\)"):
        HttpClient(FAST).read(host.url("nothing.bin"), 0, 10)
    assert len(host.requests) == 1


@pytest.mark.parametrize(
    "fault,message",
    [
        ("bad-length", "invalid Content-Length 'abc'"),
        ("bad-range", "Content-Range does not match the request"),
        ("redirect-loop", "redirect loop"),
    ],
)
def test_a_broken_protocol_is_named_at_once(host, fault, message):
    host.script["data.bin"] = [fault] * 40
    started = time.monotonic()
    with pytest.raises(HttpError, match=message) as err:
        if fault == "bad-length":
            HttpClient(FAST).fetch(host.url("data.bin"), MemorySink())
        else:
            HttpClient(FAST).read(host.url("data.bin"), 10, 100)
    assert time.monotonic() - started < 1 and not isinstance(err.value, HostUnavailable)


def test_text_that_is_not_utf8_is_named(host):
    with pytest.raises(HttpError, match=r"text.json: not UTF-8 text"):
        HttpClient(FAST).text(host.url("text.json"))


@pytest.mark.slow
def test_one_connection_pool_per_host_shared_by_threads(host):
    client = HttpClient(FAST)
    for i in range(20):
        client.read(host.url("data.bin"), i * 100, 100)
    assert len(host.peers) == 1, "sequential requests reuse one connection"
    host.peers.clear()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: client.read(host.url("data.bin"), i * 10, 10), range(400)))
    assert len(host.peers) <= 8 + 1, "threads share the pool instead of opening connections of their own"
    assert http.session() is http.session()


def test_the_budget_is_configurable_from_the_environment(monkeypatch):
    monkeypatch.setenv("INJECTION_HTTP_BUDGET", "2.5")
    monkeypatch.setenv("INJECTION_HTTP_TIMEOUT", "0.5")
    assert http.default_policy().budget == 2.5 and http.default_policy().timeout == 0.5
    monkeypatch.setenv("INJECTION_HTTP_BUDGET", "soon")
    with pytest.raises(UserError, match="INJECTION_HTTP_BUDGET='soon': expected a number of seconds"):
        http.default_policy()
    monkeypatch.setenv("INJECTION_HTTP_BUDGET", "nan")
    with pytest.raises(UserError, match="'budget': must be a finite number"):
        http.default_policy()
