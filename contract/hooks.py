"""Schemathesis hooks for the contract run (scripts/check-contract.sh): how the PEM bodies are
sent, and the one check that keeps the few allowed refusals of schema-valid requests honest."""

import json

import schemathesis
from hypothesis.internal import lambda_sources

# CPython 3.11 before 3.11.9 (Debian 12 ships 3.11.2) can raise "SystemError: AST constructor
# recursion depth mismatch" from ast.parse when it is called deep in a stack (CPython issue
# 106905). Hypothesis calls ast.parse only to print a lambda's source in a strategy's
# description, and the coverage phase then reports the whole operation as a runtime error of
# the tool. Such a description falls back to Hypothesis's own "<unknown>" form instead; no
# request, response or check is touched.
_describe_lambda = lambda_sources._lambda_description


def _describe_lambda_or_unknown(f):
    try:
        return _describe_lambda(f)
    except SystemError:
        return "lambda: <unknown>"


lambda_sources._lambda_description = _describe_lambda_or_unknown

# `PUT /v1/keys/{label}/certificate` and `POST /v1/cscas` take PEM text (application/x-pem-file),
# a media type Schemathesis has no serializer for: send the generated string as it is, as
# text/plain would be.
schemathesis.serializer.alias("application/x-pem-file", "text/plain")

# A request valid by the schema that the appliance still refuses, and the only error codes it
# may then answer: rules JSON Schema cannot state. schemathesis.toml lets these statuses pass
# `positive_data_acceptance` for these operations only; this check holds each to its codes.
SCHEMA_CANNOT_SAY = {
    # A `ref` unique within the request: `uniqueItems` compares whole records, not one field.
    ("POST", "/v1/batches", 400): {"duplicate_ref"},
    ("POST", "/v1/sign", 400): {"duplicate_ref"},
    # An idempotency key spent by a batch the stateful phase deleted: the answer depends on
    # what came before, not on the request.
    ("POST", "/v1/batches", 410): {"batch_deleted"},
    # A subject that carries `C=` the issuing country, which is configuration, not schema.
    ("POST", "/v1/keys/{label}/csr", 422): {"refused"},
    # A certificate the CSCA issued for this very key (or a CSCA of the country): a random
    # string is no such certificate.
    ("PUT", "/v1/keys/{label}/certificate", 422): {"refused", "dsc_chain", "key_refused"},
    ("POST", "/v1/cscas", 422): {"refused"},
    # Approving a key whose usage period has ended: state, not request.
    ("POST", "/v1/keys/{label}/approve", 422): {"refused"},
}


def _refs(body):
    if isinstance(body, dict) and isinstance(body.get("records"), list):
        return [r.get("ref") for r in body["records"] if isinstance(r, dict)]
    return []


@schemathesis.check
def refusal_of_valid_data_names_its_reason(ctx, response, case):
    """A schema-valid request refused with a status allowed above carries one of its codes, and
    a `duplicate_ref` refusal really had a repeated `ref`."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    codes = SCHEMA_CANNOT_SAY.get((case.method.upper(), case.path, response.status_code))
    if codes is None:
        return None
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"{response.status_code} without an error code: {response.content[:200]!r}")
    if code not in codes:
        raise AssertionError(
            f"schema-valid request refused {response.status_code} {code!r}; only {sorted(codes)} may be"
        )
    if code == "duplicate_ref":
        refs = _refs(case.body)
        if len(refs) == len(set(refs)):
            raise AssertionError(f"refused duplicate_ref, but every ref is unique: {refs!r}")
    return True
