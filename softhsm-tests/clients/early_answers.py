#!/usr/bin/env python3
"""Early answers as clients that write their whole body before reading see them (issue 20).

Python `requests` sends the complete body before it reads a byte of the answer, as most Java and
.NET clients do. The daemon answers 403, 413 and 415 before reading the body; this tries each
answer `tries` times, each on a fresh connection, and prints a JSON report:
{"case": {"expected": N, "got": {"413": 20}, "errors": ["..."]}, ...}.

usage: early_answers.py BASE_URL CA_PEM CERT_PEM KEY_PEM TRIES
"""
import json
import sys

import requests


def main() -> None:
    base, ca, cert, key, tries = sys.argv[1:6]
    tries = int(tries)
    json_type = {"Content-Type": "application/json"}
    cases = {
        # Over the 16 MiB body limit: refused on its Content-Length before a byte is read.
        "batch_of_17_mb": (413, "/v1/batches", json_type, b'{"records":[' + b" " * 17_000_000 + b"]}"),
        # An officer-only route for an issuer: refused on the role, the body unread.
        "officer_route_300_kb": (403, "/v1/keys", json_type, b'{"label":"' + b"x" * 300_000 + b'"}'),
        # Not JSON: refused on the media type, the body unread.
        "wrong_type_300_kb": (415, "/v1/batches", {"Content-Type": "text/plain"}, b"r" * 300_000),
    }
    report = {}
    for name, (expected, path, headers, body) in cases.items():
        got, errors = {}, []
        for _ in range(tries):
            # A session per try: a fresh connection each time.
            with requests.Session() as s:
                try:
                    r = s.post(base + path, data=body, headers=headers, verify=ca, cert=(cert, key), timeout=60)
                    got[str(r.status_code)] = got.get(str(r.status_code), 0) + 1
                except requests.RequestException as e:
                    errors.append(type(e).__name__ + ": " + str(e)[:200])
        report[name] = {"expected": expected, "got": got, "errors": errors}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
