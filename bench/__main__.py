"""`make bench`: worker throughput vs the seed's sequential flow, exact request counts per poll, cost per
1,000 users per month, handler cold imports, dispatcher scale, a 100,000-play export's memory and
time (bench/export.py). All on local emulators: moto_server
(a subprocess on a free loopback port, stopped by its PID) and the Spotify emulator (a subprocess,
latency injected per request). Writes bench/results.json; BENCHMARKS.md explains the figures.
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

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "playvault"

# Worker messages per latency and concurrency; the reported figure is their median.
REPEATS = 3


def _args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--latency-ms", type=ints, default=[20, 100, 300], help="Spotify latency per call")
    parser.add_argument("--users-per-message", type=int, default=50)
    parser.add_argument("--user-concurrency", type=ints, default=None,
                        help="worker USER_CONCURRENCY values to measure (default: the template's, and "
                             "users-per-message)")
    parser.add_argument("--dispatcher-users", type=ints, default=[10_000, 100_000])
    parser.add_argument("--cold-runs", type=int, default=7)
    parser.add_argument("--export-plays", type=int, default=100_000, help="plays of the export entry (0: skip)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
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
        if self.proc.poll() is None:
            self.proc.terminate()  # by PID: only the process this bench started
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
        self.recorder.probe = None
        simplify_table_names(counts, table_names(stack))
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
    def throughput(self) -> None:
        from bench.scenario import UserSpec, invoke_captured, sqs_event
        from playvault_local.lambda_runtime import context_for

        args = self.args
        n = args.users_per_message
        stack = self.provision("bench-throughput", "throughput")
        template_concurrency = int(stack.template["Parameters"]["UserConcurrency"]["Default"])
        concurrencies = args.user_concurrency or sorted({template_concurrency, n})
        sealer = self.sealer(stack)
        workers = {c: self.load_worker(stack, c) for c in concurrencies}
        os.environ["USER_CONCURRENCY"] = str(template_concurrency)
        baseline = self._seed_archiver(stack)
        self.control.faults(latency_ms=0)
        # Warm every container and make tracks 0..99 known (throughput users play known tracks).
        warm = [UserSpec(f"warm{k}-{c}", 20, list(range(20 * k, 20 * k + 20))) for c in concurrencies for k in range(5)]
        self.make_users(warm, sealer)
        for c, (module, spec) in workers.items():
            invoke_captured(module.handler, sqs_event([u.user_id for u in warm if u.user_id.endswith(f"-{c}")]),
                            context_for(spec))
        self.make_users([UserSpec("warm-seed", 1, [0])], sealer)
        from playvault.spotify import Budget

        baseline.archive_user("warm-seed", Budget.seconds(60))

        rows = []
        for latency in args.latency_ms:
            _say(f"== throughput at {latency} ms Spotify latency, {n} users per message")
            tag = f"L{latency}"
            base_users = [UserSpec(f"seed-{tag}-{i}", 2, [(i * 7) % 100, (i * 13 + 5) % 100]) for i in range(n)]
            # The worker's message is short (a second or two) and the machine noisy: median of REPEATS.
            sets = {c: [[UserSpec(f"w{c}-{tag}-r{r}-{i}", 2, [(i * 7) % 100, (i * 13 + 5) % 100]) for i in range(n)]
                        for r in range(REPEATS)] for c in concurrencies}
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
                    inv = invoke_captured(module.handler, sqs_event([u.user_id for u in users]), context_for(spec))
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
        self.results["throughput"] = rows
        self.results["template_user_concurrency"] = template_concurrency
        self.results["dynamodb_emulator_bound"] = self._ddb_bare_rate(stack, max(concurrencies))
        _say(f"  moto_server bare rate: {self.results['dynamodb_emulator_bound']['requests_per_s']} DynamoDB req/s")

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

    def _ddb_bare_rate(self, stack: Any, threads: int, n: int = 2000) -> dict[str, Any]:
        """moto_server's own ceiling: n GetItem/UpdateItem (half each) from `threads` threads."""
        from botocore.config import Config

        client = self.recorder.uncounted_client("dynamodb", region_name="us-east-1", endpoint_url=self.aws_url,
                                                config=Config(max_pool_connections=threads))
        table = stack.name("StateTable")

        def one(i: int) -> None:
            key = {"name": {"S": f"bare-{i % 200}"}}
            if i % 2:
                client.get_item(TableName=table, Key=key)
            else:
                client.update_item(TableName=table, Key=key, UpdateExpression="SET updated_at = :t",
                                   ExpressionAttributeValues={":t": {"S": str(i)}})

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(100)))  # warm the connections
            started = time.perf_counter()
            list(pool.map(one, range(n)))
            seconds = time.perf_counter() - started
        return {"requests": n, "threads": threads, "seconds": round(seconds, 3),
                "requests_per_s": round(n / seconds, 1)}

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
        template["last_window"] = {"S": "2020_01_01_00"}  # polled long ago: every user is due

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
    def cost(self, stack: Any) -> None:
        from bench import cost
        from playvault import metrics as m
        from playvault.failures import FailureType

        r = self.results
        at100 = next((row for row in r["throughput"] if row["latency_ms"] == 100), r["throughput"][-1])
        tc = str(r["template_user_concurrency"])
        worker = at100["worker"].get(tc) or next(iter(at100["worker"].values()))
        n = self.args.users_per_message
        failure_types = len(list(FailureType))
        custom_metrics = (len(m.CATALOG) - 1) + failure_types  # UsersFailed exists once per FailureType
        resources = stack.template["Resources"].values()
        disp = [d for d in r.get("dispatcher") or [] if "error" not in d]
        if len(disp) >= 2:
            per_user = (disp[-1]["seconds"] - disp[0]["seconds"]) / (disp[-1]["users"] - disp[0]["users"])
            fixed = max(0.0, disp[0]["seconds"] - per_user * disp[0]["users"])
        elif disp:
            per_user, fixed = disp[0]["seconds"] / disp[0]["users"], 0.0
        else:
            per_user, fixed = 0.0005, 0.2
        user_bytes = r["item_bytes"]["user"]
        inputs = {
            "assumptions": {"plays_per_day": 30, "unknown_track_share": 0.3},
            "polls": r["poll_counts"],
            "users_per_message": n,
            "worker_seconds_per_message": worker["seconds"],
            "worker_memory_gb": stack.functions["WorkerFunction"].memory_mb / 1024,
            "dispatcher_memory_gb": stack.functions["DispatcherFunction"].memory_mb / 1024,
            "requeue_hops_per_message": 1.5,  # offsets uniform over 3600 s, 900 s per hop: 0,1,2,3 hops
            "requeue_seconds": r["requeue_hop"]["seconds"],
            "log_bytes_per_message": worker["log_bytes"],
            "log_bytes_per_requeue": r["requeue_hop"]["log_bytes"],
            "log_bytes_per_dispatch": 2000,
            "rru_per_message": 0.5,  # the rate gate: one eventually consistent GetItem of a small item
            "dispatcher_rru_per_user": (user_bytes / 4096) * 0.5,  # Scan: item sizes summed, /4 KB, x0.5
            "dispatcher_seconds_per_user": per_user,
            "dispatcher_seconds_fixed": fixed,
            "play_item_bytes": r["item_bytes"]["play"],
            "user_item_bytes": user_bytes,
            # Assumed: 5 worker containers, each recycled every 2 h, each decrypting 50 distinct data keys.
            "kms_decrypts_per_month": 5 * 12 * 30 * 50,
            # Assumed: the SQS event source's 5 pollers long-poll (20 s) an idle queue.
            "sqs_idle_polls_per_month": 5 * 3 * 60 * 24 * 30,
            "custom_metrics": custom_metrics,
            "alarms": sum(1 for res in resources if res.get("Type") == "AWS::CloudWatch::Alarm"),
            "dashboards": sum(1 for res in resources if res.get("Type") == "AWS::CloudWatch::Dashboard"),
        }
        self.results["cost_inputs"] = inputs
        self.results["cost_model_1000_users"] = cost.model(inputs, 1000)
        self.results["cost_per_1000_users_by_fleet"] = cost.per_thousand(inputs)
        self.results["cost_break_even_users_for_1_50"] = cost.break_even_users(inputs)
        self.results["cost_by_product_rule"] = cost.decisions(inputs)


