"""The gRPC service config of dualvec clients: how a channel spreads calls over the servers a target resolves to,
and which failed calls it repeats.

A target may name several servers: ``dns:///dualvec-headless.search.svc.cluster.local:50051`` (every address of a
Kubernetes headless Service: one per ready pod), or ``ipv4:127.0.0.1:5001,127.0.0.1:5002``. The default config:

- ``round_robin``: a connection to every address, calls spread in turn over those that are up (gRPC's default,
  ``pick_first``, would send every call to one of them);
- a retry policy for UNAVAILABLE and CANCELLED: a call that found its server gone (stopped, restarting) gets
  UNAVAILABLE; one that reached a server's gRPC core in the instant the server stopped, before the server took it,
  gets CANCELLED (seen in tests/test_replicas.py: about one call per restart under six client threads). Either is
  sent again, to another server, after a short jittered backoff. Every DualVec method only reads, so a repeat is
  safe; a call the caller itself cancels is never repeated. Overload (RESOURCE_EXHAUSTED) and deadlines are not
  retried: the server or the caller decided those;
- retry throttling: when most calls fail (every server down), retries stop instead of multiplying the load.

The JSON is gRPC's own service config (gRPC's A6 retry design and service_config.proto), so a Go client takes the
same text (``grpc.WithDefaultServiceConfig``), a Node client too (the ``grpc.service_config`` channel option), and
docs/scaling.md explains each field. ``DEFAULT_SERVICE_CONFIG`` is the text; ``load_service_config`` reads a
user's replacement and checks the parts this module documents, with one sentence for what is wrong.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from dualvec.kernel.errors import DualvecError

DEFAULT_SERVICE_CONFIG = """\
{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [{"service": "dualvec.v1.DualVec"}],
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]
    }
  }],
  "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1}
}
"""

NO_SERVICE_CONFIG = "none"  # load_service_config("none"): gRPC's defaults (pick_first, no retries)

STATUS_NAMES = frozenset({"CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                          "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                          "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                          "UNAUTHENTICATED"})
_DURATION = re.compile(r"^\d+(\.\d{1,9})?s$")


def load_service_config(value: str | dict | None = None) -> str | None:
    """The service config text for a channel: None -> DEFAULT_SERVICE_CONFIG; ``"none"`` -> None (gRPC's
    defaults); a dict, or a string holding a JSON object, or the path of a JSON file -> that config, checked.
    Raises DualvecError with one sentence naming the file or field that is wrong."""
    if value is None:
        return DEFAULT_SERVICE_CONFIG
    source = "service config"
    if isinstance(value, str):
        if value.strip().lower() == NO_SERVICE_CONFIG:
            return None
        if not value.lstrip().startswith(("{", "[")):
            source = f"service config {value}"
            try:
                value = Path(value).read_text()
            except OSError as exc:
                raise DualvecError(f"cannot read {source}: {exc.strerror or exc}") from None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DualvecError(f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") \
                from None
    check_service_config(value, source)
    return json.dumps(value)


def check_service_config(config: dict, source: str = "service config") -> None:
    """Check the fields docs/scaling.md describes (load balancing, retry policy, retry throttling); gRPC checks the
    rest when the channel is made. Raises DualvecError naming the field."""
    def fail(field: str, why: str):
        raise DualvecError(f"{source}: {field} {why}")

    if not isinstance(config, dict):
        fail("the top level", "must be a JSON object")
    policies = config.get("loadBalancingConfig", [])
    if not isinstance(policies, list) or not all(isinstance(p, dict) and len(p) == 1 for p in policies):
        fail("loadBalancingConfig", 'must be a list of one-key objects, like [{"round_robin": {}}]')
    methods = config.get("methodConfig", [])
    if not isinstance(methods, list):
        fail("methodConfig", "must be a list")
    for i, method in enumerate(methods):
        where = f"methodConfig[{i}]"
        if not isinstance(method, dict) or not isinstance(method.get("name"), list):
            fail(where, 'must be an object with a "name" list')
        retry = method.get("retryPolicy")
        if retry is None:
            continue
        where += ".retryPolicy"
        if not isinstance(retry, dict):
            fail(where, "must be an object")
        attempts = retry.get("maxAttempts")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 2:
            fail(f"{where}.maxAttempts", f"must be an integer >= 2 (gRPC caps it at 5), got {attempts!r}")
        for key in ("initialBackoff", "maxBackoff"):
            text = retry.get(key)
            if not isinstance(text, str) or not _DURATION.match(text) or float(text[:-1]) <= 0:
                fail(f"{where}.{key}", f'must be a positive duration in seconds like "0.1s", got {text!r}')
        multiplier = retry.get("backoffMultiplier")
        if not isinstance(multiplier, (int, float)) or isinstance(multiplier, bool) or multiplier <= 0:
            fail(f"{where}.backoffMultiplier", f"must be a number > 0, got {multiplier!r}")
        codes = retry.get("retryableStatusCodes")
        if not isinstance(codes, list) or not codes:
            fail(f"{where}.retryableStatusCodes", 'must be a non-empty list of status names like ["UNAVAILABLE"]')
        unknown = [c for c in codes if not isinstance(c, str) or c.upper() not in STATUS_NAMES]
        if unknown:
            fail(f"{where}.retryableStatusCodes", f"holds unknown status names {unknown}")
    throttling = config.get("retryThrottling")
    if throttling is not None:
        tokens, ratio = (throttling.get("maxTokens"), throttling.get("tokenRatio")) if isinstance(throttling, dict) \
            else (None, None)
        if not isinstance(tokens, int) or isinstance(tokens, bool) or not 0 < tokens <= 1000:
            fail("retryThrottling.maxTokens", f"must be an integer in (0, 1000], got {tokens!r}")
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or ratio <= 0:
            fail("retryThrottling.tokenRatio", f"must be a number > 0, got {ratio!r}")


def channel_options(service_config: str | dict | None = None) -> list[tuple[str, object]]:
    """gRPC channel options carrying a service config (as ``load_service_config`` reads ``service_config``). The
    config given here is used even when the name resolver offers one (DNS TXT records)."""
    text = load_service_config(service_config)
    if text is None:
        return []
    return [("grpc.service_config", text), ("grpc.service_config_disable_resolution", 1)]
