#!/usr/bin/env python3
"""Calls a running tandem three ways, with the standard library only:
the native entity API, TensorFlow Serving REST and KServe V2.

    python3 examples/client.py [BASE_URL] [MODEL] [ENTITY_ID]

Defaults: http://127.0.0.1:8080 churn user-000001 (the quickstart).
Prints one JSON line per call; exits 1 if a call fails.
"""
import json
import sys
import urllib.error
import urllib.request


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
    model = sys.argv[2] if len(sys.argv) > 2 else "churn"
    entity = sys.argv[3] if len(sys.argv) > 3 else "user-000001"
    try:
        # 1. The native API: the hybrid policy picks the freshest answer.
        one = call("GET", f"{base}/v1/predict/{entity}")
        print(json.dumps({"api": "native", "prediction": one["prediction"],
                          "source": one["source"], "age_ms": one["age_ms"]}))
        # 2. KServe V2: the model's input name and width from its metadata.
        meta = call("GET", f"{base}/v2/models/{model}")
        tensor = meta["inputs"][0]
        width = tensor["shape"][-1]
        row = [0.1 * (i % 7) - 0.3 for i in range(width)]
        out = call("POST", f"{base}/v2/models/{model}/infer", {
            "inputs": [{"name": tensor["name"], "shape": [1, width],
                        "datatype": "FP32", "data": row}]})
        print(json.dumps({"api": "kserve", "outputs": [o["name"] for o in out["outputs"]]}))
        # 3. TF Serving REST, the same row.
        tf = call("POST", f"{base}/v1/models/{model}:predict", {"instances": [row]})
        print(json.dumps({"api": "tfserving", "predictions": tf["predictions"]}))
    except (urllib.error.URLError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
