"""Every AWS call a function makes, checked against the IAM role template.yaml gives that function.

moto never evaluates IAM, so a missing action or a resource ARN that does not match would only show
up as an AccessDenied on AWS. This module closes that gap for the local run, `serve` and the tests:

- Roles come from the template as CloudFormation receives it (playvault_local.translate: SAM's
  generated role per function, policy templates expanded), their intrinsics resolved against the
  local stack's physical names and ARNs (template.Resolver). Managed policies (logs, X-Ray, the SQS
  poller) are listed, not evaluated: they grant nothing a function calls itself.
- Which function is calling: lambda_runtime.load_handler runs the cold start and every invocation
  inside `invoked(logical_id)`. Threads a function starts (the worker's per-user pool) carry no
  context of their own; their calls belong to the one function running at that moment, and a call
  from such a thread while two different functions run is refused as ambiguous (see `caller`).
- Each call is mapped to the request(s) IAM authorizes (`requests_for`: the action, the resource ARN
  and the condition keys AWS supplies), then evaluated (`evaluate`: explicit Deny wins, then any
  Allow, else the implicit deny). A denied call raises the AccessDenied ClientError AWS would
  return and is recorded with the function, the action, the resource and the closest statement.
- Presigned URLs and POSTs make no call but are signed with the role: the signing is checked (and
  a denial recorded, not raised: AWS would refuse the URL's use, not its making).

Resource policies (the bucket's TLS-only Deny, the key policy's account-root statement) are not
evaluated: on AWS the SDK always uses TLS, and the key policy delegates to IAM.

A small evaluator of what IAM policies can say, written here because no maintained Python library
evaluates a request against a policy with its conditions (principalmapper's simulation was last
released in 2022; iam-ape computes effective permission sets, not a request's decision).
"""

from __future__ import annotations

import contextvars
import functools
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from playvault_local import template as tpl


class IamError(RuntimeError):
    """A policy or a call the local check cannot evaluate (an unknown condition operator, an
    ambiguous caller): failing loudly beats a check that silently allows."""


# ---------------------------------------------------------------- which function is calling
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("playvault_function", default=None)
_active_lock = threading.Lock()
_active: Counter[str] = Counter()  # functions being invoked right now, process-wide


@contextmanager
def invoked(function: str) -> Iterator[None]:
    """Calls made inside belong to `function` (its cold start or an invocation)."""
    token = _current.set(function)
    with _active_lock:
        _active[function] += 1
    try:
        yield
    finally:
        with _active_lock:
            _active[function] -= 1
            if _active[function] <= 0:
                del _active[function]
        _current.reset(token)


@contextmanager
def unattributed() -> Iterator[None]:
    """Calls made inside are nobody's, even while a function runs (a measurement's own probes)."""
    token = _current.set("")
    try:
        yield
    finally:
        _current.reset(token)


def caller() -> str | None:
    """The function making the current call: the invoking thread's own, else (a thread the function
    started, e.g. a ThreadPoolExecutor's) the one function running now; None outside functions."""
    own = _current.get()
    if own is not None:
        return own or None
    with _active_lock:
        running = sorted(_active)
    if len(running) > 1:
        raise IamError(f"an AWS call from a thread no function owns while {', '.join(running)} run at once: "
                       "the local IAM check cannot tell whose role applies (invoke functions one at a time)")
    return running[0] if running else None


def checked(function: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    """`handler` whose calls are attributed to `function`."""

    @functools.wraps(handler)
    def invoke(*args: Any, **kwargs: Any) -> Any:
        with invoked(function):
            return handler(*args, **kwargs)

    return invoke


# ---------------------------------------------------------------- policy evaluation
@dataclass(frozen=True)
class Request:
    """What IAM authorizes: one action on one resource, with the request's condition keys."""

    action: str
    resource: str
    context: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}"


