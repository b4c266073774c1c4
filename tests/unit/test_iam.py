"""The local IAM check (playvault_local.iam): the evaluator, the mapping of calls to IAM requests,
which function a call belongs to, the roles read from the translated template, and a role missing
one permission failing the invocation that needs it."""

from __future__ import annotations

import copy
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from playvault_local import iam
from playvault_local.iam import IamCheck, IamError, Locator, Request, Statement, evaluate, requests_for

TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/plays"
WHERE = Locator("us-east-1", "123456789012", {
    "alias/playvault-dev-tokens": "arn:aws:kms:us-east-1:123456789012:key/k-1",
    "k-1": "arn:aws:kms:us-east-1:123456789012:key/k-1"})


def statement(effect: str = "Allow", action: object = "dynamodb:GetItem", resource: object = TABLE,
              **extra: object) -> Statement:
    return Statement.parse({"Effect": effect, "Action": action, "Resource": resource, **extra}, "test")


# ---------------------------------------------------------------- the evaluator
def test_an_allow_statement_allows_its_action_on_its_resource_only():
    allow = [statement()]
    assert evaluate(allow, Request("dynamodb:GetItem", TABLE)).allowed
    assert not evaluate(allow, Request("dynamodb:PutItem", TABLE)).allowed
    assert not evaluate(allow, Request("dynamodb:GetItem", TABLE + "x")).allowed
    assert evaluate(allow, Request("dynamodb:PutItem", TABLE)).reason == "no statement allows"


def test_actions_match_case_insensitively_with_wildcards_resources_case_sensitively():
    allow = [statement(action="DynamoDB:get*", resource="arn:aws:s3:::bucket/imports/*")]
    assert evaluate(allow, Request("dynamodb:GetItem", "arn:aws:s3:::bucket/imports/u/1/f.zip")).allowed
    assert not evaluate(allow, Request("dynamodb:GetItem", "arn:aws:s3:::bucket/IMPORTS/u")).allowed
    assert not evaluate(allow, Request("dynamodb:PutItem", "arn:aws:s3:::bucket/imports/u")).allowed
    one_char = [statement(resource="arn:aws:s3:::bucket/?")]
    assert evaluate(one_char, Request("dynamodb:GetItem", "arn:aws:s3:::bucket/a")).allowed
    assert not evaluate(one_char, Request("dynamodb:GetItem", "arn:aws:s3:::bucket/ab")).allowed


def test_an_explicit_deny_wins_over_any_allow():
    statements = [statement(action="dynamodb:*"), statement("Deny", action="dynamodb:DeleteItem")]
    assert evaluate(statements, Request("dynamodb:GetItem", TABLE)).allowed
    decision = evaluate(statements, Request("dynamodb:DeleteItem", TABLE))
    assert not decision.allowed and decision.reason == "explicit deny"


def test_not_action_allows_everything_but_the_listed_actions():
    statements = [Statement.parse({"Effect": "Allow", "NotAction": "s3:DeleteObject", "Resource": "*"}, "t")]
    assert evaluate(statements, Request("s3:GetObject", "arn:aws:s3:::b/k")).allowed
    assert not evaluate(statements, Request("s3:DeleteObject", "arn:aws:s3:::b/k")).allowed


def test_string_equals_on_the_kms_encryption_context():
    allow = [statement(action="kms:Decrypt", resource="*",
                       Condition={"StringEquals": {"kms:EncryptionContext:app": "playvault"}})]
    ours = {"kms:EncryptionContext:app": "playvault", "kms:EncryptionContext:purpose": "tokens"}
    assert evaluate(allow, Request("kms:Decrypt", "k", ours)).allowed
    assert not evaluate(allow, Request("kms:Decrypt", "k", {"kms:EncryptionContext:app": "other"})).allowed
    assert not evaluate(allow, Request("kms:Decrypt", "k", {})).allowed  # a missing key never equals
    # condition keys are case-insensitive
    assert evaluate(allow, Request("kms:Decrypt", "k", {"KMS:EncryptionContext:App": "playvault"})).allowed


