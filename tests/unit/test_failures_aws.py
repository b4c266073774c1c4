"""failures.aws_error_code / is_infrastructure_error on every shape an AWS failure reaches the domain in.

Found by `make bench` on a loaded machine: a PynamoDB error whose cause carries `response=None`
(PynamoDB's own `cause_response_code` then raises AttributeError) crashed the importer instead of
counting as an AWS failure to retry."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from pynamodb.exceptions import GetError, PutError

from playvault import failures


class _NoResponse(Exception):
    response = None


def test_a_pynamodb_error_whose_cause_has_no_response_is_an_infrastructure_error():
    exc = PutError("Failed to batch write items", cause=_NoResponse("connection reset"))
    assert failures.aws_error_code(exc) is None
    assert failures.is_infrastructure_error(exc)


def test_a_pynamodb_error_around_a_timeout_is_an_infrastructure_error():
    exc = GetError("Failed to get item", cause=ReadTimeoutError(endpoint_url="http://127.0.0.1:1"))
    assert failures.aws_error_code(exc) is None
    assert failures.is_infrastructure_error(exc)


@pytest.mark.parametrize(("code", "infrastructure"), [("ProvisionedThroughputExceededException", True),
                                                       ("ValidationException", False)])
def test_the_code_of_a_wrapped_client_error_decides(code, infrastructure):
    cause = ClientError({"Error": {"Code": code, "Message": "m"}}, "PutItem")
    exc = PutError("Failed", cause=cause)
    assert failures.aws_error_code(exc) == code
    assert failures.is_infrastructure_error(exc) is infrastructure
