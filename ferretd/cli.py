"""The ``ferretd`` command line: validate a config, print a plan, or run the daemon.

    ferretd [--config FILE]                 run (embedded defaults without a file)
    ferretd --check-config --config FILE    validate only: exit 0, or 2 with one line
    ferretd --plan-only [--json]            print the plan the config leads to and exit

``--check-config`` also builds the model (so a custom factory that does not import fails here,
not at every start) and checks that the newest checkpoint loads safely and fits that model.

Exit codes: 0 clean stop, 1 failure while running, 2 bad configuration (or a memory budget
below the smallest feasible plan, or an unsafe runtime directory), 3 another ferretd holds the
runtime directory or a socket could not be bound, 4 stopped but the final checkpoint could not
be written. ``python -m ferretd`` is the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import structlog
import zmq

from ferretd import __version__
from ferretd.config import Config, ConfigError, load_config
from ferretd.daemon import EXIT_CONFIG, EXIT_OK, EXIT_SOCKET, Daemon
from ferretd.instance import InstanceError
from ferretd.learners import plan_from_config
from ferretd.logs import configure_logging, journal_stderr

log = structlog.get_logger("ferretd")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ferretd",
        description="Edge streaming learner daemon (Ferret method).",
        epilog="exit codes: 0 clean stop, 1 failure, 2 configuration error or unsafe runtime directory, "
        "3 another ferretd holds the runtime directory (or a socket could not be bound), "
        "4 stopped but the final checkpoint failed",
    )
    parser.add_argument("--config", help="TOML config file; embedded defaults without it")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument("--plan-only", action="store_true", help="print the plan for the config and exit")
    parser.add_argument("--json", action="store_true", help="with --plan-only: print the plan as JSON")
    parser.add_argument("--version", action="version", version=f"ferretd {__version__}")
    args = parser.parse_args(argv)
    journal_stderr()  # under systemd, the one-line errors below reach the journal as priority err
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"ferretd: {exc}\n")
        return EXIT_CONFIG
    if args.check_config:
        configure_logging("error")
        problem = check_model_and_checkpoint(config)
        if problem is not None:
            sys.stderr.write(f"ferretd: {problem}\n")
            return EXIT_CONFIG
        sys.stdout.write(f"config ok: {args.config or '(embedded defaults)'}\n")
        return EXIT_OK
    if args.plan_only:
        configure_logging("warning")
        try:
            plan = plan_from_config(config)
        except (ConfigError, ValueError) as exc:
            sys.stderr.write(f"ferretd: {exc}\n")
            return EXIT_CONFIG
        sys.stdout.write((plan.to_json() if args.json else plan.describe()) + "\n")
        return EXIT_OK
    configure_logging(config.daemon.log_level, fmt=config.daemon.log_format)
    # torch is imported by now, so OMP_NUM_THREADS would change nothing: the Daemon calls
    # torch.set_num_threads([daemon] torch_threads) itself before it builds a learner.
    try:
        daemon = Daemon(config, config_path=args.config)
    except ConfigError as exc:
        sys.stderr.write(f"ferretd: {exc}\n")
        return EXIT_CONFIG
    except InstanceError as exc:
        sys.stderr.write(f"ferretd: {exc}\n")
        return exc.code
    except ValueError as exc:  # e.g. the planner: budget below the smallest feasible plan
        log.error("startup_failed", error=str(exc))
        sys.stderr.write(f"ferretd: {exc}\n")
        return EXIT_CONFIG
    try:
        daemon.install_signal_handlers()
        code = daemon.run()
    except zmq.ZMQError as exc:
        log.error("socket_setup_failed", error=str(exc))
        return EXIT_SOCKET
    exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End the process at once after a stop: the state is on disk (fsynced) and every socket is
    closed, so the interpreter's own teardown (1-2 s of freeing torch and friends on a small box)
    would only push the exit past ``shutdown_timeout_s``."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def check_model_and_checkpoint(config: Config) -> str | None:
    """One line saying why the daemon could not start as configured, or ``None``."""
    from pathlib import Path

    import torch

    from ferretd.checkpoint import CheckpointStore, model_fit_error
    from ferretd.models import build_model

    try:
        with torch.random.fork_rng(devices=[]):
            model = build_model(config.model)
    except ConfigError as exc:  # already one line naming the key (ferretd.models.custom)
        return str(exc)
    except Exception as exc:  # a user factory can raise anything
        what = f"factory {config.model.factory!r}" if config.model.name == "custom" else f"model {config.model.name!r}"
        return f"[model] {what} cannot be built ({type(exc).__name__}: {str(exc)[:200]})"
    from ferretd.snapshot.to_onnx import ExportError, export_onnx

    try:  # ferret-infer serves ONNX: a model that cannot be exported would fail at every snapshot
        export_onnx(model, config.model.input_shape, config.snapshot.opset)
    except ExportError as exc:
        return f"[model] the model cannot be exported for ferret-infer: {exc}"
    store = CheckpointStore(Path(config.state_dir) / "checkpoints", keep=config.checkpoint.keep, writable=False)
    skipped: list[str] = []
    found = store.newest_valid(skipped)
    if found is None:
        return f"no checkpoint loads ({skipped[0]}); the daemon would start from scratch" if skipped else None
    seq, state = found
    learner = state.get("learner")
    problem = model_fit_error(learner.get("model") if isinstance(learner, dict) else None, model)
    if problem is not None:
        return f"checkpoint {seq} does not fit [model]: {problem}; the daemon would set it aside and start without it"
    return None
