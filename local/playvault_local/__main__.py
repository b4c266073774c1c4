"""python -m playvault_local {run,serve} ...

run    the whole system on the embedded emulators through simulated hours; prints a report and
       exits 0 only if no play was lost or duplicated and no user was charged for the app's own
       failures (1 otherwise, 2 for bad options/startup, 3 when a function made an AWS call its IAM
       role would refuse on AWS).
serve  keep the local stack up behind a local API gateway (the template's HttpApi routes) and
       print the sign-in URL; Ctrl-C stops everything.
rebuild-rollups  recompute users' rollups from their plays on a local stack (playvault_local.rollups_cli).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_IAM_DENIED = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _bounded(cast: type, what: str, low: float, high: float | None = None):
    """An argparse type: `cast` the text and keep it within [low, high], naming what is wrong."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low or (high is not None and value > high):
            bounds = f"{low}-{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range for {what} ({bounds})")
        return value

    return parse


_positive_int = _bounded(int, "a whole number", 1)
_non_negative_float = _bounded(float, "a number", 0)
_port = _bounded(int, "a port number", 0, 65535)


def _parameter(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected Name=Value")
    return name, value


def _writable(text: str) -> Path:
    path = Path(text)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: directory {parent} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    return path


def build_parser() -> argparse.ArgumentParser:
    from playvault_local.template import TEMPLATE_PATH

    parser = _Parser(prog="python -m playvault_local", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{run,serve,rebuild-rollups}", parser_class=_Parser)
    commands.required = True

    run = commands.add_parser("run", help="simulate users and hours end to end, then report",
                              description="Run PlayVault end to end on the embedded emulators (moto + Spotify "
                                          "emulator) through simulated hours, with one simulated clock. Exits 0 "
                                          "only if no play was lost or duplicated and nobody was charged for the "
                                          "app's own failures.")
    run.add_argument("--users", type=_positive_int, default=None,
                     help="users who sign up (default 100; with --days 10)")
    run.add_argument("--hours", type=_positive_int, default=24, help="simulated hours (default 24)")
    run.add_argument("--days", type=_positive_int, default=0, metavar="N",
                     help="instead of --hours: N simulated days of the authorization lifecycle (reminders, "
                          "6-month expiry, reconnects, seats reclaimed and reused); the dispatcher runs every "
                          "--tick-hours (default 24)")
    run.add_argument("--tick-hours", type=_positive_int, default=0, metavar="H",
                     help="run the dispatcher every H simulated hours (default: the template's schedule, "
                          "15 minutes; 24 with --days)")
    run.add_argument("--seed", type=int, default=0, help="seed of the listening and of the faults (default 0)")
    run.add_argument("--report", type=_writable, metavar="FILE", help="write the report as JSON")
    run.add_argument("--dashboard", type=_writable, metavar="FILE",
                     help="write the functions' metrics per simulated hour as a self-contained SVG")
    run.add_argument("--log", type=_writable, metavar="FILE", help="write the functions' log and EMF lines")
    run.add_argument("--faults", choices=("none", "chaos"), default="none",
                     help="chaos: Spotify 5xx/429/timeouts/401s, an app-wide rate limit, a worker crash, "
                          "duplicate deliveries, DynamoDB and SSM throttling, a client-secret rotation, a poison "
                          "message")
    run.add_argument("--ssm-throttle", type=_share, default=None, metavar="SHARE",
                     help="share of SSM GetParameter calls (the functions reading the Spotify client id and "
                          "secret; their 5-minute cache runs on the simulated clock) that fail with "
                          "ThrottlingException, as when the account's shared 40-a-second SSM throughput is used "
                          "up (default 0.10 with --faults chaos, else 0; works without chaos too). The report's "
                          "'app faults' line shows the polls it hit and the users charged for it (must be 0)")
    run.add_argument("--time-scale", type=_non_negative_float, default=0.0, metavar="X",
                     help="pace the simulated clock at X simulated seconds per real second "
                          "(default 0: as fast as possible). Delays and timeouts are never scaled.")
    run.add_argument("--template", type=Path, default=TEMPLATE_PATH, help="template.yaml to run")
    run.add_argument("--parameter", type=_parameter, action="append", default=[], metavar="NAME=VALUE",
                     help="override a template parameter (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--late-share", type=_share, default=0.10, metavar="SHARE",
                     help="share of plays Spotify shows late, 1-90 minutes after they were played "
                          "(default 0.10; 0 for an ideal feed)")
    run.add_argument("--import", dest="import_export", action="store_true",
                     help="users upload Spotify data exports (years before sign-up, the polled period, its "
                          "gaps): some before their first poll, one right after a reconnect, the others after the "
                          "hours; the report checks every play is archived once, with a name")

    serve = commands.add_parser("serve", help="keep the local stack up behind a local API gateway",
                                description="Keep the stack up and serve the template's HttpApi routes on "
                                            "127.0.0.1. Prints the sign-in URL. Ctrl-C stops everything.")
    serve.add_argument("--port", type=_port, default=0, help="gateway port on 127.0.0.1 (default: a free one)")
    serve.add_argument("--spotify-api-url", help="a Spotify-compatible Web API instead of the built-in emulator")
    serve.add_argument("--spotify-accounts-url", help="its accounts service (authorize, token)")
    serve.add_argument("--client-id", help="client id registered at that service")
    serve.add_argument("--client-secret", help="its client secret")
    serve.add_argument("--template", type=Path, default=TEMPLATE_PATH, help="template.yaml to serve")
    serve.add_argument("--parameter", type=_parameter, action="append", default=[], metavar="NAME=VALUE",
                       help="override a template parameter (repeatable), e.g. MaxUsers=1")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--poll-seconds", type=_non_negative_float, default=1.0,
                       help="how often the SQS event source polls the work queue (default 1)")
    serve.add_argument("--dispatch-every", type=_non_negative_float, default=None, metavar="SECONDS",
                       help="run the scheduled dispatcher this often (default: its schedule, every "
                            "DispatchPeriodMinutes = 2 here)")
    serve.add_argument("--no-listening", action="store_true",
                       help="no simulated listening for the emulator's users (add plays by hand)")
    serve.add_argument("--log", type=_writable, metavar="FILE",
                       help="write the functions' JSON log and EMF lines here (default: a new file in the "
                            "temporary directory, named at start), keeping the terminal for the sign-in URL")
    rebuild = commands.add_parser("rebuild-rollups", help="recompute users' rollups from their plays",
                                  description="Rebuild users' rollups from their plays (a new generation in "
                                              "each user's time zone) on a local stack.")
    who = rebuild.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the user id to rebuild")
    who.add_argument("--all", action="store_true", help="every user")
    rebuild.add_argument("--endpoint-url", help="the local stack's AWS endpoint (make serve prints it)")
    rebuild.add_argument("--prefix", default="playvault-local",
                         help="its table names' prefix (default playvault-local)")
    return parser


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _fail(message: str) -> int:
    print(f"playvault_local: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _check_template(path: Path, parameters: list[tuple[str, str]]) -> str | None:
    """The template loads and every --parameter names one of its parameters with a value it allows
    (CloudFormation rejects a stack update with an unknown parameter or a refused value in the same way)."""
    from playvault_local import template as tpl

    try:
        template = tpl.load(path)
    except tpl.TemplateError as exc:
        return f"template: {exc}"
    known = list(template.get("Parameters") or {})
    unknown = sorted({name for name, _ in parameters} - set(known))
    if unknown:
        return (f"--parameter: Parameters: [{', '.join(unknown)}] do not exist in the template {path.name}; "
                f"its parameters are: {', '.join(known)}")
    refused = tpl.parameter_problems(template, dict(parameters))
    if refused:
        return "--parameter: " + "; ".join(refused)
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from playvault_local.report import iam_denied, summary_lines, verdict
    from playvault_local.runner import RunConfig, RunError, Simulation
    from playvault_local.system import StartupError

    problem = _check_template(args.template, args.parameter)
    if problem:
        return _fail(problem)
    log_file = open(args.log, "w", encoding="utf-8") if args.log else None  # noqa: SIM115
    real_stdout = sys.stdout
    users = args.users if args.users is not None else (10 if args.days else 100)
    config = RunConfig(users=users, hours=args.hours, days=args.days, tick_hours=args.tick_hours,
                       seed=args.seed, faults=args.faults,
                       time_scale=args.time_scale, template_path=args.template, parameters=dict(args.parameter),
                       log_file=log_file, progress=None if args.quiet else sys.stderr, late_share=args.late_share,
                       import_export=args.import_export, ssm_throttle_rate=args.ssm_throttle)
    simulation = Simulation(config)
    try:
        report = simulation.run()
    except StartupError as exc:
        return _fail(str(exc))
    except RunError as exc:
        print(f"playvault_local: run failed: {exc}", file=sys.stderr)
        return _iam_denied(simulation) or EXIT_FAILED
    except Exception:
        if _iam_denied(simulation):  # a refused call the code did not survive: say which, not only the trace
            return EXIT_IAM_DENIED
        raise
    finally:
        if log_file is not None:
            log_file.close()
    if args.report:
        args.report.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if args.dashboard:
        from playvault_local.dashboard import render_svg

        args.dashboard.write_text(render_svg(simulation.system.output.samples, report))
    for line in summary_lines(report):
        print(line, file=real_stdout)
    if args.report:
        print(f"  report        : {args.report}", file=real_stdout)
    if args.dashboard:
        print(f"  dashboard     : {args.dashboard}", file=real_stdout)
    if iam_denied(report):
        return EXIT_IAM_DENIED
    return EXIT_OK if verdict(report) else EXIT_FAILED


def _iam_denied(simulation: Any) -> int:
    """EXIT_IAM_DENIED, after naming each denied call on stderr, when the IAM check refused any."""
    check = simulation.system.iam
    if check is None or not check.denials:
        return 0
    for denial in check.denials:
        print(f"playvault_local: IAM denied: {denial}", file=sys.stderr)
    return EXIT_IAM_DENIED


def cmd_serve(args: argparse.Namespace) -> int:
    from playvault_local.gateway import ServeConfig, serve
    from playvault_local.system import StartupError

    problem = _check_template(args.template, args.parameter)
    if problem:
        return _fail(problem)
    if bool(args.spotify_api_url) != bool(args.spotify_accounts_url):
        return _fail("give both --spotify-api-url and --spotify-accounts-url (or neither)")
    if bool(args.client_id) != bool(args.client_secret):
        return _fail("give both --client-id and --client-secret (or neither)")
    config = ServeConfig(port=args.port, template_path=args.template, parameters=dict(args.parameter),
                         spotify_api_url=args.spotify_api_url, spotify_accounts_url=args.spotify_accounts_url,
                         client_id=args.client_id, client_secret=args.client_secret, seed=args.seed,
                         poll_seconds=args.poll_seconds, dispatch_every_s=args.dispatch_every or None,
                         listening=not args.no_listening, log_path=args.log)
    try:
        return serve(config)
    except StartupError as exc:
        return _fail(str(exc))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command == "rebuild-rollups":
            from playvault_local import rollups_cli

            return rollups_cli.main(args.user, args.all, args.endpoint_url, args.prefix)
        return cmd_run(args) if args.command == "run" else cmd_serve(args)
    except KeyboardInterrupt:
        print("playvault_local: interrupted; everything stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
