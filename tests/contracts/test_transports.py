"""Contract checks every transport passes, with real ZeroMQ sockets, on ipc:// and on tcp:// with
CURVE keys: a round trip through the real client, a frame over the socket's MAXMSGSIZE refused
(one at the limit handed over), malformed messages counted without harm, and a clean close.

Transports are discovered: every class in a ``transports`` module with ``start`` and ``stop``
is a server, and each needs a :class:`Contract` adapter here (``ADAPTERS``) that says how its
client talks to it; a new server without one fails ``test_every_transport_has_a_contract``.
"""

from __future__ import annotations

import importlib
import pkgutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import zmq

import transports
from ferretd.control.keygen import generate
from ferretd.messages import ControlReply, ControlRequest, Sample
from tests.integration.harness import wait_for
from transports.arrays import SampleDecoder, pack_array
from transports.client import SamplePublisher, SnapshotSubscriber
from transports.control_client import ControlClient
from transports.security import ClientCurve, CurveKeys, apply_client_curve, load_keypair, load_public_key
from transports.wire import Rejected, pack
from transports.zmq_control import ControlServer
from transports.zmq_ingest import IngestServer
from transports.zmq_ingest_process import DecodeSpec, IngestProcess
from transports.zmq_snapshots import SnapshotService

LIMIT = 4096
"""Every server here is built with this message limit (bytes)."""
CURVE_OVERHEAD = 33
"""On tcp with CURVE, MAXMSGSIZE counts the encrypted frame: libzmq's MESSAGE command adds
8 bytes of name, an 8-byte nonce, a 16-byte MAC and a flags byte to the payload."""


