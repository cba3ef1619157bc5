"""ferret-infer's loader thread: find each newer snapshot, check it, and offer it to the slot.

Clone pattern: subscribe to announcements first, ask the daemon for the latest manifest, then
load each newer one. Nothing that arrives can stop this thread:

* a manifest is validated field by field (``SnapshotManifest.from_dict``); one that does not
  validate is counted as ``manifest_invalid`` and dropped;
* the model bytes come from the snapshot directory only when the manifest names the file the
  daemon would have written for that sequence (``model-<seq>.onnx``), read confined and bounded
  (``read_confined``); otherwise they are fetched over the daemon's ROUTER and checked against the
  announced size and sha256 (``transport_unavailable`` / ``transport_corrupt`` when the fetch
  fails or the bytes differ: a bad transport, as opposed to a bad snapshot, which is
  ``checksum`` for a file on disk, ``unloadable`` or ``warmup``);
* after any refusal the subscriber's "newest seen" goes back to the serving model, so a rogue
  announcement with seq 2**62 cannot make later real snapshots look old; the same refused
  snapshot (seq, sha256) is not tried again; when nothing is served yet and the newest snapshot
  will not load, the few before it are fetched and tried, newest first;
* an unexpected exception is logged (rate-limited), counted as ``loader_error``, and the loop
  starts over after a pause.

With no daemon answering at start, the newest snapshot on disk that *loads* is served (the store
is opened read-only, so a read-only state directory with stale temp files works). Log and error
texts name the snapshot and the reason, never what was found outside the snapshot directory.
Never imports torch.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import structlog
import zmq

from ferretd.config import Config
from ferretd.inference.session import ModelSlot, SnapshotRejected
from ferretd.logs import RateLimitedLog, RoutineLog
from ferretd.messages import SnapshotManifest
from ferretd.snapshot.manifest import model_name, read_confined, sha256_hex
from ferretd.snapshot.store import SnapshotStore
from transports.client import SnapshotSubscriber

log = structlog.get_logger("ferret-infer")
routine_log = RoutineLog(log)  # routine swaps: one info line per 5 min, the rest at debug

CATCH_UP_S = 5.0
RESTART_PAUSE_S = 1.0
REMEMBER_REFUSED = 256
FETCH_OLDER = 8  # how many older snapshots to fetch when nothing is served and the newest will not load

TRANSPORT_REASONS = frozenset({"transport_unavailable", "transport_corrupt"})


class SnapshotLoader:
    def __init__(
        self,
        config: Config,
        context: zmq.Context,
        slot: ModelSlot,
        stop_event: threading.Event,
        curve: Any = None,
    ) -> None:
        self.config = config
        self.context = context
        self.slot = slot
        self.stop_event = stop_event
        self.curve = curve
        self.errors = 0
        self._log = RateLimitedLog(log)
        self._refused: OrderedDict[tuple[int, str], None] = OrderedDict()

    # ------------------------------------------------------------------ thread body

    def run(self) -> None:
        """The thread body: never returns before ``stop_event``, whatever arrives."""
        first = True
        while not self.stop_event.is_set():
            try:
                self._session(first)
            except Exception as exc:
                self.errors += 1
                self.slot.reject("loader_error", f"loader error: {type(exc).__name__}")
                self._log.warning("loader_error", "snapshot_loader_error", error=f"{type(exc).__name__}: {exc}"[:200])
                self.stop_event.wait(RESTART_PAUSE_S)
            first = False

    def _session(self, first: bool) -> None:
        cfg = self.config
        sub = SnapshotSubscriber(
            cfg.snapshot.announce_endpoint, cfg.snapshot.latest_endpoint, context=self.context, curve=self.curve
        )
        try:
            sub.last_seq = self._serving_seq()
            sub.catch_up()
            manifest = sub.poll(0)
            if manifest is not None:
                self.install(manifest, sub)
            if first and self.slot.current is None:
                self.load_from_disk()
            next_catch_up = time.monotonic() + CATCH_UP_S
            while not self.stop_event.is_set():
                manifest = sub.poll(200)
                if manifest is not None:
                    self.install(manifest, sub)
                elif time.monotonic() >= next_catch_up:
                    sub.catch_up()  # announcements sent while the daemon restarted are not replayed
                    next_catch_up = time.monotonic() + CATCH_UP_S
        finally:
            sub.close()

    # ------------------------------------------------------------------ one announcement

    def install(self, raw: Any, sub: SnapshotSubscriber) -> bool:
        """Validate, get the bytes, offer to the slot. True when the model was swapped in."""
        try:
            try:
                manifest = SnapshotManifest.from_dict(raw)
            except (TypeError, ValueError) as exc:
                self._refuse("manifest_invalid", str(exc), _seq_of(raw))
                return False
            key = (manifest.seq, manifest.sha256)
            if key in self._refused:
                return False
            data = self._read_local(manifest)
            if data is None:
                data = self._fetch(manifest, sub)
                if data is None:
                    return False
            try:
                swapped = self.slot.offer(manifest, data)
            except SnapshotRejected as exc:
                self._remember(key)
                self._log.warning(
                    f"rejected:{exc.reason}",
                    "snapshot_rejected",
                    cause="snapshot",
                    reason=exc.reason,
                    seq=manifest.seq,
                    error=str(exc),
                    serving=self._serving_seq(),
                )
                if self.slot.current is None:
                    return self._fetch_older(manifest.seq, sub)
                return False
            if swapped:
                routine_log.info("model_swapped", seq=manifest.seq, online_accuracy=manifest.online_accuracy)
            return swapped
        finally:
            sub.last_seq = self._serving_seq()

    def _fetch(self, manifest: SnapshotManifest, sub: SnapshotSubscriber) -> bytes | None:
        try:
            fetched = sub.fetch(manifest.seq)
        except (KeyError, TypeError, ValueError):  # a reply that is not shaped like one
            fetched = None
        data = fetched[1] if isinstance(fetched, tuple) and len(fetched) == 2 else None
        if not isinstance(data, bytes):
            self._refuse("transport_unavailable", "no snapshot bytes from the daemon", manifest.seq)
            return None
        if len(data) != manifest.size_bytes:
            self._refuse("transport_corrupt", "fetched bytes differ in size from the announcement", manifest.seq)
            return None
        if sha256_hex(data) != manifest.sha256:
            self._refuse("transport_corrupt", "fetched bytes differ in sha256 from the announcement", manifest.seq)
            return None
        return data

    def _fetch_older(self, seq: int, sub: SnapshotSubscriber) -> bool:
        """Nothing served and the newest will not load: try the few before it (the daemon keeps
        ``[snapshot] keep`` of them), newest first. True when one was swapped in."""
        for older in range(seq - 1, max(0, seq - 1 - FETCH_OLDER), -1):
            try:
                fetched = sub.fetch(older)
                manifest = SnapshotManifest.from_dict(fetched[0]) if fetched else None
            except (KeyError, TypeError, ValueError):
                continue
            if manifest is None or manifest.seq != older or not isinstance(fetched[1], bytes):
                continue
            try:
                if self.slot.offer(manifest, fetched[1]):
                    log.info("model_loaded_older", seq=older, newest_refused=seq)
                    return True
            except SnapshotRejected:
                continue
        return False

    def _read_local(self, manifest: SnapshotManifest) -> bytes | None:
        """The file from our own snapshot directory, only under the name the daemon gives it."""
        if manifest.file != model_name(manifest.seq):
            return None
        try:
            return read_confined(Path(self.config.inference.snapshot_dir), manifest.file, manifest.size_bytes)
        except (OSError, ValueError):
            return None  # not there (another box) or not the announced bytes: fetch instead

    def _refuse(self, reason: str, error: str, seq: int | None) -> None:
        self.slot.reject(reason, error)
        cause = "transport" if reason in TRANSPORT_REASONS else "snapshot"
        self._log.warning(f"rejected:{reason}", "snapshot_rejected", cause=cause, reason=reason, seq=seq, error=error)

    def _remember(self, key: tuple[int, str]) -> None:
        self._refused[key] = None
        while len(self._refused) > REMEMBER_REFUSED:
            self._refused.popitem(last=False)

    # ------------------------------------------------------------------ disk fallback

    def load_from_disk(self) -> bool:
        """Serve the newest snapshot on disk that loads (older ones are tried in turn)."""
        directory = Path(self.config.inference.snapshot_dir)
        if not directory.is_dir():
            return False
        store = SnapshotStore(directory, keep=1 << 30, writable=False)
        for manifest, data in store.valid_newest_first():
            try:
                if self.slot.offer(manifest, data):
                    log.info("model_loaded_from_disk", seq=manifest.seq)
                    return True
            except SnapshotRejected as exc:
                self._log.warning(
                    f"disk:{exc.reason}", "disk_snapshot_unusable", seq=manifest.seq, reason=exc.reason, error=str(exc)
                )
        return False

    def _serving_seq(self) -> int:
        current = self.slot.current
        return current.seq if current is not None else -1


def _seq_of(raw: Any) -> int | None:
    seq = raw.get("seq") if isinstance(raw, dict) else None
    return seq if type(seq) is int else None
