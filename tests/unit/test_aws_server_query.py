"""The local moto_server's Query of one partition (aws_server._query_one_partition) answers exactly
what moto answers: same items, same order, pages and direction; scans still see every item. Run in
a child process so the patch stays out of this one."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, random
import boto3
from moto import mock_aws
from playvault_local import aws_server

with mock_aws():
    c = boto3.client("dynamodb", region_name="us-east-1")
    c.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                   KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                   AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                         {"AttributeName": "sk", "AttributeType": "S"}])
    rng = random.Random(7)
    for i in range(300):
        c.put_item(TableName="t", Item={"pk": {"S": f"u{i % 7}"}, "sk": {"S": f"{rng.random():.6f}"}})

    def answers():
        out = {}
        for forward in (True, False):
            keys = []
            for page in c.get_paginator("query").paginate(
                    TableName="t", KeyConditionExpression="pk = :u AND sk BETWEEN :a AND :b",
                    ExpressionAttributeValues={":u": {"S": "u3"}, ":a": {"S": "0.2"}, ":b": {"S": "0.8"}},
                    ScanIndexForward=forward, PaginationConfig={"PageSize": 7}):
                keys += [i["sk"]["S"] for i in page["Items"]]
            out[str(forward)] = keys
        out["missing"] = c.query(TableName="t", KeyConditionExpression="pk = :u",
                                 ExpressionAttributeValues={":u": {"S": "nobody"}})["Items"]
        out["scan"] = len(c.scan(TableName="t")["Items"])
        return out

    before = answers()
    aws_server._query_one_partition()
    print(json.dumps({"before": before, "after": answers()}))
"""


def test_a_query_of_one_partition_answers_what_moto_answers():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["after"] == result["before"]
    assert len(result["before"]["True"]) > 10 and result["before"]["False"] == result["before"]["True"][::-1]
    assert result["before"]["scan"] == 300 and result["before"]["missing"] == []