def test_string_like_for_all_values_bool_null_and_if_exists():
    like = [statement(action="s3:ListBucket", resource="*", Condition={"StringLike": {"s3:prefix": "imports/*"}})]
    assert evaluate(like, Request("s3:ListBucket", "b", {"s3:prefix": "imports/u1/"})).allowed
    assert not evaluate(like, Request("s3:ListBucket", "b", {"s3:prefix": "exports/u1/"})).allowed
    all_values = [statement(action="kms:Decrypt", resource="*",
                            Condition={"ForAllValues:StringLike": {"kms:EncryptionContextKeys": ["app", "purp*"]}})]
    assert evaluate(all_values, Request("kms:Decrypt", "k", {"kms:EncryptionContextKeys": ["app", "purpose"]})).allowed
    assert not evaluate(all_values, Request("kms:Decrypt", "k", {"kms:EncryptionContextKeys": ["app", "x"]})).allowed
    assert evaluate(all_values, Request("kms:Decrypt", "k", {})).allowed  # no values: vacuously true
    tls = [statement("Deny", action="s3:*", resource="*", Condition={"Bool": {"aws:SecureTransport": "false"}}),
           statement(action="s3:GetObject", resource="*")]
    assert not evaluate(tls, Request("s3:GetObject", "o", {"aws:SecureTransport": False})).allowed
    assert evaluate(tls, Request("s3:GetObject", "o", {"aws:SecureTransport": True})).allowed
    null = [statement(action="s3:PutObject", resource="*",
                      Condition={"Null": {"s3:x-amz-server-side-encryption": "false"}})]
    assert evaluate(null, Request("s3:PutObject", "o", {"s3:x-amz-server-side-encryption": "AES256"})).allowed
    assert not evaluate(null, Request("s3:PutObject", "o", {})).allowed
    if_exists = [statement(action="s3:PutObject", resource="*",
                           Condition={"StringEqualsIfExists": {"s3:x-amz-server-side-encryption": "AES256"}})]
    assert evaluate(if_exists, Request("s3:PutObject", "o", {})).allowed
    assert not evaluate(if_exists, Request("s3:PutObject", "o", {"s3:x-amz-server-side-encryption": "aws:kms"})).allowed


def test_an_operator_the_check_cannot_evaluate_fails_when_the_role_is_read():
    with pytest.raises(IamError, match="NumericLessThan"):
        statement(Condition={"NumericLessThan": {"s3:max-keys": "10"}})


def test_the_closest_statement_names_the_same_action_on_another_resource():
    statements = [statement(action="dynamodb:BatchWriteItem", resource=TABLE + "-gaps"), statement()]
    text = iam.closest(statements, Request("dynamodb:BatchWriteItem", TABLE))
    assert "BatchWriteItem" in text and TABLE + "-gaps" in text and "same action, another resource" in text


# ---------------------------------------------------------------- calls -> the requests IAM authorizes
def test_s3_calls_map_to_the_actions_iam_authorizes():
    def one(operation: str, **params: object) -> tuple[str, str, dict]:
        (request,) = requests_for("s3", operation, {"Bucket": "files", **params}, WHERE)
        return request.action, request.resource, request.context

    assert one("HeadObject", Key="imports/u/1/x.zip")[:2] == ("s3:GetObject", "arn:aws:s3:::files/imports/u/1/x.zip")
    assert one("UploadPart", Key="exports/u/e.csv")[0] == "s3:PutObject"
    assert one("CompleteMultipartUpload", Key="exports/u/e.csv")[0] == "s3:PutObject"
    assert one("AbortMultipartUpload", Key="k")[0] == "s3:AbortMultipartUpload"
    assert one("ListObjectsV2", Prefix="imports/u/") == ("s3:ListBucket", "arn:aws:s3:::files",
                                                         {"s3:prefix": "imports/u/"})
    assert one("ListMultipartUploads", Prefix="exports/u/")[:2] == ("s3:ListBucketMultipartUploads",
                                                                    "arn:aws:s3:::files")
    deletes = requests_for("s3", "DeleteObjects", {"Bucket": "files", "Delete": {"Objects": [{"Key": "a"},
                                                                                           {"Key": "b"}]}}, WHERE)
    assert [(r.action, r.resource) for r in deletes] == [("s3:DeleteObject", "arn:aws:s3:::files/a"),
                                                         ("s3:DeleteObject", "arn:aws:s3:::files/b")]
    with pytest.raises(IamError, match="PutBucketAcl"):
        requests_for("s3", "PutBucketAcl", {"Bucket": "files"}, WHERE)


