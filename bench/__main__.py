"""`make bench`: worker throughput vs the seed's sequential flow, exact request counts per poll, what a
personal deployment and a fleet cost a month, handler cold imports, dispatcher scale. All on local
emulators started on free loopback ports and stopped by their PIDs: moto_server (every AWS service)
and, for the worker's throughput, dynalite as a second DynamoDB emulator (npm; bench/.dynalite);
the Spotify emulator with latency injected per request. Writes bench/results.json; BENCHMARKS.md
explains the figures. Also: a 100,000-play export's memory and time (bench/export.py) and the
importer's throughput and memory (bench/imports.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playvault_local.aws_server import stop_process

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "playvault"

# Worker messages per latency and concurrency; the reported figure is their median.
REPEATS = 3


MOTO, DYNALITE = "moto_server", "dynalite"


def _args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected whole numbers separated by commas") from None

    def emulators(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = sorted(set(names) - {MOTO, DYNALITE})
        if unknown or MOTO not in names:
            raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of {MOTO} (required: the request "
                                             f"counts and the cost are measured on it) and {DYNALITE}")
        return names

    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Lists are comma-separated (--latency-ms 100,300). A full run takes about 6 minutes on 2 cores; "
               "--dispatcher-users '' and --latency-ms 100 make it much shorter.")
    parser.add_argument("--latency-ms", type=ints, default=[20, 100, 300], metavar="LIST",
                        help="Spotify latency per request injected by the emulator, one throughput run each "
                             "(default: 20,100,300)")
    parser.add_argument("--users-per-message", type=int, default=50, metavar="N",
                        help="users in each worker message of the throughput runs (default: 50, the template's "
                             "BatchSize)")
    parser.add_argument("--user-concurrency", type=ints, default=None, metavar="LIST",
                        help="worker USER_CONCURRENCY values to measure (default: the template's UserConcurrency "
                             "and users-per-message)")
    parser.add_argument("--emulators", type=emulators, default=[MOTO, DYNALITE], metavar="LIST",
                        help=f"DynamoDB emulators for the worker's throughput: {MOTO} and {DYNALITE} (installed with "
                             f"npm into bench/.dynalite on first use) (default: {MOTO},{DYNALITE})")
    parser.add_argument("--dispatcher-users", type=ints, default=[10_000, 100_000], metavar="LIST",
                        help="fleet sizes the dispatcher scans and dispatches; empty to skip (default: 10000,100000)")
    parser.add_argument("--cold-runs", type=int, default=7, metavar="N",
                        help="fresh processes per handler for the cold-import median (default: 7)")
    parser.add_argument("--import-rows", type=int, default=150_000, metavar="N",
                        help="rows of the big export in the import benchmark (bench/imports.py) (default: 150000)")
    parser.add_argument("--only-import", action="store_true", help="run the import benchmark alone")
    parser.add_argument("--only-cost", action="store_true",
                        help="re-price from the measurements in --out (a previous full run): count the template "
                             "(bench/template_facts.py), re-run the real-items run (bench/real_items.py, about a "
                             "minute) and the cost model, and write --out again")
    parser.add_argument("--export-plays", type=int, default=100_000, metavar="N",
                        help="plays of the full-export benchmark (bench/export.py); 0 skips it (default: 100000)")
    parser.add_argument("--rollup-sizes", type=ints, default=[1_000, 20_000, 200_000], metavar="LIST",
                        help="history sizes (plays over ten years) of the rollups' page views (bench/rollups.py); "
                             "empty skips them (default: 1000,20000,200000)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"), metavar="FILE",
                        help="where the results go (default: bench/results.json)")
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Process:
    def __init__(self, argv: list[str], what: str):
        self.what = what
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> None:
        stop_process(self.proc)  # by PID: only the process this bench started


def _start_moto() -> tuple[_Process, str]:
    import requests

    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = _Process([str(exe), "-H", "127.0.0.1", "-p", str(port)], "moto_server")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/moto-api/", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.stop()
    raise RuntimeError("moto_server did not start")


def _start_emulator(client_id: str, client_secret: str, redirect_uri: str) -> tuple[_Process, str]:
    proc = _Process([sys.executable, "-m", "spotify_emulator", "--host", "127.0.0.1", "--port", "0", "--seed", "7",
                     "--client-id", client_id, "--client-secret", client_secret, "--redirect-uri", redirect_uri],
                    "spotify_emulator")
    line = proc.proc.stdout.readline() if proc.proc.stdout else ""
    if not line.startswith("listening on "):
        proc.stop()
        raise RuntimeError(f"spotify_emulator did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].strip()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- phases
class Bench:
    def __init__(self, args: argparse.Namespace, aws_url: str, spotify_url: str):
        from bench.instrument import Recorder, SpotifyCounter
        from spotify_emulator.client import EmulatorControl

        self.args = args
        self.aws_url = aws_url
        self.spotify_url = spotify_url
        self.control = EmulatorControl(spotify_url)
        self.recorder = Recorder().install()
        self.spotify_counter = SpotifyCounter()
        self.dynalite: Any = None  # bench.dynalite.Dynalite when the run measures it
        self.results: dict[str, Any] = {}

    def provision(self, prefix: str, stage: str) -> Any:
        from playvault import store
        from playvault.config import TableSettings
        from playvault_local.provision import provision

        with self.recorder.paused():
            stack = provision(endpoint_url=self.aws_url, prefix=prefix, parameters={
                "SpotifyApiUrl": f"{self.spotify_url}/v1", "SpotifyAccountsUrl": self.spotify_url,
                "RedirectUri": "http://127.0.0.1:8765/auth/callback", "Stage": stage})
        os.environ.update(stack.env)
        store.bind(TableSettings.from_env())
        from aws_lambda_powertools.utilities import parameters

        parameters.clear_caches()
        return stack

    def load_worker(self, stack: Any, concurrency: int | None = None) -> tuple[Any, Any]:
        from playvault_local.lambda_runtime import load_module

        spec = stack.functions["WorkerFunction"]
        if concurrency is not None:
            os.environ["USER_CONCURRENCY"] = str(concurrency)
        spec.logical_id = f"WorkerFunction{uuid.uuid4().hex[:6]}"  # a new module: a new container
        module = load_module(spec, stack.layer_paths)
        module.spotify.session.hooks["response"].append(self.spotify_counter)
        spec.logical_id = "WorkerFunction"
        return module, spec

    def sealer(self, stack: Any) -> Any:
        import boto3

        from playvault.crypto import TokenCipher

        return TokenCipher(boto3.client("kms"), stack.physical["TokenKey"]["Arn"])

    def make_users(self, specs: list[Any], cipher: Any) -> None:
        from bench.scenario import create_user
        from playvault_local.provision import DEV_CLIENT_ID, DEV_CLIENT_SECRET

        with self.recorder.paused():
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda s: create_user(s, accounts_url=self.spotify_url, control=self.control,
                                                    cipher=cipher, client_id=DEV_CLIENT_ID,
                                                    client_secret=DEV_CLIENT_SECRET), specs))

    # -- part 2: exact counts per poll --------------------------------------------------------------
    def poll_counts(self) -> None:
        from bench.scenario import poll_counts, simplify_table_names, table_names
        from playvault_local.lambda_runtime import context_for
        from playvault_local.provision import DEV_CLIENT_ID, DEV_CLIENT_SECRET

        _say("== request counts per poll (worker per-user path, idempotency included)")
        stack = self.provision("bench-counts", "counts")
        self.control.faults(latency_ms=0)
        module, spec = self.load_worker(stack)
        sealer = self.sealer(stack)
        self.recorder.probe = self.recorder.uncounted_client("dynamodb", region_name="us-east-1",
                                                             endpoint_url=self.aws_url)
        from bench.scenario import create_user

        def make_user(user_spec: Any) -> Any:
            return create_user(user_spec, accounts_url=self.spotify_url, control=self.control, cipher=sealer,
                               client_id=DEV_CLIENT_ID, client_secret=DEV_CLIENT_SECRET)

        counts = poll_counts(recorder=self.recorder, spotify_counter=self.spotify_counter, handler=module.handler,
                             context_factory=lambda: context_for(spec), make_user=make_user,
                             per_message_tables={stack.name("StateTable"), stack.name("IdempotencyTable")},
                             remember_token=lambda user_id, grant: module.archiver.access_tokens.put(
                                 user_id, grant.access_token, grant.expires_at),
                             suffix="-c")
        from bench.scenario import message_split

        split = message_split(recorder=self.recorder, handler=module.handler,
                              context_factory=lambda: context_for(spec), make_user=make_user, suffix="-c")
        self.recorder.probe = None
        simplify_table_names(counts, table_names(stack))
        names = table_names(stack)
        for key in ("per_user_by_operation", "per_message_by_operation"):
            renamed = {}
            for op, v in split[key].items():
                for physical, logical in names.items():
                    op = op.replace(physical, logical)
                renamed[op] = v
            split[key] = renamed
        self.results["message_split"] = split
        _say(f"  idle poll, per user: {split['per_user']['dynamodb_requests']:g} DynamoDB requests, "
             f"{split['per_user']['dynamodb_wru']:g} WRU; per message: "
             f"{split['per_message']['dynamodb_requests']:g} requests, {split['per_message']['dynamodb_wru']:g} WRU")
        # Item sizes for storage: a stored play and a stored user.
        from bench.itemsize import item_size

        probe = self.recorder.uncounted_client("dynamodb", region_name="us-east-1", endpoint_url=self.aws_url)
        play = probe.query(TableName=stack.name("PlaysTable"), KeyConditionExpression="user_id = :u",
                           ExpressionAttributeValues={":u": {"S": "twenty-c"}}, Limit=1)["Items"][0]
        user = probe.get_item(TableName=stack.name("UsersTable"), Key={"user_id": {"S": "twenty-c"}})["Item"]
        self.user_item = user
        self.results["poll_counts"] = counts
        self.results["item_bytes"] = {"play": item_size(play), "user": item_size(user)}
        for name, c in counts.items():
            _say(f"  {name:26s} spotify {c['spotify_requests']}  dynamodb {c['dynamodb_requests']:3d} "
                 f"(+{c['dynamodb_requests_per_message']}/message)  WRU {c['dynamodb_wru']:5.1f}  "
                 f"RRU {c['dynamodb_rru']:4.1f}  kms {c['kms_requests']}  log {c['log_bytes']} B")
        # A not-yet-due message: the worker puts it back (one SendMessage) — the cost of a spread hop.
        from bench.scenario import invoke_captured, sqs_event

        self.recorder.reset()
        hop = invoke_captured(module.handler, sqs_event(["idle-c"], not_before=int(time.time()) + 2000),
                              context_for(spec))
        self.results["requeue_hop"] = {"seconds": round(hop.seconds, 4), "log_bytes": hop.log_bytes,
                                       "sqs_requests": self.recorder.total("sqs")}
        self.emf = hop.emf_metrics()

    # -- part 1: throughput -------------------------------------------------------------------------
    def throughput(self, emulator: str = MOTO) -> None:
        """Worker vs the seed's flow at each Spotify latency, with DynamoDB on `emulator` (KMS, SSM
        and SQS stay on moto_server)."""
        from bench.scenario import UserSpec, invoke_captured, sqs_event
        from playvault_local.lambda_runtime import context_for

        args = self.args
        n = args.users_per_message
        short = "m" if emulator == MOTO else "d"
        stack = self.provision(f"bench-throughput-{short}", f"throughput{short}")
        ddb_url = self.aws_url
        if emulator == DYNALITE:
            ddb_url = self._bind_dynalite(stack)
        try:
            template_concurrency = int(stack.template["Parameters"]["UserConcurrency"]["Default"])
            concurrencies = args.user_concurrency or sorted({template_concurrency, n})
            sealer = self.sealer(stack)
            workers = {c: self.load_worker(stack, c) for c in concurrencies}
            os.environ["USER_CONCURRENCY"] = str(template_concurrency)
            baseline = self._seed_archiver(stack)
            self.control.faults(latency_ms=0)
            # Warm every container and make tracks 0..99 known (throughput users play known tracks).
            warm = [UserSpec(f"warm{k}-{short}{c}", 20, list(range(20 * k, 20 * k + 20)))
                    for c in concurrencies for k in range(5)]
            self.make_users(warm, sealer)
            for c, (module, spec) in workers.items():
                mine = [u.user_id for u in warm if u.user_id.endswith(f"-{short}{c}")]
                invoke_captured(module.handler, sqs_event(mine), context_for(spec))
            self.make_users([UserSpec(f"warm-seed-{short}", 1, [0])], sealer)
            from playvault.spotify import Budget

            baseline.archive_user(f"warm-seed-{short}", Budget.seconds(60))

            rows = []
            mix: list[tuple[str, dict[str, Any]]] = []
            for latency in args.latency_ms:
                _say(f"== throughput on {emulator}: {latency} ms Spotify latency, {n} users per message")
                tag = f"{short}L{latency}"
                base_users = [UserSpec(f"seed-{tag}-{i}", 2, [(i * 7) % 100, (i * 13 + 5) % 100]) for i in range(n)]
                # The worker's message is short (a second or two) and the machine noisy: median of REPEATS.
                sets = {c: [[UserSpec(f"w{c}-{tag}-r{r}-{i}", 2, [(i * 7) % 100, (i * 13 + 5) % 100])
                             for i in range(n)] for r in range(REPEATS)] for c in concurrencies}
                self.control.faults(latency_ms=0)
                self.make_users(base_users + [u for runs in sets.values() for s in runs for u in s], sealer)
                self.control.faults(latency_ms=latency)

                # Baseline: the seed's flow, one user after another, a new HTTP connection per Spotify call.
                self.recorder.reset()
                started = time.perf_counter()
                statuses = [baseline.archive_user(u.user_id, Budget.seconds(120)).status for u in base_users]
                base_s = time.perf_counter() - started
                if statuses.count("success") != n:
                    raise RuntimeError(f"baseline: {statuses}")
                row = {"latency_ms": latency, "baseline_seconds": round(base_s, 3),
                       "baseline_users_per_s": round(n / base_s, 2), "worker": {}}
                for c, (module, spec) in workers.items():
                    runs = []
                    for users in sets[c]:
                        self.recorder.reset()
                        self.spotify_counter.reset()
                        self.recorder.captured = [] if not mix else None  # the worker's request mix, once
                        inv = invoke_captured(module.handler, sqs_event([u.user_id for u in users]), context_for(spec))
                        if self.recorder.captured is not None:
                            mix = self.recorder.captured
                            self.recorder.captured = None
                        report = inv.batch_report() or {}
                        if inv.response.get("batchItemFailures") or report.get("successful") != n:
                            raise RuntimeError(f"worker c={c}: {inv.response} {report}")
                        runs.append((inv.seconds, self.recorder.total("dynamodb"), self.spotify_counter.total(),
                                     inv.log_bytes))
                    seconds, ddb, spotify_requests, log_bytes = sorted(runs)[len(runs) // 2]
                    row["worker"][str(c)] = {
                        "seconds": round(seconds, 3), "users_per_s": round(n / seconds, 2),
                        "speedup": round(base_s / seconds, 2), "dynamodb_requests": ddb,
                        "dynamodb_requests_per_s": round(ddb / seconds, 1),
                        "spotify_requests": spotify_requests, "log_bytes": log_bytes,
                        "seconds_of_each_run": [round(r[0], 3) for r in runs],
                    }
                    _say(f"  concurrency {c:3d}: {seconds:6.2f} s  {n / seconds:6.1f} users/s  "
                         f"speedup x{base_s / seconds:5.1f}  (baseline {base_s:6.2f} s, {n / base_s:5.1f} users/s; "
                         f"median of {', '.join(f'{r[0]:.2f}' for r in runs)} s)")
                rows.append(row)
            self.control.faults(latency_ms=0)
            bound = self._ddb_bare_rate(ddb_url, mix, max(concurrencies))
        finally:
            if emulator == DYNALITE:
                self._unbind_dynalite()
        self.results.setdefault("throughput_by_emulator", {})[emulator] = rows
        self.results.setdefault("dynamodb_emulator_bound_by_emulator", {})[emulator] = bound
        if emulator == MOTO:
            self.results["throughput"] = rows
            self.results["dynamodb_emulator_bound"] = bound
        self.results["template_user_concurrency"] = template_concurrency
        _say(f"  {emulator} bare rate of the worker's request mix: {bound['requests_per_s']} DynamoDB req/s "
             f"({bound['threads']} threads)")

    def _bind_dynalite(self, stack: Any) -> str:
        """Tables on dynalite; every client created from now on sends DynamoDB there
        (AWS_ENDPOINT_URL_DYNAMODB, botocore's service-specific endpoint) and the rest to moto_server."""
        from bench import dynalite
        from playvault import store
        from playvault.config import TableSettings

        assert self.dynalite is not None
        dynalite.create_tables(self.recorder.uncounted_client("dynamodb", region_name="us-east-1",
                                                              endpoint_url=self.dynalite.url), stack)
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = self.dynalite.url
        store.bind(TableSettings.from_env())
        return self.dynalite.url

    def _unbind_dynalite(self) -> None:
        from playvault import store
        from playvault.config import TableSettings

        os.environ.pop("AWS_ENDPOINT_URL_DYNAMODB", None)
        store.bind(TableSettings.from_env())

    def _seed_archiver(self, stack: Any) -> Any:
        """The seed's flow: Archiver with a Spotify client that opens a new Session for every request."""
        import boto3
        import requests

        from playvault.archive import Archiver
        from playvault.crypto import TokenCipher
        from playvault.spotify import SpotifyClient, ssm_credentials

        counter = self.spotify_counter

        class FreshSessionPerRequest:
            hooks: dict[str, list[Any]] = {"response": []}

            def request(self, method: str, url: str, **kwargs: Any) -> Any:
                with requests.Session() as session:
                    session.hooks["response"].append(counter)
                    return session.request(method, url, **kwargs)

        env = stack.env
        spotify = SpotifyClient(api_url=env["SPOTIFY_API_URL"], accounts_url=env["SPOTIFY_ACCOUNTS_URL"],
                                credentials=ssm_credentials(env["SPOTIFY_CLIENT_ID_PARAM"],
                                                            env["SPOTIFY_CLIENT_SECRET_PARAM"]),
                                session=FreshSessionPerRequest())  # type: ignore[arg-type]
        return Archiver(spotify, TokenCipher(boto3.client("kms"), env["TOKEN_KEY_ID"]))

    def _ddb_bare_rate(self, url: str, mix: list[tuple[str, dict[str, Any]]], threads: int,
                       n: int = 2000) -> dict[str, Any]:
        """The emulator's own ceiling for the worker's request mix: the DynamoDB calls of one worker
        message, replayed verbatim (same operations, tables, items and conditions; a condition
        that no longer holds is evaluated all the same) from `threads` threads, n calls in all."""
        from botocore.config import Config
        from botocore.exceptions import ClientError

        if not mix:
            raise RuntimeError("no DynamoDB request mix was captured")
        client = self.recorder.uncounted_client("dynamodb", region_name="us-east-1", endpoint_url=url,
                                                config=Config(max_pool_connections=threads))
        refused = 0

        def one(i: int) -> None:
            nonlocal refused
            operation, params = mix[i % len(mix)]
            try:
                client._make_api_call(operation, params)  # noqa: SLF001 - replay by operation name
            except ClientError:
                refused += 1

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(min(100, n))))  # warm the connections
            refused = 0
            started = time.perf_counter()
            list(pool.map(one, range(n)))
            seconds = time.perf_counter() - started
        operations: dict[str, int] = {}
        for operation, _ in mix:
            operations[operation] = operations.get(operation, 0) + 1
        return {"requests": n, "threads": threads, "seconds": round(seconds, 3),
                "requests_per_s": round(n / seconds, 1), "mix": dict(sorted(operations.items())),
                "refused_conditions": refused}

    # -- part 4: cold imports -----------------------------------------------------------------------
    def cold_imports(self, stack: Any) -> None:
        from bench import coldstart

        _say("== cold start: handler import time, fresh processes")
        env = {k: v for k, v in stack.env.items()}
        env["POWERTOOLS_SERVICE_NAME"] = "playvault"
        env["POWERTOOLS_METRICS_NAMESPACE"] = "PlayVault"
        self.results["cold_import"] = coldstart.measure(stack.functions, LAYER, env, runs=self.args.cold_runs)
        for name, r in self.results["cold_import"].items():
            _say(f"  {name:20s} median {r['median_ms']:6.1f} ms (its third-party modules alone: "
                 f"{r['dependency_floor_median_ms']:6.1f} ms)  loads {', '.join(r['heavy_packages_loaded'])}")

    # -- part 5: dispatcher scale -------------------------------------------------------------------
    def dispatcher(self, stack: Any) -> None:
        rows = []
        for users in self.args.dispatcher_users:
            _say(f"== dispatcher: {users} users")
            try:
                rows.append(self._dispatch(stack, users))
            except Exception as exc:  # noqa: BLE001 - one size failing must not lose the whole run
                _say(f"  failed: {str(exc)[-300:]}")
                rows.append({"users": users, "error": str(exc)[-500:]})
                continue
            r = rows[-1]
            _say(f"  seeded in {r['seed_seconds']} s; dispatched in {r['seconds']} s ({r['users_per_s']} users/s), "
                 f"{r['scan_pages']} Scan pages, {r['send_message_batch_calls']} SendMessageBatch, "
                 f"peak RSS {r['max_rss_mb_after']} MB")
        self.results["dispatcher"] = rows

    def _dispatch(self, stack: Any, users: int) -> dict[str, Any]:
        from botocore.config import Config

        ddb = self.recorder.uncounted_client("dynamodb", region_name="us-east-1", endpoint_url=self.aws_url,
                                             config=Config(max_pool_connections=8))
        sqs = self.recorder.uncounted_client("sqs", region_name="us-east-1", endpoint_url=self.aws_url)
        table = f"bench-users-{users}-{uuid.uuid4().hex[:4]}"
        ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "user_id", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "user_id", "KeyType": "HASH"}])
        queue = sqs.create_queue(QueueName=f"bench-work-{users}-{uuid.uuid4().hex[:4]}")["QueueUrl"]
        template = dict(self.user_item)
        template.pop("next_poll_at", None)  # no next poll set: every user is due at this run

        def put(start: int) -> None:
            items = []
            for i in range(start, min(start + 25, users)):
                item = dict(template)
                item["user_id"] = {"S": f"user{i:07d}"}
                items.append({"PutRequest": {"Item": item}})
            request = {table: items}
            while request:
                request = ddb.batch_write_item(RequestItems=request).get("UnprocessedItems") or None

        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(put, range(0, users, 25)))
        seed_s = time.perf_counter() - started
        env = {**os.environ, **stack.env, "USERS_TABLE": table, "WORK_QUEUE_URL": queue,
               "PYTHONPATH": os.pathsep.join([str(LAYER), str(ROOT / "local"), str(ROOT)])}
        proc = subprocess.run([sys.executable, "-m", "bench.dispatch_probe",
                               str(stack.functions["DispatcherFunction"].code_uri), str(LAYER)],
                              env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"dispatcher probe failed: {proc.stderr[-3000:]}")
        probe = json.loads(proc.stdout.strip().splitlines()[-1])
        report = probe["report"]
        if report.get("dispatched") != users:
            raise RuntimeError(f"dispatcher dispatched {report.get('dispatched')} of {users}")
        ddb.delete_table(TableName=table)
        sqs.delete_queue(QueueUrl=queue)
        return {"users": users, "seed_seconds": round(seed_s, 1), "seconds": round(probe["seconds"], 2),
                "users_per_s": round(users / probe["seconds"], 1), "scan_pages": probe["scan_pages"],
                "send_message_batch_calls": probe["send_message_batch_calls"],
                "messages_sent": report["messages_sent"],
                "max_rss_mb_before": round(probe["max_rss_mb_before"], 1),
                "max_rss_mb_after": round(probe["max_rss_mb_after"], 1),
                "aws_calls": probe["aws_calls"]}

    # -- part 3: cost ----------------------------------------------------------------------------------
    def real_items(self, users: int = 5, hours: int = 26) -> None:
        """Item sizes and the dispatcher's Scans from a real local run (bench/real_items.py, its own process)."""
        _say(f"== real items: a local run of {users} users over {hours} simulated hours")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LAYER), str(ROOT / "local"), str(ROOT)])}
        proc = subprocess.run([sys.executable, "-m", "bench.real_items", str(users), str(hours)], env=env,
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"bench.real_items failed: {proc.stderr[-3000:]}")
        self.results["real_items"] = json.loads(proc.stdout.strip().splitlines()[-1])
        ri = self.results["real_items"]
        _say(f"  user {ri['user_item_bytes']} B, play {ri['play_item_bytes']} B, "
             f"{ri['dispatcher_scans_per_run']} Scans of the users table per dispatcher run")

    def cost(self) -> None:
        from bench import cost
        from bench import template_facts as tf
        from playvault import metrics as m
        from playvault.failures import USER_FAILURE_TYPES

        r = self.results
        facts = tf.facts()
        r["template_facts"] = facts
        throughput = r.get("throughput") or []
        at100 = next((row for row in throughput if row["latency_ms"] == 100), throughput[-1] if throughput else None)
        tc = str(r.get("template_user_concurrency", ""))
        worker = (at100["worker"].get(tc) or next(iter(at100["worker"].values()))) if at100 else \
            {"seconds": 1.0, "log_bytes": 1200}  # assumed: no throughput run measured
        disp = [d for d in r.get("dispatcher") or [] if "error" not in d]
        if len(disp) >= 2:
            per_user = (disp[-1]["seconds"] - disp[0]["seconds"]) / (disp[-1]["users"] - disp[0]["users"])
            fixed = max(0.0, disp[0]["seconds"] - per_user * disp[0]["users"])
        elif disp:
            per_user, fixed = disp[0]["seconds"] / disp[0]["users"], 0.0
        else:
            per_user, fixed = 0.0005, 0.2  # assumed: no dispatcher run measured
        polls = r["poll_counts"]
        keys = ("dynamodb_requests", "dynamodb_wru", "dynamodb_rru")

        def diff(a: str, b: str, n: float = 1) -> dict[str, float]:
            return {k: round((polls[a][k] - polls[b][k]) / n, 4) for k in keys}

        per_play = diff("20_plays_known_tracks", "1_play_known_track", 19)
        cold_lookup = diff("20_plays_known_tracks_new_container", "20_plays_known_tracks", 20)
        # Conservative: every play's track is looked up as by a container that has not met it.
        per_play = {k: round(per_play[k] + cold_lookup[k], 4) for k in keys}
        with_plays = {k: round(polls["1_play_known_track"][k] - polls["idle"][k] - (per_play[k] - cold_lookup[k]), 4)
                      for k in keys}
        ri = r["real_items"]
        cold = r.get("cold_import") or {}
        rollups = r.get("rollups") or {}
        sizes = (rollups.get("item_bytes") or {})
        # The rollups' month, year and all items by the plays they cover, from the page bench's users
        # (ten years of history each: a month holds size/120 plays, a year size/10).
        per = {"month#": 120, "year#": 10, "all": 1}
        rollup_items: dict[str, dict[str, float]] = {k.rstrip("#"): {} for k in per}
        for size, items in sizes.items():
            for prefix, share in per.items():
                found = [v for k, v in items.items() if k.startswith(prefix)]
                if found:
                    rollup_items[prefix.rstrip("#")][str(int(size) / share)] = float(max(found))
        scenario = rollups.get("rollup_write_scenario")
        page_view = r.get("page_view") or {}
        imp = r.get("import") or {}
        export = r.get("export") or {}
        jsonl = export.get("jsonl") or {}
        memory_gb = {k: f["memory_mb"] / 1024 for k, f in facts["functions"].items()}
        core = m.custom_metrics([t.value for t in USER_FAILURE_TYPES], detailed_on=False)
        inputs = {
            "per_poll": {"per_user": r["message_split"]["per_user"], "per_message": r["message_split"]["per_message"]},
            "per_play": per_play,
            "per_poll_with_plays": with_plays,
            "per_unknown_track": diff("20_plays_unknown_tracks", "20_plays_known_tracks_new_container", 20),
            "users_per_message": int(facts["parameters"]["BatchSize"]),
            "worker_seconds_per_message": worker["seconds"],
            "worker_memory_gb": memory_gb["WorkerFunction"],
            "worker_init_seconds": cold.get("WorkerFunction", {}).get("median_ms", 600) / 1000,
            "dispatcher_memory_gb": memory_gb["DispatcherFunction"],
            "dispatcher_init_seconds": cold.get("DispatcherFunction", {}).get("median_ms", 400) / 1000,
            "account_memory_gb": memory_gb["AccountFunction"],
            "jobs_memory_gb": memory_gb["JobsFunction"],
            "importer_memory_gb": memory_gb["ImporterFunction"],
            "log_bytes_per_message": worker["log_bytes"],
            "log_bytes_per_dispatch": 2000,  # assumed: the dispatch report and the schedule line
            "dispatcher_seconds_per_user": per_user,
            "dispatcher_seconds_fixed": fixed,
            "dispatcher_scans_per_run": ri["dispatcher_scans_per_run"],
            "play_item_bytes": ri["play_item_bytes"],
            "user_item_bytes": ri["user_item_bytes"],
            "catalog_bytes_per_track": ri["catalog_bytes_per_track"],
            "rollup_day_bytes_per_play": ri["rollup_day_bytes_per_play"],
            "rollup_item_bytes_by_plays": rollup_items,
            "rollup_other_bytes_per_user": ri["rollup_other_bytes_per_user"],
            # The rollups bench's writes less the dirty mark of each of its polls, which the poll
            # counts above (a poll with plays) measure already: the recompute's write units per play.
            "rollup_recompute_wru_per_play": round(max(0.0, (scenario["rollups_wru"] - scenario["polls"]
                                                             * with_plays["dynamodb_wru"]) / scenario["plays"]), 4)
            if scenario else 0.0,
            "page_view_rru_by_history": {size: v["default"]["read_units"] for size, v in page_view.items()},
            "page_view_ms": (max(v["default"]["ms"] for v in page_view.values()) if page_view else None),
            "import_wru_per_play": (imp.get("units") or {}).get("total_wru_per_play", 1.0),
            "import_rows_per_s": (imp.get("big") or {}).get("rows_per_s", 500.0),
            "export_plays_per_s": jsonl.get("plays_per_s", 500.0),
            "export_bytes_per_play": (jsonl["bytes"] / jsonl["rows"]) if jsonl.get("rows") else 300.0,
            "export_part_bytes": (jsonl["bytes"] / jsonl["parts"]) if jsonl.get("parts") else 8 * 1024**2,
            # each (name, dimensions) a metric; a log metric filter's metric unless EMF emits it too
            "custom_metrics": len(core) + len(set(facts["metric_filters"]) - {name for name, _ in core}),
            "custom_metrics_detailed": len(m.custom_metrics([t.value for t in USER_FAILURE_TYPES], detailed_on=True)),
            "code_facts": cost.code_facts(),
        }
        r["cost_inputs"] = inputs
        r["cost_personal"] = cost.personal(inputs, facts)
        r["cost_fleet"] = cost.fleet(inputs, facts)

