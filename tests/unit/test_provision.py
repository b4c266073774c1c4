"""The local stack is provisioned from template.yaml: whatever the template declares exists."""

from __future__ import annotations

import json

import boto3

from playvault_local import template as tpl


def test_every_table_of_the_template_exists_with_its_keys_and_ttl(aws_env):
    ddb = boto3.client("dynamodb")
    tables = tpl.resources_of_type(aws_env.template, "AWS::DynamoDB::Table")
    assert tables, "template declares no tables"
    for logical, resource in tables.items():
        described = ddb.describe_table(TableName=aws_env.name(logical))["Table"]
        assert described["KeySchema"] == resource["Properties"]["KeySchema"]
        ttl = resource["Properties"].get("TimeToLiveSpecification")
        if ttl:
            status = ddb.describe_time_to_live(TableName=aws_env.name(logical))["TimeToLiveDescription"]
            assert status["AttributeName"] == ttl["AttributeName"]


def test_work_queue_redrives_to_its_dead_letter_queue(aws_env):
    sqs = boto3.client("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=aws_env.queue_url("WorkQueue"), AttributeNames=["All"])["Attributes"]
    policy = json.loads(attrs["RedrivePolicy"])
    assert policy["deadLetterTargetArn"] == aws_env.physical["DeadLetterQueue"]["Arn"]
    assert policy["maxReceiveCount"] == int(aws_env.resolver.parameters["MaxReceiveCount"])


def test_function_environment_resolves_to_local_names(aws_env):
    worker = aws_env.functions["WorkerFunction"]
    assert worker.environment["USERS_TABLE"] == aws_env.name("UsersTable")
    assert worker.environment["WORK_QUEUE_URL"] == aws_env.queue_url("WorkQueue")
    assert worker.environment["TOKEN_KEY_ID"] == aws_env.physical["TokenKey"]["Arn"]
    ssm = boto3.client("ssm")
    secret = ssm.get_parameter(Name=worker.environment["SPOTIFY_CLIENT_SECRET_PARAM"], WithDecryption=True)
    assert secret["Parameter"]["Type"] == "SecureString"
