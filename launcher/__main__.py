"""Command line: `python -m launcher run [options]` (what `make run` calls)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from launcher.local import LocalLayout
from launcher.run import LOG_DIR, RunOptions, run
from launcher.services import (
    ALL_SERVICES,
    CLOUD_API_SERVICE,
    CLOUD_URL_VARIABLE,
    EDGE_API_SERVICE,
    GATEWAY_SERVICE,
    INFERENCE_SERVICE,
)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launcher",
        description="Run the IntelliOptics cloud and edge on this machine, without Docker.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser(
        "run",
        help="run the cloud and the edge locally (the processes and settings of the compose files)",
        description="Every setting of docker-compose.edge.yml and docker-compose.cloud.yml can also be "
        "overridden by setting the same environment variable (EDGE_CLOUD_URL, DATABASE_URL, ...).",
    )
    run_parser.add_argument("--gateway-port", type=int, help="gateway port (env GATEWAY_PORT, default 30101)")
    run_parser.add_argument("--edge-api-port", type=int, help="edge-api port (env EDGE_PORT, default 8718)")
    run_parser.add_argument(
        "--inference-port", type=int, help="inference port (env INFERENCE_PORT, default 8001)"
    )
    run_parser.add_argument("--cloud-port", type=int, help="cloud API port (env CLOUD_PORT, default 8000)")
    run_parser.add_argument(
        "--cloud-url",
        help="use the cloud at this URL instead of starting one here (env INTELLIOPTICS_CLOUD_URL; "
        "the edge escalates and the gateway falls back to it)",
    )
    run_parser.add_argument(
        "--no-cloud",
        action="store_true",
        help="start only the edge (escalations wait in its outbox until a cloud answers)",
    )
    run_parser.add_argument(
        "--state-dir",
        type=Path,
        help="where the run keeps its databases, accounts, models and gateway files (default .intellioptics)",
    )
    run_parser.add_argument(
        "--data-dir", type=Path, help="what compose keeps in /data (default <state dir>/data)"
    )
    run_parser.add_argument(
        "--config-dir", type=Path, help="what compose mounts at /config (default ./config)"
    )
    run_parser.add_argument(
        "--no-demo-models",
        action="store_true",
        help="do not build the demo model bundles when the model root has none",
    )
    run_parser.add_argument(
        "--startup-timeout", type=float, default=60.0, help="seconds each service may take to become healthy"
    )
    run_parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show the per-request lines and polls (the JSON log files always have them)",
    )
    run_parser.add_argument(
        "--json",
        action="store_true",
        help="show every line of every service as it prints it (JSON), behind its name, instead of one "
        "readable line per event",
    )
    return parser


def options_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> RunOptions:
    """Fold the command-line options into the environment the local mapping reads."""
    env = dict(environ)
    for service, port in (
        (GATEWAY_SERVICE, args.gateway_port),
        (EDGE_API_SERVICE, args.edge_api_port),
        (INFERENCE_SERVICE, args.inference_port),
        (CLOUD_API_SERVICE, args.cloud_port),
    ):
        if port is not None and service.port_env:
            env[service.port_env] = str(port)
    if args.cloud_url:
        env[CLOUD_URL_VARIABLE] = args.cloud_url
        # The option beats variables that would otherwise replace the derived value (EDGE_CLOUD_URL, ...).
        for service in ALL_SERVICES:
            for name, value in service.environment.items():
                if CLOUD_URL_VARIABLE in value:
                    env.pop(name, None)
    # A cloud named by URL is used as it is; otherwise the run brings its own.
    local_cloud = not args.no_cloud and not env.get(CLOUD_URL_VARIABLE)
    layout = LocalLayout(data_dir=args.data_dir, config_dir=args.config_dir, state_root=args.state_dir)
    return RunOptions(
        layout=layout,
        environ=env,
        demo_models=not args.no_demo_models,
        cloud=local_cloud,
        startup_timeout=args.startup_timeout,
        console="json" if args.json else "readable",
        verbose=args.verbose,
        log_dir=layout.state_dir / LOG_DIR,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(options_from_args(args, os.environ))


if __name__ == "__main__":
    sys.exit(main())
