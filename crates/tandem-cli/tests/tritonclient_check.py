"""Drives a running `tandem serve` with the real tritonclient[http] client.

Usage: tritonclient_check.py CASE.json (written by serve_protocols.rs).
Exits non-zero with a message on the first mismatch.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient


def main() -> None:
    case = json.load(open(sys.argv[1]))
    client = httpclient.InferenceServerClient(url=case["url"])
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready("churn"), "churn not ready"
    assert client.is_model_ready("churn", "1"), "churn v1 not ready"
    assert not client.is_model_ready("nope"), "unknown model reported ready"
    meta = client.get_server_metadata()
    assert meta["name"] == "tandem", meta
    md = client.get_model_metadata("churn")
    assert md["inputs"][0]["name"] == case["input"], md
    assert md["inputs"][0]["datatype"] == "FP32", md

    rows = np.array(case["rows"], dtype=np.float32)
    for version, expected in (("1", case["expected_v1"]), ("", case["expected_v2"])):
        for binary in (True, False):
            inp = httpclient.InferInput(case["input"], list(rows.shape), "FP32")
            inp.set_data_from_numpy(rows, binary_data=binary)
            out = httpclient.InferRequestedOutput("variable", binary_data=binary)
            result = client.infer(
                "churn", [inp], model_version=version, outputs=[out], request_id="abc"
            )
            got = result.as_numpy("variable")
            assert got is not None, result.get_response()
            assert got.shape == (rows.shape[0], 1), got.shape
            np.testing.assert_allclose(got[:, 0], np.array(expected), rtol=1e-6)
            assert result.get_response()["id"] == "abc", result.get_response()
        # No outputs named: every output comes back.
        inp = httpclient.InferInput(case["input"], list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        result = client.infer("churn", [inp], model_version=version)
        np.testing.assert_allclose(
            result.as_numpy("variable")[:, 0], np.array(expected), rtol=1e-6
        )

    # An error from the server surfaces as the client's exception.
    bad = httpclient.InferInput(case["input"], [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    try:
        client.infer("churn", [bad])
    except Exception as e:  # tritonclient raises InferenceServerException
        assert "does not fit" in str(e), str(e)
    else:
        raise AssertionError("a [1, 3] input was accepted")
    print("tritonclient: all checks passed")


if __name__ == "__main__":
    main()
