"""The ``ferretd`` command line: validate a config, print a plan, or run the daemon.

    ferretd [--config FILE]                 run (embedded defaults without a file)
    ferretd --check-config --config FILE    validate only: exit 0, or 2 with one line
    ferretd --plan-only [--json]            print the plan the config leads to and exit

Exit codes: 0 clean stop, 1 failure while running, 2 bad configuration (or a memory budget
below the smallest feasible plan), 3 a socket could not be bound. ``python -m ferretd`` is the
same command.
"""

from __future__ import annotations

import argparse
import os
import sys

import structlog
import zmq

from ferretd import __version__
from ferretd.config import ConfigError, load_config
from ferretd.daemon import EXIT_CONFIG, EXIT_OK, EXIT_SOCKET, Daemon
from ferretd.learners import plan_from_config
from ferretd.logs import configure_logging

log = structlog.get_logger("ferretd")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferretd", description="Edge streaming learner daemon (Ferret method).")
    parser.add_argument("--config", help="TOML config file; embedded defaults without it")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument("--plan-only", action="store_true", help="print the plan for the config and exit")
    parser.add_argument("--json", action="store_true", help="with --plan-only: print the plan as JSON")
    parser.add_argument("--version", action="version", version=f"ferretd {__version__}")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"ferretd: {exc}\n")
        return EXIT_CONFIG
    if args.check_config:
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
    configure_logging(config.daemon.log_level)
    os.environ.setdefault("OMP_NUM_THREADS", str(config.daemon.torch_threads))
    try:
        daemon = Daemon(config, config_path=args.config)
    except ConfigError as exc:
        sys.stderr.write(f"ferretd: {exc}\n")
        return EXIT_CONFIG
    except ValueError as exc:  # e.g. the planner: budget below the smallest feasible plan
        log.error("startup_failed", error=str(exc))
        sys.stderr.write(f"ferretd: {exc}\n")
        return EXIT_CONFIG
    try:
        daemon.install_signal_handlers()
        return daemon.run()
    except zmq.ZMQError as exc:
        log.error("socket_setup_failed", error=str(exc))
        return EXIT_SOCKET


