"""The emulator's TransactWriteItems (playvault_local.moto_transactions, installed by conftest):
a cancelled transaction undoes exactly its own items, never another request's writes, and never
copies a whole table."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws


@pytest.fixture
def table():
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                       {"AttributeName": "sk", "KeyType": "RANGE"}],
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                                  {"AttributeName": "sk", "AttributeType": "S"}])
        for sk in ("a", "b"):
            client.put_item(TableName="t", Item={"pk": {"S": "u"}, "sk": {"S": sk}, "n": {"N": "1"}})
        yield client


def items(client) -> dict[str, str]:
    rows = client.query(TableName="t", KeyConditionExpression="pk = :u", ExpressionAttributeValues={":u": {"S": "u"}})
    return {row["sk"]["S"]: row["n"]["N"] for row in rows["Items"]}


def failing_transaction(client) -> None:
    """A Put of a new item and an Update of `a` (both applied by moto in turn), then a failed check."""
    client.transact_write_items(TransactItems=[
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "u"}, "sk": {"S": "new"}, "n": {"N": "9"}}}},
        {"Update": {"TableName": "t", "Key": {"pk": {"S": "u"}, "sk": {"S": "a"}}, "UpdateExpression": "SET n = :n",
                    "ExpressionAttributeValues": {":n": {"N": "9"}}}},
        {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "u"}, "sk": {"S": "b"}},
                            "ConditionExpression": "attribute_not_exists(pk)"}},
    ])


def test_a_cancelled_transaction_undoes_its_own_items(table):
    with pytest.raises(ClientError) as caught:
        failing_transaction(table)
    assert caught.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert items(table) == {"a": "1", "b": "1"}


def test_a_successful_transaction_is_kept(table):
    table.transact_write_items(TransactItems=[
        {"Delete": {"TableName": "t", "Key": {"pk": {"S": "u"}, "sk": {"S": "a"}}}},
        {"Update": {"TableName": "t", "Key": {"pk": {"S": "u"}, "sk": {"S": "b"}}, "UpdateExpression": "SET n = :n",
                    "ExpressionAttributeValues": {":n": {"N": "2"}}}},
    ])
    assert items(table) == {"b": "2"}


def test_a_cancelled_transaction_keeps_another_requests_write_and_copies_no_table(table, monkeypatch):
    """moto's own rollback put back a copy of the whole table taken before the transaction: a write
    made meanwhile by another request (another thread of moto_server) was lost."""
    from moto.dynamodb.models import DynamoDBBackend, dynamodb_backends

    backend = dynamodb_backends["123456789012"]["us-east-1"]
    live = backend.tables["t"]
    real_get_item = DynamoDBBackend.get_item
    meanwhile = {"done": False}

    def get_item_with_a_concurrent_write(self, table_name, keys, *args, **kwargs):
        if not meanwhile["done"]:  # the first item the transaction reads: another request writes now
            meanwhile["done"] = True
            self.put_item("t", {"pk": {"S": "u"}, "sk": {"S": "other"}, "n": {"N": "5"}})
        return real_get_item(self, table_name, keys, *args, **kwargs)

    monkeypatch.setattr(DynamoDBBackend, "get_item", get_item_with_a_concurrent_write)
    with pytest.raises(ClientError):
        failing_transaction(table)
    monkeypatch.undo()
    assert items(table) == {"a": "1", "b": "1", "other": "5"}
    assert backend.tables["t"] is live  # no whole-table copy was made or put back