def _table(results: dict[str, Any]) -> str:
    lines = ["", "PlayVault benchmark", "=" * 19]
    lines.append(f"{'Spotify latency':>16} | {'baseline u/s':>12} | " + " | ".join(
        f"worker c={c} u/s (speedup)" for c in results["throughput"][0]["worker"]))
    for row in results["throughput"]:
        cells = " | ".join(f"{w['users_per_s']:>10.1f} (x{w['speedup']:>5.1f})" for w in row["worker"].values())
        lines.append(f"{row['latency_ms']:>13} ms | {row['baseline_users_per_s']:>12.1f} | {cells}")
    bound = results["dynamodb_emulator_bound"]
    lines.append(f"moto_server bare DynamoDB rate: {bound['requests_per_s']} req/s ({bound['threads']} threads)")
    lines.append("")
    lines.append(f"{'poll':26s} | spotify | dynamodb (+/msg) | WRU  | RRU  | KMS | log B")
    for name, c in results["poll_counts"].items():
        lines.append(f"{name:26s} | {c['spotify_requests']:7d} | {c['dynamodb_requests']:8d} "
                     f"(+{c['dynamodb_requests_per_message']})  | {c['dynamodb_wru']:4.1f} | {c['dynamodb_rru']:4.1f} "
                     f"| {c['kms_requests']:3d} | {c['log_bytes']}")
    lines.append("")
    cm = results["cost_model_1000_users"]
    lines.append("Cost, 1,000 users, 30 plays/day, hourly polls (USD/month):")
    for line in cm["lines"]:
        lines.append(f"  {line['line']:55s} {line['quantity']:>14,.2f} x {line['unit_price_usd']:.10g} = "
                     f"{line['usd']:8.4f}  [{line['scales']}]")
    lines.append(f"  variable {cm['variable_usd']:.4f} + fixed {cm['fixed_usd']:.4f} = {cm['total_usd']:.4f}")
    for fleet, c in results["cost_per_1000_users_by_fleet"].items():
        lines.append(f"  per 1,000 users at a fleet of {int(fleet):>7,}: {c['total_per_1000_usd']:.4f}"
                     f" (variable {c['variable_per_1000_usd']:.4f}"
                     f" + fixed amortized {c['fixed_amortized_per_1000_usd']:.4f})")
    lines.append("  variable cost per 1,000 users under other product rules (not built):")
    for d in results["cost_by_product_rule"]:
        lines.append(f"    {d['variable_per_1000_usd']:7.4f}  {d['rule']}")
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
    moto, aws_url = _start_moto()
    emulator = None
    try:
        emulator, spotify_url = _start_emulator(DEV_CLIENT_ID, DEV_CLIENT_SECRET, "http://127.0.0.1:8765/auth/callback")
        bench = Bench(args, aws_url, spotify_url)
        bench.poll_counts()
        bench.throughput()
        stack = bench.provision("bench-dispatch", "dispatch")
        bench.cold_imports(stack)
        if args.dispatcher_users:
            bench.dispatcher(stack)
        bench.cost(stack)
        if args.export_plays:
            from bench import export as export_bench

            _say(f"export: {args.export_plays} plays, JSON Lines and CSV")
            bench.results["export"] = export_bench.run(aws_url, args.export_plays)
    finally:
        if emulator is not None:
            emulator.stop()
        moto.stop()

    r = bench.results
    tc = str(r["template_user_concurrency"])
    best = {row["latency_ms"]: max(row["worker"].values(), key=lambda w: w["speedup"]) for row in r["throughput"]}
    bound = r["dynamodb_emulator_bound"]["requests_per_s"]
    results = {
        "speedup": {str(row["latency_ms"]): {c: w["speedup"] for c, w in row["worker"].items()}
                    for row in r["throughput"]},
        "worker_users_per_s": {str(row["latency_ms"]): {c: w["users_per_s"] for c, w in row["worker"].items()}
                               for row in r["throughput"]},
        "baseline_users_per_s": {str(row["latency_ms"]): row["baseline_users_per_s"] for row in r["throughput"]},
        "worker_share_of_dynamodb_emulator_bound": {
            str(lat): round(w["dynamodb_requests_per_s"] / bound, 3) for lat, w in best.items()},
        "dynamodb_requests_per_idle_poll": r["poll_counts"]["idle"]["dynamodb_requests"],
        "spotify_requests_per_idle_poll": r["poll_counts"]["idle"]["spotify_requests"],
        "cost_per_1000_users_month_usd": {
            "variable": r["cost_model_1000_users"]["variable_usd"],
            "total_at_1000_users": r["cost_model_1000_users"]["total_usd"],
            "by_fleet_size": r["cost_per_1000_users_by_fleet"],
            "break_even_fleet_for_1_50": r["cost_break_even_users_for_1_50"],
            "variable_by_product_rule": {d["rule"]: d["variable_per_1000_usd"] for d in r["cost_by_product_rule"]},
        },
        "cold_import_ms": {name: c["median_ms"] for name, c in r["cold_import"].items()},
        "cold_import_dependency_floor_ms": {name: c["dependency_floor_median_ms"]
                                            for name, c in r["cold_import"].items()},
        "dispatcher_users_per_s": {str(d["users"]): d.get("users_per_s") for d in r.get("dispatcher", [])},
        "export": {fmt: r["export"][fmt] for fmt in ("jsonl", "csv")} if "export" in r else None,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "latency_ms": args.latency_ms,
        "users_per_message": args.users_per_message,
        "user_concurrency_template_default": int(tc),
        "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_seconds": round(time.perf_counter() - started, 1),
        "details": r,
    }
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(_table(r))
    print(f"\nresults: {args.out} ({results['run_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
