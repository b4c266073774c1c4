"""template.yaml as CloudFormation sees it: translated by aws-sam-translator, as `sam deploy` does.

The SAM source hides what CloudFormation checks: the roles SAM generates (policy templates
expanded), the API's OpenAPI body, the event sources' permissions, and so the dependencies between
resources. `make validate`, the template tests and the local IAM check read this translation.

No AWS call is made: local CodeUri/ContentUri paths are replaced by S3 URIs (as `sam package`
would), and managed policies named by their name (none today) resolve to nothing.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from playvault_local import template as tpl

# What `sam deploy` would upload; the translation only needs an S3 URI of the right shape.
PACKAGED_BUCKET = "playvault-local-artifacts"
_ARTIFACT_PROPERTIES = ("CodeUri", "ContentUri", "DefinitionUri")


class TranslationError(tpl.TemplateError):
    """aws-sam-translator refused the template; names each resource and why."""


def _packaged(document: dict[str, Any]) -> dict[str, Any]:
    packaged = copy.deepcopy(document)
    for resource in (packaged.get("Resources") or {}).values():
        props = resource.get("Properties") or {}
        for name in _ARTIFACT_PROPERTIES:
            if isinstance(props.get(name), str) and not props[name].startswith("s3://"):
                props[name] = f"s3://{PACKAGED_BUCKET}/{props[name]}"
    return packaged


def translate(document: dict[str, Any] | None = None, *, template_path: Path | str = tpl.TEMPLATE_PATH,
              parameters: dict[str, str] | None = None, region: str = "us-east-1") -> dict[str, Any]:
    """The CloudFormation template `sam deploy` would create a change set from."""
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader
    from samtranslator.translator.transform import transform

    class _NoManagedPolicies(ManagedPolicyLoader):
        """Offline: a managed policy named by its name (not its ARN) would need IAM ListPolicies."""

        def __init__(self) -> None:  # no IAM client
            pass

        def load(self) -> dict[str, str]:
            return {}

    source = document if document is not None else tpl.load(template_path)
    # The translator reads the region from the environment when no session is given.
    saved = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = region
    try:
        return transform(json.loads(json.dumps(_packaged(source))), dict(parameters or {}), _NoManagedPolicies())
    except InvalidDocumentException as exc:
        causes = "; ".join(str(cause) for cause in exc.causes)
        raise TranslationError(f"aws-sam-translator refused the template: {causes}") from None
    finally:
        if saved is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
        else:
            os.environ["AWS_DEFAULT_REGION"] = saved


def main(argv: list[str] | None = None) -> int:
    """python -m playvault_local.translate [OUT.json]: write the translation (stdout by default)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m playvault_local.translate", description=main.__doc__)
    parser.add_argument("out", nargs="?", help="file to write (default: stdout)")
    parser.add_argument("--template", default=str(tpl.TEMPLATE_PATH))
    args = parser.parse_args(argv)
    try:
        translated = translate(template_path=args.template)
    except tpl.TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(translated, indent=1, sort_keys=True) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