def _cost_lines(d: dict[str, Any], title: str) -> list[str]:
    lines = [f"{title}: {d['total_usd']:.4f} USD/month, low end {d['total_usd_low']:.4f} "
             f"(dominant: {d['dominant_line']})"]
    for line in d["lines"]:
        if not line["quantity"] and not line["usd"]:
            continue
        free = f" - {line['free_quantity']:,.2f} free ({line['allowance']})" if line["free_quantity"] else ""
        lines.append(f"  {line['line']:62s} {line['quantity']:>14,.2f}{free} x {line['unit_price_usd']:.10g}"
                     f" = {line['usd']:8.4f}")
    return lines


def _table(results: dict[str, Any]) -> str:
    lines = ["", "PlayVault benchmark", "=" * 19]
    bounds = results.get("dynamodb_emulator_bound_by_emulator", {})
    for emulator, rows in results.get("throughput_by_emulator", {"moto_server": results["throughput"]}).items():
        lines.append(f"DynamoDB on {emulator}:")
        lines.append(f"{'Spotify latency':>16} | {'baseline u/s':>12} | " + " | ".join(
            f"worker c={c} u/s (speedup)" for c in rows[0]["worker"]))
        for row in rows:
            cells = " | ".join(f"{w['users_per_s']:>10.1f} (x{w['speedup']:>5.1f})" for w in row["worker"].values())
            lines.append(f"{row['latency_ms']:>13} ms | {row['baseline_users_per_s']:>12.1f} | {cells}")
        bound = bounds.get(emulator)
        if bound:
            lines.append(f"  bare rate of the worker's request mix: {bound['requests_per_s']} req/s "
                         f"({bound['threads']} threads)")
    lines.append("")
    lines.append(f"{'poll':36s} | spotify | dynamodb (+/msg) | WRU  | RRU  | KMS | log B")
    for name, c in results["poll_counts"].items():
        lines.append(f"{name:36s} | {c['spotify_requests']:7d} | {c['dynamodb_requests']:8d} "
                     f"(+{c['dynamodb_requests_per_message']})  | {c['dynamodb_wru']:4.1f} | {c['dynamodb_rru']:4.1f} "
                     f"| {c['kms_requests']:3d} | {c['log_bytes']}")
    split = results["message_split"]
    lines.append(f"idle poll, measured split: per user {split['per_user']}, per message {split['per_message']}")
    lines.append("")
    for month, personal in results["cost_personal"].items():
        for key, title in (("with_allowances", "with the always-free allowances"),
                           ("without_allowances", "without any allowance")):
            lines += _cost_lines(personal[key], f"Personal deployment, month {month}, {title}")
    for month, sizes in results["cost_fleet"].items():
        for fleet, c in sizes.items():
            lines.append(f"Month {month:>2}, fleet of {int(fleet):>7,}: variable "
                         f"{c['variable_per_1000_usd']:.4f} USD per 1,000 users (low end "
                         f"{c['variable_per_1000_usd_low']:.4f}) without allowances (dominant: "
                         f"{c['dominant_variable_line']}); total per 1,000 users "
                         f"{c['total_per_1000_usd_without_allowances']:.4f} without, "
                         f"{c['total_per_1000_usd_with_allowances']:.4f} with allowances")
    lines += _cost_lines(results["cost_fleet"]["1"]["1000"]["without_allowances"],
                         "Fleet of 1,000, month 1, without allowances")
    lines.append("")
    for name, r in results["cold_import"].items():
        lines.append(f"cold import {name:20s} median {r['median_ms']:6.1f} ms (min {r['min_ms']}, max {r['max_ms']});"
                     f" third-party modules alone {r['dependency_floor_median_ms']:6.1f} ms,"
                     f" PlayVault's own code {r['own_code_ms']:5.1f} ms")
    for r in results.get("dispatcher", []):
        if "error" in r:
            lines.append(f"dispatcher {r['users']:>7,} users: failed ({r['error'][-120:]})")
            continue
        lines.append(f"dispatcher {r['users']:>7,} users: {r['seconds']:7.2f} s, {r['users_per_s']:8.1f} users/s, "
                     f"{r['scan_pages']} Scan pages, {r['send_message_batch_calls']} SendMessageBatch, "
                     f"peak RSS {r['max_rss_mb_after']} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                       "POWERTOOLS_SERVICE_NAME": "playvault", "POWERTOOLS_METRICS_NAMESPACE": "PlayVault"})
    os.environ.pop("AWS_PROFILE", None)
    for path in (str(LAYER), str(ROOT / "local"), str(ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)
    from playvault_local.provision import DEV_CLIENT_ID, DEV_CLIENT_SECRET

    started = time.perf_counter()
    if args.only_cost:
        return _only_cost(args, started)
    moto, aws_url = _start_moto()
    emulator = None
    dynalite = None
    try:
        emulator, spotify_url = _start_emulator(DEV_CLIENT_ID, DEV_CLIENT_SECRET, "http://127.0.0.1:8765/auth/callback")
        bench = Bench(args, aws_url, spotify_url)
        from bench import imports as import_bench

        bench.results["import"] = import_bench.run(bench.recorder, aws_url, spotify_url, args.import_rows)
        _say(import_bench.summary(bench.results["import"]))
        if args.only_import:
            Path(args.out).with_name("results_import.json").write_text(
                json.dumps(bench.results["import"], indent=2) + "\n")
            return 0
        bench.poll_counts()
        bench.throughput(MOTO)
        if DYNALITE in args.emulators:
            from bench import dynalite as dynalite_mod

            try:
                dynalite = dynalite_mod.Dynalite(_free_port())
            except dynalite_mod.DynaliteUnavailable as exc:
                _say(f"== {DYNALITE} skipped: {exc}")
                bench.results["dynalite_unavailable"] = str(exc)
            else:
                bench.dynalite = dynalite
                bench.throughput(DYNALITE)
        stack = bench.provision("bench-dispatch", "dispatch")
        bench.cold_imports(stack)
        if args.dispatcher_users:
            bench.dispatcher(stack)
        if args.export_plays:
            from bench import export as export_bench

            _say(f"export: {args.export_plays} plays, JSON Lines and CSV")
            bench.results["export"] = export_bench.run(aws_url, args.export_plays)
        if args.rollup_sizes:
            from bench import rollups as rollups_bench

            _say(f"rollups: page views of users with {args.rollup_sizes} plays, rollup write units per play")
            measured = rollups_bench.run(bench.recorder, aws_url, tuple(args.rollup_sizes))
            bench.results.update(rollups_bench.results_keys(measured))
            _say(rollups_bench.summary(measured))
        bench.real_items()
        bench.cost()
    finally:
        if dynalite is not None:
            dynalite.stop()
        if emulator is not None:
            emulator.stop()
        moto.stop()

    return _write(args, bench.results, started)


def _only_cost(args: argparse.Namespace, started: float) -> int:
    try:
        previous = json.loads(Path(args.out).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--only-cost: cannot read the previous results {args.out}: {exc}") from None
    bench = Bench.__new__(Bench)  # no emulators: the measurements come from the previous run
    bench.args = args
    args.latency_ms = previous.get("latency_ms", args.latency_ms)
    args.users_per_message = previous.get("users_per_message", args.users_per_message)
    bench.results = dict(previous["details"])
    for key in ("page_view", "rollup_wru_per_play", "rollups"):
        if key in previous:
            bench.results[key] = previous[key]
    bench.real_items()
    bench.cost()
    return _write(args, bench.results, started)


def _write(args: argparse.Namespace, r: dict[str, Any], started: float) -> int:
    tc = str(r["template_user_concurrency"])

    def speedups(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        return {str(row["latency_ms"]): {c: w["speedup"] for c, w in row["worker"].items()} for row in rows}

    def shares(rows: list[dict[str, Any]], bound: float) -> dict[str, float]:
        best = {row["latency_ms"]: max(row["worker"].values(), key=lambda w: w["speedup"]) for row in rows}
        return {str(lat): round(w["dynamodb_requests_per_s"] / bound, 3) for lat, w in best.items()}

    by_emulator = r.get("throughput_by_emulator", {MOTO: r["throughput"]})
    bounds = r.get("dynamodb_emulator_bound_by_emulator", {MOTO: r["dynamodb_emulator_bound"]})
    personal = r["cost_personal"]
    split = r["message_split"]
    results = {
        "speedup": speedups(r["throughput"]),
        "worker_users_per_s": {str(row["latency_ms"]): {c: w["users_per_s"] for c, w in row["worker"].items()}
                               for row in r["throughput"]},
        "baseline_users_per_s": {str(row["latency_ms"]): row["baseline_users_per_s"] for row in r["throughput"]},
        "worker_share_of_dynamodb_emulator_bound": shares(r["throughput"], bounds[MOTO]["requests_per_s"]),
        "speedup_by_emulator": {name: speedups(rows) for name, rows in by_emulator.items()},
        "worker_share_of_emulator_bound_by_emulator": {
            name: shares(rows, bounds[name]["requests_per_s"]) for name, rows in by_emulator.items()},
        "emulator_bare_rate_requests_per_s": {name: b["requests_per_s"] for name, b in bounds.items()},
        "dynamodb_requests_per_idle_poll": split["per_user"]["dynamodb_requests"],
        "wru_per_idle_poll": split["per_user"]["dynamodb_wru"],
        "dynamodb_requests_per_message": split["per_message"]["dynamodb_requests"],
        "spotify_requests_per_idle_poll": r["poll_counts"]["idle"]["spotify_requests"],
        # Per month of history ("1", "12", "36"); the high end of the documented ranges, the low end beside it.
        "cost_personal_month_usd": {month: {
            "with_allowances": p["with_allowances"]["total_usd"],
            "with_allowances_low": p["with_allowances"]["total_usd_low"],
            "without_allowances": p["without_allowances"]["total_usd"],
            "without_allowances_low": p["without_allowances"]["total_usd_low"],
            "dominant_line_with_allowances": p["with_allowances"]["dominant_line"],
            "dominant_line_without_allowances": p["without_allowances"]["dominant_line"]}
            for month, p in personal.items()},
        "cost_fleet_variable_per_1000_usd": {month: {size: c["variable_per_1000_usd"] for size, c in sizes.items()}
                                             for month, sizes in r["cost_fleet"].items()},
        "cost_fleet_variable_per_1000_usd_low": {
            month: {size: c["variable_per_1000_usd_low"] for size, c in sizes.items()}
            for month, sizes in r["cost_fleet"].items()},
        "cost_fleet_dominant_variable_line": {month: {size: c["dominant_variable_line"] for size, c in sizes.items()}
                                              for month, sizes in r["cost_fleet"].items()},
        "cost_per_1000_users_month_usd": {month: {size: {k: v for k, v in c.items() if k != "without_allowances"}
                                                  for size, c in sizes.items()}
                                          for month, sizes in r["cost_fleet"].items()},
        "alarm_metrics": r["template_facts"]["alarm_metrics"],
        "triggered_queues": len(r["template_facts"]["triggered_queues"]),
        "dispatcher_scans_per_run": r["cost_inputs"]["dispatcher_scans_per_run"],
        "custom_metrics": r["cost_inputs"]["custom_metrics"],
        "custom_metrics_with_detailed_metrics": r["cost_inputs"]["custom_metrics_detailed"],
        "alarms": len(r["template_facts"]["alarms"]),
        "dashboard_metrics": r["template_facts"]["dashboard_metrics"],
        "cold_import_ms": {name: c["median_ms"] for name, c in r["cold_import"].items()},
        "cold_import_dependency_floor_ms": {name: c["dependency_floor_median_ms"]
                                            for name, c in r["cold_import"].items()},
        "dispatcher_users_per_s": {str(d["users"]): d.get("users_per_s") for d in r.get("dispatcher", [])},
        "import": {"rows_per_s": r["import"]["big"]["rows_per_s"], "peak_rss_mb": r["import"]["big"]["peak_rss_mb"],
                   "rows": r["import"]["big"]["rows_read"], "wru_per_play": r["import"]["units"]["plays_wru_per_play"],
                   "catalog_wru": r["import"]["units"]["catalog_wru"]},
        "export": {fmt: r["export"][fmt] for fmt in ("jsonl", "csv")} if "export" in r else None,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "latency_ms": args.latency_ms,
        "emulators": list(by_emulator),
        "users_per_message": args.users_per_message,
        "user_concurrency_template_default": int(tc),
        "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_seconds": round(time.perf_counter() - started, 1),
        # the rollups bench's own keys (bench/rollups.py results_keys), at the top as it writes them
        **{k: r[k] for k in ("page_view", "rollup_wru_per_play", "rollups") if k in r},
        "details": r,
    }
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(_table(r))
    print(f"\nresults: {args.out} ({results['run_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