def test_dynamodb_calls_map_per_table_index_and_transaction_item():
    (query,) = requests_for("dynamodb", "Query", {"TableName": "sessions", "IndexName": "by_user"}, WHERE)
    assert query.resource == "arn:aws:dynamodb:us-east-1:123456789012:table/sessions/index/by_user"
    batch = requests_for("dynamodb", "BatchWriteItem", {"RequestItems": {"plays": [], "gaps": []}}, WHERE)
    assert [(r.action, r.resource.rsplit("/", 1)[1]) for r in batch] == [("dynamodb:BatchWriteItem", "plays"),
                                                                          ("dynamodb:BatchWriteItem", "gaps")]
    transaction = requests_for("dynamodb", "TransactWriteItems", {"TransactItems": [
        {"Put": {"TableName": "users"}}, {"Update": {"TableName": "state"}},
        {"ConditionCheck": {"TableName": "users"}}, {"Delete": {"TableName": "users"}}]}, WHERE)
    assert [(r.action, r.resource.rsplit("/", 1)[1]) for r in transaction] == [
        ("dynamodb:PutItem", "users"), ("dynamodb:UpdateItem", "state"), ("dynamodb:ConditionCheckItem", "users"),
        ("dynamodb:DeleteItem", "users")]


def test_sqs_kms_ssm_and_ses_requests_name_the_resource_arn_and_condition_keys():
    (send,) = requests_for("sqs", "SendMessageBatch", {"QueueUrl": "http://127.0.0.1:5000/123456789012/work"}, WHERE)
    assert (send.action, send.resource) == ("sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789012:work")
    (decrypt,) = requests_for("kms", "Decrypt", {"KeyId": "alias/playvault-dev-tokens",
                                                 "EncryptionContext": {"app": "playvault", "purpose": "t"}}, WHERE)
    assert decrypt.resource == "arn:aws:kms:us-east-1:123456789012:key/k-1"
    assert decrypt.context == {"kms:EncryptionContext:app": "playvault", "kms:EncryptionContext:purpose": "t",
                               "kms:EncryptionContextKeys": ["app", "purpose"]}
    (param,) = requests_for("ssm", "GetParameter", {"Name": "/playvault/spotify/client-secret"}, WHERE)
    assert param.resource == "arn:aws:ssm:us-east-1:123456789012:parameter/playvault/spotify/client-secret"
    (plain,) = requests_for("ssm", "GetParameter", {"Name": "secret"}, WHERE)
    assert plain.resource == "arn:aws:ssm:us-east-1:123456789012:parameter/secret"
    (mail,) = requests_for("ses", "SendEmail", {"Source": "PlayVault <reminders@example.org>"}, WHERE)
    assert (mail.action, mail.resource, mail.context) == (
        "ses:SendEmail", "arn:aws:ses:us-east-1:123456789012:identity/reminders@example.org",
        {"ses:FromAddress": "reminders@example.org"})


# ---------------------------------------------------------------- which function is calling
def test_threads_a_function_starts_make_its_calls_and_nothing_outside_is_attributed():
    assert iam.caller() is None
    with iam.invoked("WorkerFunction"), ThreadPoolExecutor(max_workers=4) as pool:
        assert iam.caller() == "WorkerFunction"
        assert set(pool.map(lambda _: iam.caller(), range(8))) == {"WorkerFunction"}
    assert iam.caller() is None


def test_a_call_no_function_owns_while_two_functions_run_fails_loudly():
    entered, release = threading.Barrier(3), threading.Event()
    seen: dict[str, str | None] = {}

    def run(function: str) -> None:
        with iam.invoked(function):
            seen[function] = iam.caller()  # the invoking threads know their own function
            entered.wait(timeout=10)
            release.wait(timeout=10)

    threads = [threading.Thread(target=run, args=(f,)) for f in ("AuthFunction", "WorkerFunction")]
    for thread in threads:
        thread.start()
    try:
        entered.wait(timeout=10)
        with pytest.raises(IamError, match="AuthFunction, WorkerFunction run at once"):
            iam.caller()
    finally:
        release.set()
        for thread in threads:
            thread.join()
    assert seen == {"AuthFunction": "AuthFunction", "WorkerFunction": "WorkerFunction"}


