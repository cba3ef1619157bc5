"""Replay a real dataset into ferretd as a labeled stream, at a chosen rate, with a progress bar.

    python tools/replay.py                      # digits, as fast as possible, default endpoint
    python tools/replay.py --rate 200 --device cam-1 --config configs/ferretd.toml
    python tools/replay.py --endpoint tcp://127.0.0.1:5555 --stream digits-split

The default endpoint is the daemon's (same resolution as ferretd: --config, $RUNTIME_DIRECTORY,
...). Prints how many samples were sent and how many ZeroMQ could not deliver.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from ferretd.config import load_config
from tools.streams import load_stream
from transports.client import SamplePublisher


def replay(
    endpoint: str, stream: str, rate: float, limit: int | None, seed: int, device: str, progress: bool, passes: int = 1
) -> int:
    """Send ``passes`` passes over the stream's training part (each pass in a new seeded order)."""
    data = load_stream(stream, seed=seed)
    xs, ys = [data.x], [data.y]
    for extra in range(1, passes):
        again = load_stream(stream, seed=seed + extra)
        xs.append(again.x)
        ys.append(again.y)
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    n = min(limit or len(y_all), len(y_all))
    interval = 1.0 / rate if rate > 0 else 0.0
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="sample", desc=f"replay {stream}")
        except ImportError:
            bar = None
    with SamplePublisher(endpoint, device) as publisher:
        start = time.monotonic()
        for i in range(n):
            if interval:
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            publisher.publish(x_all[i], int(y_all[i]))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        print(f"sent {publisher.sent} of {n} samples from {stream!r} to {endpoint}; undelivered {publisher.unsent}")
        return 0 if publisher.unsent == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="ferretd config to take the ingest endpoint from")
    parser.add_argument("--endpoint", help="ingest endpoint (overrides --config)")
    parser.add_argument("--stream", default="digits", choices=["digits", "digits-split"])
    parser.add_argument("--rate", type=float, default=0.0, help="samples per second (0 = as fast as possible)")
    parser.add_argument("--limit", type=int, default=None, help="send at most this many samples")
    parser.add_argument("--seed", type=int, default=0, help="stream order")
    parser.add_argument("--passes", type=int, default=1, help="passes over the stream, each freshly shuffled")
    parser.add_argument("--device", default="replay", help="device id in the envelope")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    endpoint = args.endpoint or load_config(args.config).ingest.endpoint
    progress = not args.no_progress and sys.stderr.isatty()
    return replay(endpoint, args.stream, args.rate, args.limit, args.seed, args.device, progress, args.passes)


if __name__ == "__main__":
    sys.exit(main())
