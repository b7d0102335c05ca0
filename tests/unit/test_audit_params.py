"""An audit entry keeps small params whole and large ones as a digest, so a
refused call cannot grow the database by what it sends."""

import hashlib
import json

from bkd.rpc.server import AUDIT_PARAMS_MAX, audit_params


def _of_size(size: int) -> dict:
    params = {"pad": ""}
    params["pad"] = "x" * (size - len(json.dumps(params, sort_keys=True)))
    assert len(json.dumps(params, sort_keys=True)) == size
    return params


def test_params_up_to_the_limit_are_kept_whole():
    params = _of_size(AUDIT_PARAMS_MAX)
    assert audit_params(params) is params
    assert audit_params([1, 2]) == {"params": [1, 2]}  # not an object: wrapped, as before


def test_params_over_the_limit_are_kept_as_size_digest_and_head():
    params = _of_size(AUDIT_PARAMS_MAX + 1)
    text = json.dumps(params, sort_keys=True)
    assert audit_params(params) == {"truncated": {"bytes": AUDIT_PARAMS_MAX + 1,
                                                  "sha256": hashlib.sha256(text.encode()).hexdigest(),
                                                  "head": text[:200]}}
    assert len(json.dumps(audit_params(_of_size(1024 * 1024)))) < 400
