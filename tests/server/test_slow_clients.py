"""Slow and greedy clients against the real uvicorn server on loopback (issue 18, item 5),
with bounded loops and short timeouts: headers trickled byte by byte, more connections than
the cap, an upload that stalls, a full queue or a missing token told before the upload is
sent, and a chunked upload over the limit whose connection ends with its 413."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

from foleyrt.pipeline.pipeline import FoleyPipeline
from tests.server.conftest import MakeSettings
from tests.server.support import SlowPipeline, live_server, submit_text, wait_for

TIMEOUT_S = 0.5


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    return sock


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one response, read until the server closes or sends it whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), body


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def test_trickled_headers_are_cut_off(make_settings: MakeSettings,
                                      tiny_pipeline: FoleyPipeline) -> None:
    settings = make_settings(client_timeout_s=TIMEOUT_S)
    with live_server(settings, tiny_pipeline) as url:
        slow = [_connect(url) for _ in range(5)]
        for sock in slow:
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.monotonic()
        assert all(_closed_within(sock, 3) for sock in slow)
        assert time.monotonic() - started < 3
        for sock in slow:
            sock.close()


def test_connections_over_the_cap_get_503_until_slots_free(
    make_settings: MakeSettings, tiny_pipeline: FoleyPipeline
) -> None:
    settings = make_settings(client_timeout_s=TIMEOUT_S, max_connections=4)
    request = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with live_server(settings, tiny_pipeline) as url:
        held = [_connect(url) for _ in range(4)]
        for sock in held:
            sock.sendall(b"GET /v1/health HTTP/1.1\r\n")
        time.sleep(0.1)
        with _connect(url) as extra:
            extra.sendall(request)
            assert _response(extra)[0] == 503
        assert all(_closed_within(sock, 3) for sock in held)  # the header deadline frees them
        with _connect(url) as again:
            again.sendall(request)
            assert _response(again)[0] == 200
        for sock in held:
            sock.close()


def test_a_stalled_upload_is_408(make_settings: MakeSettings,
                                 tiny_pipeline: FoleyPipeline) -> None:
    settings = make_settings(client_timeout_s=TIMEOUT_S)
    with live_server(settings, tiny_pipeline) as url, _connect(url) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
        started = time.monotonic()
        status, body = _response(sock)
        assert status == 408 and "stalled" in json.loads(body)["detail"]
        assert time.monotonic() - started < 3


def test_a_full_queue_is_told_before_the_upload(make_settings: MakeSettings,
                                                tiny_pipeline: FoleyPipeline) -> None:
    import httpx

    settings = make_settings(max_queue=1)
    with live_server(settings, SlowPipeline(tiny_pipeline, 0.3)) as url, \
            httpx.Client(base_url=url) as client:
        running = submit_text(client).json()["id"]
        wait_for(client, running, {"running"})
        queued = submit_text(client).json()["id"]
        with _connect(url) as sock:  # announces 50 MB, sends none of it
            sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Length: 50000000\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
            status, body = _response(sock)
        assert status == 429 and "queue is full" in json.loads(body)["detail"]
        for job_id in (queued, running):
            client.delete(f"/v1/jobs/{job_id}")
            wait_for(client, job_id)


def test_a_missing_token_is_told_before_the_upload(make_settings: MakeSettings,
                                                   tiny_pipeline: FoleyPipeline) -> None:
    settings = make_settings(api_token="s3cret")
    with live_server(settings, tiny_pipeline) as url, _connect(url) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Length: 50000000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        status, body = _response(sock)
        assert status == 401 and "API token" in json.loads(body)["detail"]
        assert _closed_within(sock, 3)


def test_a_chunked_upload_over_the_limit_ends_its_connection(
    make_settings: MakeSettings, tiny_pipeline: FoleyPipeline
) -> None:
    """Without `Connection: close` on the 413, the server read on (and discarded) whatever
    the client kept sending, holding one of the connections."""
    settings = make_settings(max_upload_bytes=256 * 1024)
    chunk = b"%x\r\n%s\r\n" % (65536, b"\0" * 65536)
    with live_server(settings, tiny_pipeline) as url, _connect(url) as sock:
        part = (b'--b\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n'
                b"Content-Type: video/mp4\r\n\r\n")
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Transfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
                     b"%x\r\n%s\r\n" % (len(part), part))
        try:
            for _ in range(64):  # 4 MiB, far past the limit: the answer comes on the way
                sock.sendall(chunk)
        except OSError:  # the server closed while we sent
            pass
        status, body = _response(sock)
        assert status == 413 and "upload too large" in json.loads(body)["detail"]
        assert _closed_within(sock, 3)
