"""Websockets behind uWSGI's own TLS (``https-socket``): they stay in their request and every write goes through uWSGI.

On a TLS socket the bytes on the wire are ciphertext, so ws4redis_uwsgi may
neither write frames to the descriptor itself (the fast path) nor take the
socket over after the handshake (detached websockets). Real uWSGI with a
certificate from trustme, a real websockets client over wss://.
"""

from __future__ import annotations

import ssl

import pytest
import trustme
from websockets.sync.client import connect

from tests.conftest import SITE_ENV
from tests.integration.helpers import RECV_TIMEOUT, SITE_ORIGIN, facility
from tests.servers import TIMING, UwsgiServer, free_port
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_server(redis_server, site_db, tmp_path):
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    port = free_port()
    server = UwsgiServer(
        SITE_ENV,
        cores=50,
        log_path=tmp_path / "uwsgi.log",
        extra=["--https-socket", f"127.0.0.1:{port},{cert_path},{key_path}"],
    ).start()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    authority.configure_trust(context)
    yield f"wss://127.0.0.1:{port}", context
    server.stop()


def test_broadcasts_and_echo_arrive_intact_over_tls(tls_server):
    url, context = tls_server
    fac = facility()
    with connect(
        f"{url}/ws/{fac}?subscribe-broadcast&publish-broadcast&echo",
        ssl=context,
        origin=SITE_ORIGIN,
        open_timeout=5 * TIMING,
    ) as ws:
        publisher = RedisPublisher(facility=fac, broadcast=True)
        sent = [f"message {i} " + "x" * (i * 97 % 3000) for i in range(200)]
        for text in sent:
            publisher.publish_message(text, expire=0)
        # Raw frames written to a TLS socket would break the session: every message
        # arriving whole and in order shows that each went through uWSGI's TLS.
        assert [ws.recv(timeout=RECV_TIMEOUT) for _ in sent] == sent
        ws.send("and back")
        assert ws.recv(timeout=RECV_TIMEOUT) == "and back"
