"""The ingest socket in its own process: receive, decode and validate samples away from the daemon's GIL.

Role: the alternative to :class:`transports.zmq_ingest.IngestServer` (``[ingest] decode_in =
"process"``). Under overload the ingest thread decoded every arrival under the daemon's GIL
(about 100 us each: msgpack, the array checks, the copy), and that thread's hand-offs with the
training threads left both short of the GIL while the box had idle cores (docs/planner.md §4c).
Here a child process (``python -m transports.zmq_ingest_process``: zmq, msgpack, numpy and
structlog, never torch) owns the PULL socket and the :class:`~transports.arrays.SampleDecoder`;
the daemon gets decoded samples in batches over a private pipe and only queues them.

Protocol, child to parent (pipe passed as an inherited descriptor, so nothing the child prints can
corrupt it): first one *hello* message (``{"ok": true}`` once bound, or ``{"ok": false, "error"}``),
then batches ``<II`` (header bytes, feature bytes) + msgpack header
``{"f": frames, "e": handler errors, "s": [[device, seq, ts, label, received_at], ...],
"r": [[reason, detail], ...]}`` + the samples' float32 features back to back. Parent to child:
the config (one length-prefixed msgpack map on stdin, keys included, never on the command line),
then end-of-file on stdin means stop: the child stops receiving, sends what it decoded, exits.

Decisions:

* **Counting.** A frame counts as received when the daemon queues or rejects it, as with the
  thread. Frames still in the child (at most one batch) when it is killed were never counted,
  like frames in ZeroMQ's buffer; ``stop`` lets the child finish its batch and say how many frames
  it took (``child_frames``) and drains the pipe, so a clean stop loses none.
* **A lost child is restarted** (after 1 s, then doubling to 30 s), logged once per loss; the
  daemon keeps running. A batch that fails the parent's checks is treated as a lost child.
* **Stopped by its parent only**: it ignores SIGTERM and SIGINT (systemd signals the whole unit
  on stop; the daemon then closes the child's stdin and drains it). If the daemon dies, the
  child sees end of file on stdin, or a broken pipe, and exits.
* **Same limits as the thread**: ``MAXMSGSIZE`` with the same guard slack, ``RCVHWM``, CURVE with
  the child's own ZAP authenticator reading the same authorized-keys directory.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import msgpack
import structlog
import zmq

from ferretd.messages import RejectReason, Sample
from transports.arrays import SampleDecoder, rows_from_bytes
from transports.security import CurveKeys, bind_server, start_authenticator
from transports.wire import Rejected
from transports.zmq_ingest import GUARD_SLACK_BYTES

log = structlog.get_logger(__name__)

SamplesHandler = Callable[[list[Sample]], None]
RejectHandler = Callable[[RejectReason, str], None]

_HEAD = struct.Struct("<II")
MAX_HEADER_BYTES = 64 << 20
RESTART_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
COLLECT_S = 0.002
"""After the first frame of a burst, let more gather this long: one wake-up of each process and
one pipe write per burst, not per frame (per-frame hand-offs cost the daemon ~70 us a sample)."""


@dataclass(frozen=True)
class DecodeSpec:
    """What the child validates against (the decoder's arguments)."""

    input_shape: tuple[int, ...]
    num_classes: int
    max_message_bytes: int


class IngestStartError(RuntimeError):
    """The ingest process could not bind its socket (or did not start)."""


class IngestProcess:
    """Owns the ingest child; ``start()`` spawns the thread that queues its batches, ``stop()`` drains it."""

    def __init__(
        self,
        endpoint: str,
        on_samples: SamplesHandler,
        on_reject: RejectHandler,
        *,
        spec: DecodeSpec,
        rcvhwm: int = 1000,
        batch: int = 256,
        curve: CurveKeys | None = None,
        authorized_keys_dir: str = "",
        log_level: str = "info",
        log_format: str = "json",
        start_timeout_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self.guard_bytes = spec.max_message_bytes + GUARD_SLACK_BYTES
        self._on_samples = on_samples
        self._on_reject = on_reject
        self._spec = spec
        self._settings: dict[str, Any] = {
            "endpoint": endpoint,
            "guard_bytes": self.guard_bytes,
            "rcvhwm": int(rcvhwm),
            "batch": int(batch),
            "input_shape": list(spec.input_shape),
            "num_classes": spec.num_classes,
            "max_message_bytes": spec.max_message_bytes,
            "curve": None if curve is None else [curve.secret, curve.public],
            "authorized_keys_dir": authorized_keys_dir,
            "log_level": log_level,
            "log_format": log_format,
        }
        self._start_timeout_s = start_timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.frames = 0
        self.handler_errors = 0
        self.restarts = 0
        self.child_frames: int | None = None
        """Frames the last child took off its socket, as it reported on a clean stop (None before)."""
        self._child, self._pipe = self._spawn()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def _spawn(self) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        read_fd, write_fd = os.pipe()
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "transports.zmq_ingest_process", str(write_fd)],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                close_fds=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        pipe = open(read_fd, "rb")  # noqa: SIM115 - owned by this object, closed in _retire
        assert child.stdin is not None
        config = msgpack.packb(self._settings, use_bin_type=True)
        try:
            child.stdin.write(_HEAD.pack(len(config), 0) + config)
            child.stdin.flush()
            hello = self._hello(pipe)
        except (OSError, ValueError) as exc:
            self._retire(child, pipe)
            raise IngestStartError(f"ingest process did not start: {exc}") from None
        if not hello.get("ok"):
            self._retire(child, pipe)
            raise IngestStartError(f"ingest bind failed on {self.endpoint}: {hello.get('error')}")
        return child, pipe

    def _hello(self, pipe: IO[bytes]) -> dict[str, Any]:
        ready, _, _ = select.select([pipe], [], [], self._start_timeout_s)
        if not ready:
            raise ValueError(f"no answer in {self._start_timeout_s:.0f} s")
        head = pipe.read(_HEAD.size)
        if len(head) != _HEAD.size:
            raise ValueError("the process exited before binding")
        size, _ = _HEAD.unpack(head)
        hello = msgpack.unpackb(pipe.read(min(size, 1 << 20)), raw=False)
        if not isinstance(hello, dict):
            raise ValueError("malformed hello")
        return hello

    @staticmethod
    def _retire(child: subprocess.Popen[bytes], pipe: IO[bytes], timeout: float = 5.0) -> int | None:
        _close_stdin(child)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
        pipe.close()
        return code

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child; every sample it decoded is queued before this returns (a clean stop loses none)."""
        self._stop.set()
        with self._lock:
            child = self._child
        _close_stdin(child)  # end of file: the child sends what it holds and exits
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            if not self._pipe.closed:
                self._retire(self._child, self._pipe, timeout)

    @property
    def pid(self) -> int:
        return self._child.pid

    # ------------------------------------------------------------------ the parent's thread

    def _run(self) -> None:
        failures = 0
        while True:
            with self._lock:
                pipe = self._pipe
            try:
                while self._deliver(pipe):
                    failures = 0
            except Exception as exc:  # a batch that fails the checks: the child is treated as lost
                log.error("ingest_process_broken", error=f"{type(exc).__name__}: {exc}"[:200])
            if self._stop.is_set():
                with self._lock:
                    self._retire(self._child, self._pipe)
                return
            with self._lock:
                code = self._retire(self._child, self._pipe, timeout=1.0)
            delay = RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)]
            log.error("ingest_process_lost", exit_code=code, restart_in_s=delay)
            failures += 1
            if self._stop.wait(delay) or not self._respawn():
                return

    def _respawn(self) -> bool:
        while not self._stop.is_set():
            try:
                child, pipe = self._spawn()
            except IngestStartError as exc:
                log.error("ingest_process_restart_failed", error=str(exc)[:200])
                if self._stop.wait(RESTART_DELAYS_S[-1]):
                    return False
                continue
            with self._lock:
                self._child, self._pipe = child, pipe
                self.restarts += 1
            log.info("ingest_process_restarted", pid=child.pid, restarts=self.restarts)
            return True
        return False

    def _deliver(self, pipe: IO[bytes]) -> bool:
        """Queue one batch; False at end of file."""
        head = pipe.read(_HEAD.size)
        if not head:
            return False
        if len(head) != _HEAD.size:
            raise ValueError("truncated batch head")
        header_bytes, feature_bytes = _HEAD.unpack(head)
        if header_bytes > MAX_HEADER_BYTES or feature_bytes > MAX_HEADER_BYTES:
            raise ValueError(f"batch of {header_bytes} + {feature_bytes} bytes")
        header = msgpack.unpackb(_read_exactly(pipe, header_bytes), raw=False)
        blob = _read_exactly(pipe, feature_bytes)
        if "bye" in header:  # the child's last word on a clean stop: how many frames it took in all
            self.child_frames = int(header["bye"])
            return True
        samples, rejects = header["s"], header["r"]
        features = rows_from_bytes(blob, len(samples), self._spec.input_shape)
        self.frames += int(header["f"])
        self.handler_errors += int(header["e"])
        if samples:
            self._on_samples(
                [
                    Sample(device=device, seq=seq, timestamp=ts, features=row, label=label, received_at=at)
                    for row, (device, seq, ts, label, at) in zip(features, samples, strict=True)
                ]
            )
        for reason, detail in rejects:
            self._on_reject(RejectReason(reason), detail)
        return True


def _close_stdin(child: subprocess.Popen[bytes]) -> None:
    if child.stdin is not None and not child.stdin.closed:
        with contextlib.suppress(OSError):
            child.stdin.close()


def _read_exactly(pipe: IO[bytes], n: int) -> bytes:
    data = pipe.read(n) if n else b""
    if len(data) != n:
        raise ValueError(f"truncated batch: {len(data)} of {n} bytes")
    return data


# --------------------------------------------------------------------------- the child process


class _Batch:
    """Decoded samples and rejects waiting to go to the parent."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.errors = 0
        self.samples: list[list[Any]] = []
        self.features: list[bytes] = []
        self.rejects: list[list[str]] = []

    def add(self, decoder: SampleDecoder, frame: bytes | None, received_at: float) -> None:
        self.frames += 1
        if frame is None:
            self.rejects.append([RejectReason.MALFORMED.value, "multipart message"])
            return
        try:
            s = decoder.decode(frame, received_at)
        except Rejected as exc:
            self.rejects.append([exc.reason.value, exc.detail])
            return
        self.samples.append([s.device, s.seq, s.timestamp, s.label, s.received_at])
        self.features.append(s.features.tobytes())

    def send(self, out: IO[bytes]) -> None:
        header = msgpack.packb(
            {"f": self.frames, "e": self.errors, "s": self.samples, "r": self.rejects}, use_bin_type=True
        )
        blob = b"".join(self.features)
        out.write(_HEAD.pack(len(header), len(blob)))
        out.write(header)
        out.write(blob)
        out.flush()
        self.reset()


def _serve(settings: dict[str, Any], out: IO[bytes]) -> None:
    context: zmq.SyncContext = zmq.Context(1)
    auth = None
    sock = context.socket(zmq.PULL)
    try:
        curve = settings["curve"]
        keys = None if curve is None else CurveKeys(secret=curve[0], public=curve[1])
        if keys is not None and settings["endpoint"].startswith("tcp://"):
            auth = start_authenticator(context, settings["authorized_keys_dir"])
        bind_server(
            sock, settings["endpoint"], max_message_bytes=settings["guard_bytes"], rcvhwm=settings["rcvhwm"], curve=keys
        )
    except Exception as exc:
        _send_message(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
        sock.close(linger=0)
        if auth is not None:
            auth.stop()
        context.term()
        return
    _send_message(out, {"ok": True, "pid": os.getpid()})
    decoder = SampleDecoder(settings["input_shape"], settings["num_classes"], settings["max_message_bytes"])
    batch_size = int(settings["batch"])
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    batch = _Batch()
    taken = 0
    stopping = False
    while not stopping:
        events = dict(poller.poll(100))
        if sys.stdin.fileno() in events:
            stopping = not os.read(sys.stdin.fileno(), 4096)
        if sock not in events:
            continue
        time.sleep(COLLECT_S)
        for _ in range(batch_size):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                batch.add(decoder, parts[0] if len(parts) == 1 else None, time.monotonic())
            except Exception as exc:  # a decoder bug must not kill ingestion; counted and logged
                batch.errors += 1
                log.warning("ingest_handler_failed", error=f"{type(exc).__name__}: {exc}"[:200])
        taken += batch.frames
        if batch.frames or batch.errors:
            batch.send(out)
    _send_message(out, {"bye": taken})
    sock.close(linger=0)
    if auth is not None:
        auth.stop()
    context.term()


def _send_message(out: IO[bytes], message: dict[str, Any]) -> None:
    body = msgpack.packb(message, use_bin_type=True)
    out.write(_HEAD.pack(len(body), 0) + body)
    out.flush()


def _read_settings(fd: int) -> dict[str, Any]:
    """Read exactly the settings message from ``fd`` unbuffered (what follows on stdin is its end of file)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise ValueError("stdin closed before the settings arrived")
            data += chunk
        return data

    size, _ = _HEAD.unpack(exactly(_HEAD.size))
    settings = msgpack.unpackb(exactly(size), raw=False)
    if not isinstance(settings, dict):
        raise ValueError("settings must be a map")
    return settings


def child_main(argv: Sequence[str]) -> int:
    from ferretd.logs import configure_logging

    # Its lifetime is the daemon's stdin pipe: systemd's SIGTERM to the whole unit, or a Ctrl-C to
    # the terminal's process group, must not cut it short while the daemon drains it on stop.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = open(int(argv[0]), "wb")  # noqa: SIM115 - the process's lifetime
    settings = _read_settings(sys.stdin.fileno())
    configure_logging(settings["log_level"], fmt=settings["log_format"])
    try:
        _serve(settings, out)
    except BrokenPipeError:  # the daemon is gone: nothing left to deliver to
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