@dataclass
class Statement:
    effect: str
    actions: list[str]
    resources: list[str]
    not_action: bool = False
    not_resource: bool = False
    condition: dict[str, dict[str, Any]] = field(default_factory=dict)
    where: str = ""  # e.g. "WorkerFunctionRolePolicy0 statement 3"

    @classmethod
    def parse(cls, raw: dict[str, Any], where: str) -> Statement:
        if raw.get("Effect") not in ("Allow", "Deny"):
            raise IamError(f"{where}: Effect must be Allow or Deny, not {raw.get('Effect')!r}")
        not_action = "NotAction" in raw
        not_resource = "NotResource" in raw
        actions = _listed(raw.get("NotAction" if not_action else "Action"))
        resources = _listed(raw.get("NotResource" if not_resource else "Resource"))
        if not actions or not resources:
            raise IamError(f"{where}: a statement needs Action (or NotAction) and Resource (or NotResource)")
        condition = raw.get("Condition") or {}
        for operator in condition:
            _operator(operator, where)  # unknown operators fail when the role is read, not per call
        return cls(raw["Effect"], actions, resources, not_action, not_resource, condition, where)

    def matches_action(self, action: str) -> bool:
        hit = any(_wildcard(pattern, action, ignore_case=True) for pattern in self.actions)
        return hit != self.not_action

    def matches_resource(self, resource: str) -> bool:
        hit = any(_wildcard(pattern, resource) for pattern in self.resources)
        return hit != self.not_resource

    def matches_condition(self, context: dict[str, Any]) -> bool:
        lowered = {k.lower(): v for k, v in context.items()}
        for operator, block in self.condition.items():
            for key, expected in block.items():
                if not _condition_holds(operator, lowered.get(key.lower()), _listed(expected), self.where):
                    return False
        return True

    def applies(self, request: Request) -> bool:
        return (self.matches_action(request.action) and self.matches_resource(request.resource)
                and self.matches_condition(request.context))

    def __str__(self) -> str:
        act = "NotAction" if self.not_action else "Action"
        res = "NotResource" if self.not_resource else "Resource"
        text = f"{self.where}: {self.effect} {act} {self.actions} {res} {self.resources}"
        return text + (f" Condition {self.condition}" if self.condition else "")


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _wildcard(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """IAM's wildcards: `*` any run of characters (across `/` and `:`), `?` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL) is not None


_STRING_OPS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda v, e: v == e,
    "StringNotEquals": lambda v, e: v == e,  # negated below
    "StringEqualsIgnoreCase": lambda v, e: v.lower() == e.lower(),
    "StringNotEqualsIgnoreCase": lambda v, e: v.lower() == e.lower(),
    "StringLike": lambda v, e: _wildcard(e, v),
    "StringNotLike": lambda v, e: _wildcard(e, v),
    "ArnEquals": lambda v, e: _wildcard(e, v),  # ARN operators take wildcards per segment: close enough
    "ArnLike": lambda v, e: _wildcard(e, v),
    "ArnNotEquals": lambda v, e: _wildcard(e, v),
    "ArnNotLike": lambda v, e: _wildcard(e, v),
    "Bool": lambda v, e: v.lower() == e.lower(),
}
_NEGATED = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike"}


def _operator(operator: str, where: str) -> tuple[str, str, bool]:
    """(set qualifier, base operator, IfExists) of a condition operator; IamError when unknown."""
    qualifier, _, base = operator.rpartition(":")
    if qualifier not in ("", "ForAllValues", "ForAnyValue"):
        raise IamError(f"{where}: condition operator {operator} is not supported by the local IAM check")
    if_exists = base.endswith("IfExists") and base != "IfExists"
    if if_exists:
        base = base[: -len("IfExists")]
    if base not in _STRING_OPS and base != "Null":
        raise IamError(f"{where}: condition operator {operator} is not supported by the local IAM check")
    return qualifier, base, if_exists


def _condition_holds(operator: str, value: Any, expected: list[Any], where: str) -> bool:
    qualifier, base, if_exists = _operator(operator, where)
    expected_text = [str(e).lower() if isinstance(e, bool) else str(e) for e in expected]
    if base == "Null":  # "true": the key is absent; "false": present
        return (value is None) == (expected_text[0].lower() == "true")
    if value is None:
        # ForAllValues over no values holds; other operators fail on a missing key (IfExists: hold).
        return if_exists or qualifier == "ForAllValues" or base in _NEGATED and qualifier == ""
    values = [str(v).lower() if isinstance(v, bool) else str(v) for v in _listed(value)]
    test = _STRING_OPS[base]

    def one(v: str) -> bool:
        hit = any(test(v, e) for e in expected_text)
        return not hit if base in _NEGATED else hit

    if qualifier == "ForAllValues":
        return all(one(v) for v in values)
    if qualifier == "ForAnyValue":
        return any(one(v) for v in values)
    if base in _NEGATED:
        return all(one(v) for v in values)
    return any(one(v) for v in values)


@dataclass
class Decision:
    allowed: bool
    statement: Statement | None  # the allowing or the denying statement
    reason: str  # "allowed", "explicit deny", "no statement allows"


def evaluate(statements: list[Statement], request: Request) -> Decision:
    """IAM's identity-policy logic: an explicit Deny wins, else any Allow, else the implicit deny."""
    allowing = None
    for statement in statements:
        if not statement.applies(request):
            continue
        if statement.effect == "Deny":
            return Decision(False, statement, "explicit deny")
        allowing = allowing or statement
    if allowing is not None:
        return Decision(True, allowing, "allowed")
    return Decision(False, None, "no statement allows")


def closest(statements: list[Statement], request: Request) -> str:
    """The statement a reader should look at: same action (other resource or condition), else same
    resource (other action)."""
    allows = [s for s in statements if s.effect == "Allow"]
    for test, why in ((lambda s: s.matches_action(request.action) and s.matches_resource(request.resource),
                       "its condition does not hold"),
                      (lambda s: s.matches_action(request.action), "same action, another resource"),
                      (lambda s: s.matches_resource(request.resource), "same resource, other actions")):
        found = [s for s in allows if test(s)]
        if found:
            return f"{found[0]} ({why})"
    return f"no statement names {request.action} or {request.resource}"


# ---------------------------------------------------------------- roles from the translated template
@dataclass
class Role:
    function: str
    name: str
    statements: list[Statement]
    managed_policy_arns: list[str]

    def grants(self) -> list[tuple[Statement, str, str]]:
        """Every (statement, action, resource) an Allow statement names: the unused-grants report."""
        return [(s, a, r) for s in self.statements if s.effect == "Allow" and not s.not_action
                and not s.not_resource for a in s.actions for r in s.resources]


def roles(translated: dict[str, Any], resolver: tpl.Resolver) -> dict[str, Role]:
    """Function logical id -> its role, policies resolved to local ARNs (only what they reference)."""
    resources = translated["Resources"]
    found = {}
    for logical, resource in resources.items():
        if resource.get("Type") != "AWS::Lambda::Function":
            continue
        role_ref = (resource.get("Properties") or {}).get("Role")
        if not (isinstance(role_ref, dict) and "Fn::GetAtt" in role_ref):
            raise IamError(f"{logical}: Role is not !GetAtt <Role>.Arn of a role in the template: {role_ref!r}")
        target = role_ref["Fn::GetAtt"]
        role_id = target[0] if isinstance(target, list) else str(target).split(".")[0]
        props = resources[role_id].get("Properties") or {}
        statements = []
        for policy in resolver.value(props.get("Policies") or []):
            name = policy.get("PolicyName", role_id)
            for index, raw in enumerate(_listed((policy.get("PolicyDocument") or {}).get("Statement"))):
                where = f"{role_id} {name} statement {index}{_sid(raw)}"
                statement = Statement.parse(raw, where)
                _check_supplied_keys(statement, where)
                statements.append(statement)
        managed = [str(arn) for arn in resolver.value(props.get("ManagedPolicyArns") or [])]
        found[logical] = Role(logical, role_id, statements, managed)
    return found


# The condition keys requests_for puts in a request's context. A role conditioned on any other key
# would be judged on a key that is never there (ForAllValues and negated operators then hold
# vacuously: allowed locally, maybe refused on AWS), so such a role fails when it is read.
SUPPLIED_CONDITION_KEYS = ("kms:EncryptionContext:*", "kms:EncryptionContextKeys", "s3:prefix", "ses:FromAddress")


def _check_supplied_keys(statement: Statement, where: str) -> None:
    for operator, tests in statement.condition.items():
        for key in tests:
            if not any(_wildcard(known, key, ignore_case=True) for known in SUPPLIED_CONDITION_KEYS):
                raise IamError(f"{where}: condition key {key} ({operator}) is not supplied by the local IAM check "
                               f"(it knows {', '.join(SUPPLIED_CONDITION_KEYS)}): map it in requests_for first")


def _sid(raw: dict[str, Any]) -> str:
    return f" ({raw['Sid']})" if raw.get("Sid") else ""


# ---------------------------------------------------------------- calls -> IAM requests
_S3_OBJECT_ACTIONS = {
    "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject", "CompleteMultipartUpload": "s3:PutObject",
    "CopyObject": "s3:PutObject", "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts", "DeleteObject": "s3:DeleteObject",
    "GetObjectTagging": "s3:GetObjectTagging", "PutObjectTagging": "s3:PutObjectTagging",
}
_S3_BUCKET_ACTIONS = {
    "ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket", "HeadBucket": "s3:ListBucket",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads", "ListObjectVersions": "s3:ListBucketVersions",
}
# Batch APIs IAM authorizes as their single-message action.
_SQS_ACTIONS = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage",
                "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}
_TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                     "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}
_EMAIL = re.compile(r"<([^>]+)>\s*$")


@dataclass
class Locator:
    """Where the call goes: region and account (the local stack's), KMS ids/aliases -> key ARNs."""

    region: str
    account: str
    kms_keys: dict[str, str] = field(default_factory=dict)  # key id, key ARN or alias name -> key ARN

    def table(self, name: str) -> str:
        return name if name.startswith("arn:") else f"arn:aws:dynamodb:{self.region}:{self.account}:table/{name}"

    def queue(self, url: str) -> str:
        if url.startswith("arn:"):
            return url
        parts = urlsplit(url).path.strip("/").split("/")
        account, name = (parts[-2], parts[-1]) if len(parts) >= 2 else (self.account, parts[-1])
        return f"arn:aws:sqs:{self.region}:{account}:{name}"

    def key(self, key_id: str | None, ciphertext: Any = None) -> str:
        if key_id:
            if key_id in self.kms_keys:
                return self.kms_keys[key_id]
            if key_id.startswith("arn:aws:kms:") and ":alias/" in key_id:
                return self.kms_keys.get(key_id.split(":", 5)[5], key_id)
            return key_id if key_id.startswith("arn:") else f"arn:aws:kms:{self.region}:{self.account}:key/{key_id}"
        # Decrypt without KeyId: the key is named inside the ciphertext (moto: its first 36 bytes).
        if isinstance(ciphertext, bytes | bytearray) and len(ciphertext) >= 36:
            embedded = bytes(ciphertext[:36]).decode("ascii", "replace")
            if embedded in self.kms_keys:
                return self.kms_keys[embedded]
        return "*"

    def function(self, name: str) -> str:
        """A Lambda FunctionName (name, partial or full ARN, with or without a qualifier) -> its ARN."""
        if name.startswith("arn:"):
            return name
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"

    def parameter(self, name: str) -> str:
        if name.startswith("arn:"):
            return name
        path = name if name.startswith("/") else f"/{name}"
        return f"arn:aws:ssm:{self.region}:{self.account}:parameter{path}"


def requests_for(service: str, operation: str, params: dict[str, Any], where: Locator) -> list[Request]:
    """The IAM request(s) AWS would authorize for one API call (service = its signing name)."""
    if service == "dynamodb":
        return _dynamodb(operation, params, where)
    if service == "s3":
        return _s3(operation, params)
    if service == "sqs":
        action = f"sqs:{_SQS_ACTIONS.get(operation, operation)}"
        if "QueueUrl" in params:
            return [Request(action, where.queue(params["QueueUrl"]))]
        if "QueueName" in params:
            return [Request(action, f"arn:aws:sqs:{where.region}:{where.account}:{params['QueueName']}")]
        return [Request(action, "*")]
    if service == "kms":
        context = {f"kms:EncryptionContext:{k}": v for k, v in (params.get("EncryptionContext") or {}).items()}
        if params.get("EncryptionContext"):
            context["kms:EncryptionContextKeys"] = list(params["EncryptionContext"])
        return [Request(f"kms:{operation}", where.key(params.get("KeyId"), params.get("CiphertextBlob")), context)]
    if service == "ssm":
        if operation == "GetParameters":
            return [Request("ssm:GetParameters", where.parameter(n)) for n in params.get("Names") or []]
        if operation == "GetParametersByPath":
            return [Request("ssm:GetParametersByPath", where.parameter(params.get("Path", "/")))]
        if "Name" in params:
            return [Request(f"ssm:{operation}", where.parameter(params["Name"]))]
        return [Request(f"ssm:{operation}", "*")]
    if service == "lambda" and operation == "Invoke":
        return [Request("lambda:InvokeFunction", where.function(str(params.get("FunctionName", ""))))]
    if service == "ses" and operation in ("SendEmail", "SendRawEmail", "SendTemplatedEmail"):
        source = str(params.get("Source") or params.get("FromEmailAddress") or "")
        found = _EMAIL.search(source)
        address = found.group(1) if found else source.strip()
        return [Request("ses:SendEmail" if operation == "SendEmail" else f"ses:{operation}",
                        f"arn:aws:ses:{where.region}:{where.account}:identity/{address}",
                        {"ses:FromAddress": address})]
    return [Request(f"{service}:{operation}", "*")]


def _dynamodb(operation: str, params: dict[str, Any], where: Locator) -> list[Request]:
    if operation in ("BatchGetItem", "BatchWriteItem"):
        return [Request(f"dynamodb:{operation}", where.table(t)) for t in params.get("RequestItems") or {}]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        out: list[Request] = []
        for item in params.get("TransactItems") or []:
            for kind, body in item.items():
                request = Request(f"dynamodb:{_TRANSACT_ACTIONS[kind]}", where.table(body["TableName"]))
                if request not in out:
                    out.append(request)
        return out
    if "TableName" not in params:
        return [Request(f"dynamodb:{operation}", "*")]
    resource = where.table(params["TableName"])
    if operation in ("Query", "Scan") and params.get("IndexName"):
        resource = f"{resource}/index/{params['IndexName']}"
    return [Request(f"dynamodb:{operation}", resource)]


def _s3(operation: str, params: dict[str, Any]) -> list[Request]:
    bucket = params.get("Bucket", "")
    if operation == "DeleteObjects":
        return [Request("s3:DeleteObject", f"arn:aws:s3:::{bucket}/{obj['Key']}")
                for obj in (params.get("Delete") or {}).get("Objects") or []]
    if operation in _S3_OBJECT_ACTIONS:
        context = {}
        if params.get("ServerSideEncryption"):
            context["s3:x-amz-server-side-encryption"] = params["ServerSideEncryption"]
        return [Request(_S3_OBJECT_ACTIONS[operation], f"arn:aws:s3:::{bucket}/{params.get('Key', '')}", context)]
    if operation in _S3_BUCKET_ACTIONS:
        context = {}
        if operation.startswith("ListObjects"):
            context = {"s3:prefix": params.get("Prefix", ""), "s3:delimiter": params.get("Delimiter"),
                       "s3:max-keys": params.get("MaxKeys")}
            context = {k: v for k, v in context.items() if v is not None}
        return [Request(_S3_BUCKET_ACTIONS[operation], f"arn:aws:s3:::{bucket}", context)]
    raise IamError(f"s3 {operation}: the local IAM check has no mapping to an IAM action (add it to "
                   "playvault_local.iam)")


# ---------------------------------------------------------------- the check
@dataclass
class Denial:
    function: str
    action: str
    resource: str
    closest: str
    call: str  # "dynamodb.BatchWriteItem"
    raised: bool = True  # False: a presigned URL/POST (recorded, not raised)

    def __str__(self) -> str:
        return (f"{self.function} may not {self.action} on {self.resource} (call {self.call}); "
                f"closest statement: {self.closest}")


_DENIED_CODES = {"dynamodb": ("AccessDeniedException", 400), "kms": ("AccessDeniedException", 400),
                 "ssm": ("AccessDeniedException", 400)}


class IamCheck:
    """The roles of one stack and what the functions did with them (thread-safe)."""

    def __init__(self, roles_by_function: dict[str, Role], locator: Locator, names: dict[str, str] | None = None):
        self.roles = roles_by_function
        self.locator = locator
        self.names = names or {}  # resource ARN -> logical id, for readable reports
        self.on_denial: Callable[[Denial], None] | None = None  # serve: say it at once
        self.checked = 0
        self.denials: list[Denial] = []
        self._used: dict[str, set[tuple[str, str, str]]] = defaultdict(set)  # function -> (where, action, resource)
        self._lock = threading.Lock()

    @classmethod
    def for_stack(cls, stack: Any, translated: dict[str, Any] | None = None,
                  template_path: Any = None) -> IamCheck:
        """From a provisioned stack (provision.Stack): its template translated as `sam deploy` does,
        the policies resolved with the stack's parameters and physical names."""
        from playvault_local import provision as prov

        if translated is None:
            translated = translated_template(template_path or tpl.TEMPLATE_PATH)
        resolver = tpl.Resolver(translated, stack.physical, stack.resolver.parameters, region=prov.LOCAL_REGION,
                                account=prov.LOCAL_ACCOUNT)
        keys: dict[str, str] = {}
        for logical, resource in translated["Resources"].items():
            if resource.get("Type") == "AWS::KMS::Key" and logical in stack.physical:
                arn = stack.physical[logical]["Arn"]
                keys[stack.physical[logical]["Ref"]] = keys[arn] = arn
        for logical, resource in translated["Resources"].items():
            if resource.get("Type") == "AWS::KMS::Alias" and logical in stack.physical:
                target = resolver.value((resource.get("Properties") or {}).get("TargetKeyId"))
                keys[stack.physical[logical]["Ref"]] = keys.get(str(target), str(target))
        names = {ids["Arn"]: logical for logical, ids in stack.physical.items() if "Arn" in ids}
        return cls(roles(translated, resolver), Locator(prov.LOCAL_REGION, prov.LOCAL_ACCOUNT, keys), names)

    def named(self, resource: str) -> str:
        """`arn:...:table/playvault-local-PlaysTable/index/x` -> `PlaysTable/index/x` (reports)."""
        for arn, logical in self.names.items():
            if resource == arn or resource.startswith(arn + "/"):
                return logical + resource[len(arn):]
        return resource

    # -- the hook's side
    def check_call(self, service: str, operation: str, params: dict[str, Any], *, presign: bool = False) -> None:
        """Raise AccessDenied (a botocore ClientError) if the calling function's role refuses the call."""
        function = caller()
        if function is None:
            return
        role = self.roles.get(function)
        if role is None:
            raise IamError(f"{function}: no AWS::Lambda::Function of that name in the translated template")
        for request in requests_for(service, operation, params, self.locator):
            decision = evaluate(role.statements, request)
            with self._lock:
                self.checked += 1
                if decision.allowed:
                    self._mark_used(function, role, request)
                    continue
                denial = Denial(function, request.action, request.resource,
                                str(decision.statement) + " (explicit deny)" if decision.statement
                                else closest(role.statements, request), f"{service}.{operation}", not presign)
                self.denials.append(denial)
            if self.on_denial is not None:
                self.on_denial(denial)
            if presign:
                continue
            from botocore.exceptions import ClientError

            code, status = _DENIED_CODES.get(service, ("AccessDenied", 403))
            raise ClientError({"Error": {"Code": code, "Message": (
                f"User: arn:aws:sts::{self.locator.account}:assumed-role/{role.name}/{function} is not authorized "
                f"to perform: {request.action} on resource: {request.resource} because no identity-based policy "
                f"allows the {request.action} action (local IAM check)")},
                "ResponseMetadata": {"HTTPStatusCode": status}}, operation)

    def _mark_used(self, function: str, role: Role, request: Request) -> None:
        for statement, action, resource in role.grants():
            if (_wildcard(action, request.action, ignore_case=True) and _wildcard(resource, request.resource)
                    and statement.matches_condition(request.context)):
                self._used[function].add((statement.where, action, resource))

    # -- reading back
    def unused(self) -> dict[str, list[str]]:
        """Per function, the grants (action on resource) no call used: evidence for least privilege."""
        out = {}
        for function, role in sorted(self.roles.items()):
            used = self._used.get(function, set())
            names = [f"{a} on {self.named(r)}" for s, a, r in role.grants() if (s.where, a, r) not in used]
            if names:
                out[function] = names
        return out

    def summary(self) -> dict[str, Any]:
        with self._lock:  # serve reads it while functions run
            return self._summary()

    def _summary(self) -> dict[str, Any]:
        denied: dict[tuple[str, str, str], dict[str, Any]] = {}
        for denial in self.denials:  # one entry per function, action and resource, with its count
            entry = denied.setdefault((denial.function, denial.action, denial.resource), {**vars(denial), "count": 0})
            entry["count"] += 1
        return {"checked_calls": self.checked, "denied": list(denied.values()),
                "granted_never_used": self.unused(),
                "managed_policies_not_evaluated": {f: r.managed_policy_arns for f, r in sorted(self.roles.items())}}

    def raise_if_denied(self) -> None:
        if self.denials:
            listed = "\n".join(f"  - {d}" for d in self.denials)
            raise AssertionError(f"the local IAM check denied AWS calls:\n{listed}")


_translations: dict[tuple[str, float], dict[str, Any]] = {}


def translated_template(path: Any = tpl.TEMPLATE_PATH) -> dict[str, Any]:
    """The translation of a template file, once per file version. Parameters are not passed: the
    translator leaves the roles' intrinsics (Ref, Fn::If on conditions) for the resolver, which
    applies the stack's parameter values."""
    import copy
    import os

    from playvault_local.translate import translate

    key = (str(path), os.path.getmtime(path))
    if key not in _translations:
        _translations[key] = translate(template_path=path)
    return copy.deepcopy(_translations[key])


def without_action(translated: dict[str, Any], function: str, action: str) -> dict[str, Any]:
    """A copy of the translation where `function`'s role no longer names `action` (tests: the check
    must then refuse the call that needs it)."""
    import copy

    edited = copy.deepcopy(translated)
    role_ref = edited["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
    removed = 0
    for policy in edited["Resources"][role_ref]["Properties"].get("Policies") or []:
        statements = policy["PolicyDocument"]["Statement"]
        for statement in statements:
            if isinstance(statement, dict) and action in _listed(statement.get("Action")):
                statement["Action"] = [a for a in _listed(statement["Action"]) if a != action]
                removed += 1
        policy["PolicyDocument"]["Statement"] = [s for s in statements if not isinstance(s, dict)
                                                 or s.get("Action") != [] or "Fn::If" in s]
    if not removed:
        raise ValueError(f"{function}'s role does not name {action}")
    return edited

