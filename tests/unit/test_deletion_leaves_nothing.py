"""Delete my data leaves nothing of the user in any table of template.yaml, nor in the bucket.

One archive is built once for the module, through the functions as Lambda runs them (every call
checked against its role): two users sign in, are polled, have a gap, export, and import an export
(import jobs, resolve items, plays of source export); then one deletes their data. The tables are
read from template.yaml, so a table added there is covered here without a change."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from playvault import store
from playvault.config import AccountSettings, ImporterSettings
from playvault.store import users
from playvault_local import provision as prov
from playvault_local import template as tpl
from playvault_local.lambda_runtime import context_for, load_handler
from tests.conftest import REDIRECT_URI, iam_checked, stack_parameters
from tests.unit.helpers import upload_export
from tests.unit.test_account import Browser, Site, add_gap
from tests.unit.test_importer_function import export_zip
from tests.unit.test_worker import sqs_event, sqs_record, work_body

GONE, KEPT = "u-deleted-7f3a", "u-kept-91bc"  # ids no catalog name or hash can contain by chance
TABLES = sorted(tpl.resources_of_type(tpl.load(), "AWS::DynamoDB::Table"))


@dataclass
class Archive:
    before: dict[str, list[str]]  # table logical id -> every item as JSON, before the deletion
    after: dict[str, list[str]]
    keys_before: list[str]  # the bucket's keys
    keys_after: list[str]


def snapshot(stack: prov.Stack) -> tuple[dict[str, list[str]], list[str]]:
    dynamodb, s3 = boto3.client("dynamodb"), boto3.client("s3")
    tables = {}
    for logical in TABLES:
        items = []
        for page in dynamodb.get_paginator("scan").paginate(TableName=stack.name(logical), ConsistentRead=True):
            items += [json.dumps(item, default=str) for item in page["Items"]]
        tables[logical] = items
    listed = s3.list_objects_v2(Bucket=stack.name("UserFilesBucket")).get("Contents") or []
    return tables, [o["Key"] for o in listed]


def build_archive(stack: prov.Stack, emulator: Any) -> Archive:
    site = Site(lambda name: load_handler(stack.functions[name], stack.layer_paths),
                lambda name: context_for(stack.functions[name]), stack)
    worker = load_handler(stack.functions["WorkerFunction"], stack.layer_paths)
    importer = load_handler(stack.functions["ImporterFunction"], stack.layer_paths)
    s3, bucket = boto3.client("s3"), stack.name("UserFilesBucket")
    now = datetime.now(UTC)
    browsers = {}
    for user_id in (GONE, KEPT):
        emulator.state.add_user(user_id)
        browsers[user_id] = browser = Browser(site)
        assert browser.sign_in(user_id)["statusCode"] == 303
        emulator.state.simulate_listening(user_id, now - timedelta(hours=3), now - timedelta(minutes=1), 12)
        message = sqs_event(sqs_record(work_body([user_id], now)))
        answer = worker(message, context_for(stack.functions["WorkerFunction"]))
        assert answer == {"batchItemFailures": []}, answer
        add_gap(user_id)
        browser.post("/me/exports", {"csrf": browser.csrf(), "format": "csv"})
        site.run_jobs()
        _key, event = upload_export(s3, bucket, user_id, now, export_zip(12))
        importer(event, context_for(stack.functions["ImporterFunction"]))
    site.run_jobs()  # each import ended by starting a rebuild of its user's rollups
    before, keys_before = snapshot(stack)
    gone = browsers[GONE]
    assert gone.post("/me/delete", {"csrf": gone.csrf()})["statusCode"] == 303
    site.run_jobs()
    assert users.get(GONE) is None and users.get(KEPT) is not None
    after, keys_after = snapshot(stack)
    return Archive(before, after, keys_before, keys_after)


@pytest.fixture(scope="module")
def archive() -> Archive:
    from moto import mock_aws

    from spotify_emulator import EmulatorServer, EmulatorState

    state = EmulatorState(seed=7)
    state.register_client(prov.DEV_CLIENT_ID, prov.DEV_CLIENT_SECRET, [REDIRECT_URI])
    server = EmulatorServer(state).start()
    try:
        with pytest.MonkeyPatch.context() as monkeypatch, mock_aws():
            stack = prov.provision(parameters=stack_parameters(server.url, DeletionGraceSeconds="0"))
            for key, value in stack.env.items():
                monkeypatch.setenv(key, value)
            store.bind(AccountSettings.from_env())
            store.bind(ImporterSettings.from_env())
            with iam_checked(stack):
                return build_archive(stack, server)
    finally:
        server.stop()


def mentions(items: list[str], user_id: str) -> list[str]:
    return [item for item in items if user_id in item]


@pytest.mark.parametrize("table", TABLES)
def test_a_deleted_user_leaves_nothing_in_the_table(archive, table):
    assert mentions(archive.after[table], GONE) == [], f"{table} still holds items of the deleted user"
    if mentions(archive.before[table], GONE):
        # The user had data here, and the other user's is untouched.
        assert len(mentions(archive.after[table], KEPT)) == len(mentions(archive.before[table], KEPT))


def test_every_table_keyed_by_user_had_the_users_data_before(archive):
    keyed = ["UsersTable", "PlaysTable", "GapsTable", "SessionsTable", "ExportsTable", "ImportsTable", "RollupsTable"]
    assert all(mentions(archive.before[t], GONE) and mentions(archive.before[t], KEPT) for t in keyed)
    # job# and resolve# items: what the imports table held for the user
    assert any('"job#' in i for i in mentions(archive.before["ImportsTable"], GONE))
    assert any('"resolve#' in i for i in mentions(archive.before["ImportsTable"], GONE))
    # the rebuild's state, and its day to all items (each import ended with a rebuild)
    assert any('"state"' in i for i in mentions(archive.before["RollupsTable"], GONE))
    assert any('#all"' in i for i in mentions(archive.before["RollupsTable"], GONE))


def test_a_deleted_user_leaves_nothing_in_the_bucket(archive):
    assert [k for k in archive.keys_before if f"/{GONE}/" in k], "the scenario stored files of the user"
    assert [k for k in archive.keys_after if f"/{GONE}/" in k] == []
    assert sorted(k for k in archive.keys_after if f"/{KEPT}/" in k) == sorted(
        k for k in archive.keys_before if f"/{KEPT}/" in k)