def discovered_servers() -> set[type]:
    found: set[type] = set()
    for info in pkgutil.iter_modules(transports.__path__, "transports."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            is_server = callable(getattr(obj, "start", None)) and callable(getattr(obj, "stop", None))
            if isinstance(obj, type) and obj.__module__ == module.__name__ and is_server:
                found.add(obj)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Setup:
    """One ZeroMQ context, endpoints of one kind, and CURVE keys when the kind is tcp."""

    context: zmq.SyncContext
    new_endpoint: Callable[[str], str]
    server_curve: CurveKeys | None = None
    client_curve: ClientCurve | None = None
    authenticator: Any = None
    authorized_keys_dir: str = ""
    """Where the clients' public keys lie (a server in its own process starts its own ZAP)."""
    overhead: int = 0
    """Bytes the wire adds to a frame before MAXMSGSIZE is checked (CURVE_OVERHEAD on tcp)."""

    def stop_authenticator(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None

    def peer(self, socket_type: int, endpoint: str) -> zmq.SyncSocket:
        """A raw client socket (authorized on tcp), for frames no real client would send."""
        sock = self.context.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        apply_client_curve(sock, self.client_curve, endpoint)
        sock.connect(endpoint)
        return sock


def padded(build: Callable[[str], bytes], size: int) -> bytes:
    """``build(padding)`` grown until it is exactly ``size`` bytes (msgpack headers grow too)."""
    pad = max(0, size - len(build("")))
    while len(frame := build("x" * pad)) != size:
        pad += 1 if len(frame) < size else -1
    return frame


class Contract:
    """How the checks drive one transport. ``message(marker, size)`` is a message whose last frame
    is ``size`` bytes; ``handed_over(marker)`` says whether the server passed it on."""

    server: ClassVar[type]
    socket_type: ClassVar[int]
    envelope: ClassVar[list[bytes]] = [b""]

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.threads_before = set(threading.enumerate())
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.stop()

    def threads(self) -> set[threading.Thread]:
        """Threads started since this contract began (the server's)."""
        return set(threading.enumerate()) - self.threads_before

    @property
    def limit(self) -> int:
        """The largest last frame the server accepts: its MAXMSGSIZE less what the wire adds."""
        return LIMIT - self.setup.overhead

    def message(self, marker: int, size: int) -> list[bytes]:
        raise NotImplementedError

    def handed_over(self, marker: int) -> bool:
        raise NotImplementedError

    def round_trip(self) -> None:
        raise NotImplementedError

    def malformed(self) -> list[list[bytes]]:
        raise NotImplementedError

    def malformed_counted(self) -> int:
        raise NotImplementedError

    def endpoint(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class IngestContract(Contract):
    server = IngestServer
    socket_type = zmq.PUSH
    envelope: ClassVar[list[bytes]] = []

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.address = setup.new_endpoint("ingest")
        self.decoder = SampleDecoder((4,), 3, LIMIT)
        self.frames: list[bytes] = []
        self.rejected: Counter[str] = Counter()
        self.ingest = IngestServer(
            setup.context, self.address, self.receive, max_message_bytes=LIMIT, curve=setup.server_curve
        )
        self.ingest.start()

    def receive(self, frame: bytes | None, received_at: float) -> None:
        if frame is None:
            self.rejected["multipart"] += 1
            return
        self.frames.append(frame)
        try:
            self.decoder.decode(frame)
        except Rejected as exc:
            self.rejected[exc.reason.value] += 1

    @property
    def limit(self) -> int:
        # past the decoder's limit (counted too_large), still received
        return self.ingest.guard_bytes - self.setup.overhead

    def endpoint(self) -> str:
        return self.address

    def message(self, marker: int, size: int) -> list[bytes]:
        head = b"M%d:" % marker
        return [head + b"x" * (size - len(head))]

    def handed_over(self, marker: int) -> bool:
        return any(f.startswith(b"M%d:" % marker) for f in self.frames)

    def round_trip(self) -> None:
        before = self.handed_count()
        features = np.arange(4, dtype=np.float32)
        with SamplePublisher(
            self.address, "dev", send_timeout_ms=10_000, context=self.setup.context, curve=self.setup.client_curve
        ) as publisher:
            assert publisher.publish(features, 2)
        wait_for(lambda: self.handed_count() > before, what="the sample")
        sample = self.sample_at(before)
        assert (sample.device, sample.label) == ("dev", 2)
        np.testing.assert_array_equal(sample.features, features)

    def handed_count(self) -> int:
        return len(self.frames)

    def sample_at(self, index: int) -> Sample:
        return self.decoder.decode(self.frames[index])

    def malformed(self) -> list[list[bytes]]:
        return [[b"\xc1garbage"], [b"two", b"frames"], [pack({"v": 1})]]

    def malformed_counted(self) -> int:
        return sum(self.rejected.values())

    def stop(self) -> None:
        self.ingest.stop()


class IngestProcessContract(IngestContract):
    """The ingest socket in its own process hands over decoded samples, not frames: ``limit`` is
    the decoder's limit (a frame past it is counted ``too_large`` in the child and never handed
    over; ZeroMQ's MAXMSGSIZE guard lies further out, as for the thread)."""

    server = IngestProcess

    def __init__(self, setup: Setup) -> None:
        Contract.__init__(self, setup)
        self.address = setup.new_endpoint("ingest")
        self.samples: list[Sample] = []
        self.rejected: Counter[str] = Counter()
        self.ingest = IngestProcess(
            self.address,
            self.samples.extend,
            lambda reason, detail: self.rejected.update([reason.value]),
            spec=DecodeSpec((4,), 3, LIMIT),
            curve=setup.server_curve,
            authorized_keys_dir=setup.authorized_keys_dir,
        )
        self.ingest.start()

    @property
    def limit(self) -> int:
        return LIMIT

    def message(self, marker: int, size: int) -> list[bytes]:
        def build(pad: str) -> bytes:
            features = pack_array(np.zeros(4, dtype=np.float32))
            return pack({"v": 1, "device": f"M{marker}", "seq": 0, "ts": 0.0, **features, "label": 0, "pad": pad})

        return [padded(build, size)]

    def handed_over(self, marker: int) -> bool:
        return any(s.device == f"M{marker}" for s in list(self.samples))

    def handed_count(self) -> int:
        return len(self.samples)

    def sample_at(self, index: int) -> Sample:
        return self.samples[index]


class ControlContract(Contract):
    server = ControlServer
    socket_type = zmq.DEALER

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.address = setup.new_endpoint("control")
        self.seen: list[ControlRequest] = []
        self.control = ControlServer(
            setup.context, self.address, self.answer, max_request_bytes=LIMIT, curve=setup.server_curve
        )
        self.control.start()

    def answer(self, request: ControlRequest) -> ControlReply:
        self.seen.append(request)
        return ControlReply(ok=True, result={"echo": request.args})

    def endpoint(self) -> str:
        return self.address

    def message(self, marker: int, size: int) -> list[bytes]:
        frame = padded(lambda pad: pack({"cmd": "mark", "args": {"m": marker, "pad": pad}}), size)
        return [b"", frame]

    def handed_over(self, marker: int) -> bool:
        return any(r.args.get("m") == marker for r in self.seen)

    def round_trip(self) -> None:
        with ControlClient(
            self.address, timeout_s=10, context=self.setup.context, curve=self.setup.client_curve
        ) as client:
            reply = client.call("echo", n=7, text="hi")
        assert reply.ok and reply.result == {"echo": {"n": 7, "text": "hi"}}

    def malformed(self) -> list[list[bytes]]:
        return [[b"", b"\xc1garbage"], [b"", pack([1, 2])], [b"", pack({"cmd": 5})]]

    def malformed_counted(self) -> int:
        return self.control.errors

    def stop(self) -> None:
        self.control.stop()


class SnapshotContract(Contract):
    server = SnapshotService
    socket_type = zmq.DEALER

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.announce_address = setup.new_endpoint("announce")
        self.address = setup.new_endpoint("latest")
        self.manifests = {1: {"seq": 1, "file": "a.onnx"}}
        self.fetched: list[int] = []
        self.service = SnapshotService(
            setup.context,
            self.announce_address,
            self.address,
            lambda: self.manifests[max(self.manifests)],
            self.fetch,
            max_request_bytes=LIMIT,
            curve=setup.server_curve,
        )
        self.service.start()

    def fetch(self, seq: int) -> tuple[dict[str, Any], bytes] | None:
        self.fetched.append(seq)
        return (self.manifests[seq], b"onnx-%d" % seq) if seq in self.manifests else None

    def endpoint(self) -> str:
        return self.address

    def message(self, marker: int, size: int) -> list[bytes]:
        return [b"", padded(lambda pad: pack({"op": "fetch", "seq": marker, "pad": pad}), size)]

    def handed_over(self, marker: int) -> bool:
        return marker in self.fetched

    def round_trip(self) -> None:
        with SnapshotSubscriber(
            self.announce_address,
            self.address,
            request_timeout_ms=10_000,
            context=self.setup.context,
            curve=self.setup.client_curve,
        ) as subscriber:
            latest = max(self.manifests)
            first = subscriber.poll(10_000)
            assert first is not None and first["seq"] == latest, "the latest manifest on start"
            newer = {"seq": latest + 1, "file": "b.onnx"}
            self.manifests[latest + 1] = newer

            def announced() -> dict[str, Any] | None:
                self.service.announce(newer)  # again until the subscription has reached the PUB
                return subscriber.poll(200)

            assert wait_for(announced, what="the announcement") == newer
            assert subscriber.fetch(latest + 1) == (newer, b"onnx-%d" % (latest + 1))

    def malformed(self) -> list[list[bytes]]:
        return [[b"", b"\xc1garbage"], [b"", pack({"op": "fetch", "seq": -1})], [b"", pack({"op": "nope"})]]

    def malformed_counted(self) -> int:
        return self.service.errors

    def stop(self) -> None:
        self.service.stop()


ADAPTERS: dict[type, type[Contract]] = {
    c.server: c for c in (IngestContract, IngestProcessContract, ControlContract, SnapshotContract)
}
KINDS = ["ipc", "tcp-curve"]


def test_every_transport_has_a_contract() -> None:
    servers = discovered_servers()
    assert {IngestServer, ControlServer, SnapshotService} <= servers, "discovery must find the known servers"
    missing = sorted(s.__name__ for s in servers - set(ADAPTERS))
    assert not missing, f"add a Contract adapter for {missing}"


@pytest.fixture(params=KINDS)
def setup(request: pytest.FixtureRequest, ipc_dir: str, tmp_path: Path) -> Iterator[Setup]:
    context: zmq.SyncContext = zmq.Context()
    auth = None
    if request.param == "ipc":
        made = Setup(context, lambda name: f"ipc://{ipc_dir}/{name}.sock")
    else:
        server_public, server_secret = generate(tmp_path / "server", "server")
        _client_public, client_secret = generate(tmp_path / "clients", "device")
        from transports.security import start_authenticator

        auth = start_authenticator(context, tmp_path / "clients")
        made = Setup(
            context,
            lambda name: f"tcp://127.0.0.1:{free_port()}",
            server_curve=load_keypair(server_secret),
            client_curve=ClientCurve(keys=load_keypair(client_secret), server_public=load_public_key(server_public)),
            authenticator=auth,
            authorized_keys_dir=str(tmp_path / "clients"),
            overhead=CURVE_OVERHEAD,
        )
    yield made
    made.stop_authenticator()
    context.destroy(linger=0)


@pytest.fixture(params=sorted(ADAPTERS, key=lambda s: s.__name__), ids=lambda s: s.__name__)
def contract(request: pytest.FixtureRequest, setup: Setup) -> Iterator[Contract]:
    made = ADAPTERS[request.param](setup)
    yield made
    made.close()


def arrives(condition: Callable[[], bool], seconds: float = 0.5) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def send_until_handed_over(contract: Contract, peer: zmq.SyncSocket, marker: int) -> None:
    """Send the at-limit message until it arrives (a peer dropped for an oversize frame reconnects)."""

    def sent_and_arrived() -> bool:
        peer.send_multipart(contract.message(marker, contract.limit))
        return arrives(lambda: contract.handed_over(marker))

    wait_for(sent_and_arrived, timeout=30, interval=0, what=f"message {marker} at the limit")


def test_round_trip_through_the_real_client(contract: Contract) -> None:
    contract.round_trip()
    contract.round_trip()


def test_a_frame_over_maxmsgsize_is_refused_one_at_the_limit_is_not(contract: Contract, setup: Setup) -> None:
    peer = setup.peer(contract.socket_type, contract.endpoint())
    try:
        send_until_handed_over(contract, peer, marker=1)
        peer.send_multipart(contract.message(2, contract.limit + 1))
        send_until_handed_over(contract, peer, marker=3)  # sent after 2 by the same peer
        assert not contract.handed_over(2), "a frame over MAXMSGSIZE reached the handler"
    finally:
        peer.close(linger=0)
    contract.round_trip()


def test_malformed_messages_are_counted_and_harmless(contract: Contract, setup: Setup) -> None:
    peer = setup.peer(contract.socket_type, contract.endpoint())
    try:
        for frames in contract.malformed():
            peer.send_multipart(frames)
        wait_for(lambda: contract.malformed_counted() == len(contract.malformed()), what="every malformed message")
    finally:
        peer.close(linger=0)
    contract.round_trip()
    assert contract.malformed_counted() == len(contract.malformed())


def test_clean_close(contract: Contract, setup: Setup) -> None:
    """stop() ends the server's thread and closes its sockets: the context then terminates."""
    contract.round_trip()
    threads = contract.threads()
    assert threads, "the server runs its own thread"
    contract.close()
    assert not any(t.is_alive() for t in threads)
    setup.stop_authenticator()
    terminated = threading.Thread(target=setup.context.term, daemon=True)
    terminated.start()
    terminated.join(10)
    assert not terminated.is_alive(), "a socket was left open: the context cannot terminate"
