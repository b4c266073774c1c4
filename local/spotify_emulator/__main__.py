"""CLI: python -m spotify_emulator --host 127.0.0.1 --port 0

Prints exactly one line ``listening on http://HOST:PORT`` to stdout (flushed) and serves
until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .server import EmulatorServer
from .state import EmulatorState, OffsetClock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spotify_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--rotate-refresh-tokens", action="store_true",
                        help="users created by a sign-in get a new refresh token on every refresh")
    parser.add_argument("--error-5xx-rate", type=float, default=0.0)
    parser.add_argument("--rate-429-rate", type=float, default=0.0)
    parser.add_argument("--retry-after-s", type=int, default=1)
    parser.add_argument("--timeout-rate", type=float, default=0.0)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--expire-token-rate", type=float, default=0.0)
    parser.add_argument("--client-id", help="register one client at start (with --client-secret, --redirect-uri)")
    parser.add_argument("--client-secret", default="")
    parser.add_argument("--redirect-uri", action="append", default=[])
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    state = EmulatorState(clock=OffsetClock(), seed=args.seed)
    state.default_rotate_refresh_tokens = args.rotate_refresh_tokens
    state.faults.update(latency_ms=args.latency_ms, error_5xx_rate=args.error_5xx_rate,
                        rate_429_rate=args.rate_429_rate, retry_after_s=args.retry_after_s,
                        timeout_rate=args.timeout_rate, timeout_s=args.timeout_s,
                        expire_token_rate=args.expire_token_rate)
    if args.client_id:
        state.register_client(args.client_id, args.client_secret, args.redirect_uri)

    server = EmulatorServer(state, host=args.host, port=args.port, quiet=not args.verbose)
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start()
    print(f"listening on {server.url}", flush=True)
    sys.stdout.flush()
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
