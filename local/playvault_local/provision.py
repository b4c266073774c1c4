"""Create template.yaml's resources on an AWS emulator (moto in-process or moto_server).

Tables (keys, indexes, TTL), buckets (encryption, lifecycle), queues (attributes, redrive policy),
KMS keys and aliases, SSM parameters: all read from the template, nothing listed twice. Resources
that have no local meaning (alarms, dashboards, log groups, topics, the HttpApi, bucket policies)
get a placeholder id so references resolve.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from playvault_local import template as tpl

LOCAL_REGION = "us-east-1"
LOCAL_ACCOUNT = "123456789012"
DEV_CLIENT_ID = "playvault-local-client"
DEV_CLIENT_SECRET = "playvault-local-secret"  # noqa: S105 - the emulator's dev credential, not a secret


@dataclass
class Stack:
    template: dict[str, Any]
    resolver: tpl.Resolver
    physical: dict[str, dict[str, str]]
    functions: dict[str, tpl.FunctionSpec]
    env: dict[str, str]  # every function's environment (they agree) + region/endpoint/credentials
    layer_paths: list[Path] = field(default_factory=list)

    def name(self, logical_id: str) -> str:
        return self.physical[logical_id]["Ref"]

    def queue_url(self, logical_id: str) -> str:
        return self.physical[logical_id]["Ref"]


def _client(service: str, endpoint_url: str | None, region: str) -> Any:
    return boto3.client(service, region_name=region, endpoint_url=endpoint_url)


def _create_table(ddb: Any, name: str, props: dict[str, Any]) -> dict[str, str]:
    request: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": "PAY_PER_REQUEST",
    }
    for index_kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if props.get(index_kind):
            request[index_kind] = props[index_kind]
    answer = ddb.create_table(**request)["TableDescription"]
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        ddb.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True}
        )
    return {"Ref": name, "Arn": answer["TableArn"]}


def _create_queue(sqs: Any, name: str, props: dict[str, Any]) -> dict[str, str]:
    attributes = {}
    for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds",
                "MaximumMessageSize"):
        if key in props:
            attributes[key] = str(props[key])
    if "RedrivePolicy" in props:
        policy = props["RedrivePolicy"]
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": policy["deadLetterTargetArn"], "maxReceiveCount": int(policy["maxReceiveCount"])}
        )
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return {"Ref": url, "Arn": arn, "QueueName": name}


def _create_bucket(s3: Any, name: str, props: dict[str, Any]) -> dict[str, str]:
    s3.create_bucket(Bucket=name)
    encryption = props.get("BucketEncryption")
    if encryption:
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]}
                      for rule in encryption["ServerSideEncryptionConfiguration"]]})
    rules = (props.get("LifecycleConfiguration") or {}).get("Rules") or []
    if rules:
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [
            {"ID": rule["Id"], "Status": rule["Status"], "Filter": {"Prefix": rule.get("Prefix", "")},
             **({"Expiration": {"Days": int(rule["ExpirationInDays"])}} if "ExpirationInDays" in rule else {}),
             **({"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": int(
                 rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])}}
                if "AbortIncompleteMultipartUpload" in rule else {})}
            for rule in rules]})
    return {"Ref": name, "Arn": f"arn:aws:s3:::{name}", "DomainName": f"{name}.s3.amazonaws.com"}


def provision(
    template_path: Path | str = tpl.TEMPLATE_PATH,
    *,
    endpoint_url: str | None = None,
    region: str = LOCAL_REGION,
    prefix: str = "playvault-local",
    parameters: dict[str, str] | None = None,
    client_id: str = DEV_CLIENT_ID,
    client_secret: str = DEV_CLIENT_SECRET,
) -> Stack:
    """Provision every emulatable resource of the template; returns names and function specs.

    With endpoint_url None the calls go wherever boto3 goes (moto's mock_aws in unit tests).
    """
    template = tpl.load(template_path)
    physical: dict[str, dict[str, str]] = {}
    resolver = tpl.Resolver(template, physical, parameters, region=region, account=LOCAL_ACCOUNT)
    resources = template["Resources"]

    ddb = _client("dynamodb", endpoint_url, region)
    for logical, res in tpl.resources_of_type(template, "AWS::DynamoDB::Table").items():
        physical[logical] = _create_table(ddb, f"{prefix}-{logical}", resolver.value(res["Properties"]))

    s3 = _client("s3", endpoint_url, region)
    for logical, res in tpl.resources_of_type(template, "AWS::S3::Bucket").items():
        # Bucket names are global and lower-case; only the properties S3 itself enforces are applied.
        props = res.get("Properties") or {}
        physical[logical] = _create_bucket(s3, f"{prefix}-{logical}".lower(), {
            k: resolver.value(v) for k, v in props.items() if k in ("BucketEncryption", "LifecycleConfiguration")})

    kms = _client("kms", endpoint_url, region)
    for logical, res in tpl.resources_of_type(template, "AWS::KMS::Key").items():
        meta = kms.create_key(Description=str(res["Properties"].get("Description", logical)))["KeyMetadata"]
        physical[logical] = {"Ref": meta["KeyId"], "Arn": meta["Arn"], "KeyId": meta["KeyId"]}
    for logical, res in tpl.resources_of_type(template, "AWS::KMS::Alias").items():
        props = resolver.value(res["Properties"])
        kms.create_alias(AliasName=props["AliasName"], TargetKeyId=props["TargetKeyId"])
        physical[logical] = {"Ref": props["AliasName"]}

    # Dead-letter queues first: the queues that redrive to them reference their ARN.
    sqs = _client("sqs", endpoint_url, region)
    queues = tpl.resources_of_type(template, "AWS::SQS::Queue")
    for logical in sorted(queues, key=lambda q: "RedrivePolicy" in (queues[q].get("Properties") or {})):
        props = resolver.value(queues[logical].get("Properties") or {})
        physical[logical] = _create_queue(sqs, f"{prefix}-{logical}", props)

    # Functions run in-process; their name and ARN are what Lambda would give them (the jobs function
    # invokes the importer by name, and its role names the importer's ARN).
    for logical, res in tpl.resources_of_type(template, "AWS::Serverless::Function").items():
        name = str(resolver.value((res.get("Properties") or {}).get("FunctionName") or f"{prefix}-{logical}"))
        physical[logical] = {"Ref": name, "Arn": f"arn:aws:lambda:{region}:{LOCAL_ACCOUNT}:function:{name}"}

    for logical in resources:  # placeholders for what has no local counterpart
        physical.setdefault(logical, {"Ref": f"{prefix}-{logical}",
                                      "Arn": f"arn:aws:local:{region}:{LOCAL_ACCOUNT}:{logical}"})

    specs = tpl.functions(template, resolver)
    env: dict[str, str] = {}
    for spec in specs.values():
        for key, value in spec.environment.items():
            if env.setdefault(key, value) != value:
                raise tpl.TemplateError(f"functions disagree on {key}; the local runner shares one environment")

    ssm = _client("ssm", endpoint_url, region)
    for res in tpl.resources_of_type(template, "AWS::SSM::Parameter").values():
        props = resolver.value(res["Properties"])
        value = client_id if props["Name"] == env.get("SPOTIFY_CLIENT_ID_PARAM") else props["Value"]
        ssm.put_parameter(Name=props["Name"], Value=value, Type=props.get("Type", "String"), Overwrite=True)
    # The client secret is a SecureString the operator creates (CloudFormation cannot): do it here.
    if env.get("SPOTIFY_CLIENT_SECRET_PARAM"):
        ssm.put_parameter(Name=env["SPOTIFY_CLIENT_SECRET_PARAM"], Value=client_secret, Type="SecureString",
                          Overwrite=True)

    # Reminder e-mails: the operator verifies the sender address in SES (README, Operate); do it here.
    if env.get("NOTIFICATION_SENDER"):
        _client("ses", endpoint_url, region).verify_email_identity(EmailAddress=env["NOTIFICATION_SENDER"])

    env.update({"AWS_REGION": region, "AWS_DEFAULT_REGION": region})
    env.setdefault("AWS_ACCESS_KEY_ID", os.environ.get("AWS_ACCESS_KEY_ID", "testing"))
    env.setdefault("AWS_SECRET_ACCESS_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    return Stack(template, resolver, physical, specs, env, tpl.layer_paths(template))
