"""SnapshotSubscriber bounds what a publisher can make it buffer: an oversize announcement is dropped
by libzmq (MAXMSGSIZE) before it is allocated; the "latest" request path still works afterwards.

Real sockets on ipc:// in a tmp dir; the "daemon" is a bare PUB + ROUTER pair played by the test.
"""

from __future__ import annotations

import threading
import time

import zmq

from transports.client import SnapshotSubscriber
from transports.codec import pack
from transports.zmq_snapshots import TOPIC


def test_oversize_announcement_is_dropped_and_the_next_one_still_arrives(tmp_path):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    router = ctx.socket(zmq.ROUTER)
    pub.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.LINGER, 0)
    announce, latest = f"ipc://{tmp_path}/a.sock", f"ipc://{tmp_path}/l.sock"
    pub.bind(announce)
    router.bind(latest)
    sub = SnapshotSubscriber(announce, latest, context=ctx, max_announce_bytes=64 << 10)
    try:
        assert router.poll(2000), "the subscriber asks for the latest snapshot on start"
        ident, _, _ = router.recv_multipart()
        router.send_multipart([ident, b"", pack({"ok": True, "manifest": None})])
        time.sleep(0.3)  # slow joiner: let the subscription reach the PUB

        huge = {"seq": 99, "pad": b"x" * (2 << 20)}
        good = {"seq": 7, "file": "snapshot-00000007.onnx"}
        pub.send_multipart([TOPIC, pack(huge)])  # libzmq drops it, and with it this connection
        for _ in range(5):
            assert sub.poll(100) is None, "the oversize announcement was delivered"
        # libzmq does not reconnect after a protocol error, so announcements from that publisher are
        # gone; the Clone pattern's request path still brings the current snapshot.
        def answer_latest() -> None:
            if router.poll(5000):
                ident, _, _ = router.recv_multipart()
                router.send_multipart([ident, b"", pack({"ok": True, "manifest": good})])

        daemon = threading.Thread(target=answer_latest)
        daemon.start()
        sub.catch_up()  # blocking request on the DEALER
        daemon.join(10)
        manifest = sub.poll(0)
        assert manifest is not None and manifest["seq"] == 7
    finally:
        sub.close()
        pub.close()
        router.close()
        ctx.term()