# ---------------------------------------------------------------- roles from the translated template
def test_roles_are_resolved_to_the_local_stacks_arns_with_their_conditions(aws_env):
    check = IamCheck.for_stack(aws_env)
    assert set(check.roles) == set(aws_env.functions)
    worker = check.roles["WorkerFunction"]
    plays = aws_env.physical["PlaysTable"]["Arn"]
    assert evaluate(worker.statements, Request("dynamodb:PutItem", plays)).allowed  # conditional puts
    assert not evaluate(worker.statements, Request("dynamodb:BatchWriteItem", plays)).allowed
    assert not evaluate(worker.statements, Request("dynamodb:Scan", plays)).allowed
    key = aws_env.physical["TokenKey"]["Arn"]
    assert evaluate(worker.statements, Request("kms:Decrypt", key, {"kms:EncryptionContext:app": "playvault"})).allowed
    assert not evaluate(worker.statements, Request("kms:Decrypt", key, {"kms:EncryptionContext:app": "x"})).allowed
    assert "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole" in worker.managed_policy_arns
    # NotificationSender is empty here: the dispatcher's conditional statements are left out (AWS::NoValue)
    dispatcher = check.roles["DispatcherFunction"]
    assert not any("ses:SendEmail" in s.actions for s in dispatcher.statements)



def test_the_jobs_function_may_invoke_the_importer_and_nothing_else_and_no_other_function_may(aws_env):
    """Import continuations: the jobs function hands a due one to the importer (an asynchronous
    invocation). That grant names the importer only; no other role can invoke any function."""
    check = IamCheck.for_stack(aws_env)
    importer = aws_env.physical["ImporterFunction"]["Arn"]
    assert evaluate(check.roles["JobsFunction"].statements, Request("lambda:InvokeFunction", importer)).allowed
    for function, role in check.roles.items():
        for target in aws_env.functions:
            allowed = evaluate(role.statements, Request("lambda:InvokeFunction", aws_env.physical[target]["Arn"]))
            assert allowed.allowed == ((function, target) == ("JobsFunction", "ImporterFunction")), (function, target)
        assert not any("lambda:*" in s.actions or "*" in s.actions for s in role.statements), function
    (invoke,) = requests_for("lambda", "Invoke", {"FunctionName": aws_env.name("ImporterFunction")}, check.locator)
    assert (invoke.action, invoke.resource) == ("lambda:InvokeFunction", importer)


def test_the_jobs_function_invoking_the_importer_is_checked_and_refused_without_the_grant(
        aws_env, load_function, lambda_context, lambda_invocations):
    from playvault import clock
    from playvault.jobs import JobMessage
    from playvault_local.events import sqs_event
    from playvault_local.telemetry import AwsCallHooks

    clock.set_clock(lambda: datetime(2026, 12, 1, tzinfo=UTC))
    jobs = load_function("JobsFunction")
    body = JobMessage(kind="import", user_id="alice", import_job_id="job#1", not_before=0).model_dump_json()
    message = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": body, "Attributes": {}, "MD5OfBody": "x"}
    event = sqs_event([message], aws_env.physical["JobsQueue"]["Arn"])
    assert jobs(event, lambda_context("JobsFunction")) == {"batchItemFailures": []}
    assert lambda_invocations == [(aws_env.name("ImporterFunction"), "Event",
                                   {"user_id": "alice", "job_id": "job#1", "not_before": 0})]
    refused = IamCheck.for_stack(aws_env, translated=iam.without_action(iam.translated_template(), "JobsFunction",
                                                                       "lambda:InvokeFunction"))
    hooks = AwsCallHooks(iam=refused, invoke=lambda *args: 202)
    hooks.install()
    try:
        jobs = load_function("JobsFunction")
        assert jobs(event, lambda_context("JobsFunction")) == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    finally:
        hooks.uninstall()
    (denial,) = refused.denials
    assert (denial.function, denial.action, denial.resource) == (
        "JobsFunction", "lambda:InvokeFunction", aws_env.physical["ImporterFunction"]["Arn"])


# ---------------------------------------------------------------- a missing permission fails the invocation
def test_a_role_without_one_permission_fails_the_invocation_naming_function_action_and_resource(
        aws_env, load_function, lambda_context):
    from playvault_local.telemetry import AwsCallHooks

    translated = iam.translated_template()
    check = IamCheck.for_stack(aws_env, translated=iam.without_action(translated, "AuthFunction", "dynamodb:PutItem"))
    hooks = AwsCallHooks(iam=check)
    login = load_function("AuthFunction")
    event = json.loads((Path(__file__).parents[1] / "events" / "http_api_auth_login.json").read_text())
    hooks.install()
    try:
        answer = login(copy.deepcopy(event), lambda_context("AuthFunction"))
    finally:
        hooks.uninstall()
    assert answer["statusCode"] == 500  # the AccessDenied reached the function, as on AWS
    state = aws_env.physical["StateTable"]["Arn"]
    assert [(d.function, d.action, d.resource) for d in check.denials] == [("AuthFunction", "dynamodb:PutItem",
                                                                            state)]
    assert "dynamodb:GetItem" in check.denials[0].closest  # the State table's statement, PutItem removed
    with pytest.raises(AssertionError, match=f"AuthFunction may not dynamodb:PutItem on {state}"):
        check.raise_if_denied()
    # the unedited role allows the same invocation
    assert IamCheck.for_stack(aws_env, translated=translated).roles["AuthFunction"].statements


def test_without_action_refuses_an_action_the_role_does_not_name():
    with pytest.raises(ValueError, match="does not name dynamodb:Scan"):
        iam.without_action(iam.translated_template(), "AuthFunction", "dynamodb:Scan")


def test_presigned_urls_and_posts_are_checked_at_signing_and_a_denial_is_recorded_not_raised(aws_env):
    import boto3

    from playvault.imports import presigned_upload, upload_id_key
    from playvault_local.telemetry import AwsCallHooks

    bucket = aws_env.name("UserFilesBucket")
    translated = iam.translated_template()
    allowed = IamCheck.for_stack(aws_env, translated=translated)
    refused = IamCheck.for_stack(aws_env, translated=iam.without_action(translated, "AccountFunction", "s3:PutObject"))
    for check in (allowed, refused):
        hooks = AwsCallHooks(iam=check)
        hooks.install()
        try:
            s3 = boto3.client("s3")
            with iam.invoked("AccountFunction"):
                upload = presigned_upload(s3, bucket, "alice", datetime(2026, 12, 1, tzinfo=UTC),
                                          upload_key=upload_id_key("the stack's client secret"))
                s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "exports/alice/e.csv"})
            assert upload["fields"]["key"].startswith("imports/alice/")  # signed either way, as on AWS
        finally:
            hooks.uninstall()
    assert allowed.checked == 2 and allowed.denials == []
    unused = allowed.unused()["AccountFunction"]
    assert "sqs:SendMessage on JobsQueue" in unused  # granted, and no call used it
    assert "s3:PutObject on UserFilesBucket/imports/*" not in unused
    assert "s3:GetObject on UserFilesBucket/exports/*" not in unused
    (denial,) = refused.denials
    assert (denial.function, denial.action, denial.raised) == ("AccountFunction", "s3:PutObject", False)
    assert denial.resource.startswith(f"arn:aws:s3:::{bucket}/imports/alice/")
    assert denial.resource == f"arn:aws:s3:::{bucket}/{upload['key']}"  # the one key the form may write


def test_a_role_conditioned_on_a_key_the_check_never_supplies_fails_when_read():
    """ForAllValues or a negated operator over a key no request carries would hold vacuously: allowed
    locally, perhaps refused on AWS. Such a role is refused, naming the key."""
    from playvault_local import template as tpl

    def translated(condition: dict) -> dict:
        statement = {"Effect": "Allow", "Action": "dynamodb:PutItem", "Resource": "arn:aws:dynamodb:*:*:table/t",
                     "Condition": condition}
        return {"Resources": {
            "F": {"Type": "AWS::Lambda::Function", "Properties": {"Role": {"Fn::GetAtt": ["FRole", "Arn"]}}},
            "FRole": {"Type": "AWS::IAM::Role", "Properties": {"Policies": [
                {"PolicyName": "p", "PolicyDocument": {"Statement": [statement]}}]}}}}

    vacuous = translated({"ForAllValues:StringEquals": {"dynamodb:Attributes": ["user_id", "played_at"]}})
    with pytest.raises(IamError, match="condition key dynamodb:Attributes"):
        iam.roles(vacuous, tpl.Resolver(vacuous, {}))
    supplied = translated({"StringEquals": {"kms:EncryptionContext:app": "playvault"}})
    assert list(iam.roles(supplied, tpl.Resolver(supplied, {}))) == ["F"]
