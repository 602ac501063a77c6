"""Median time to first body byte of a streamed chat completion, over N sequential requests.

python bench/ttfb.py URL [N]   → prints the median in milliseconds
"""

from __future__ import annotations

import http.client
import statistics
import sys
import time
import urllib.parse

BODY = (
    b'{"model":"bench-stream","stream":true,"max_tokens":64,'
    b'"messages":[{"role":"user","content":"My order 1234 has not arrived yet. What can I do?"}]}'
)


def main() -> None:
    url = urllib.parse.urlsplit(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80)
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", url.path, BODY, headers)
        resp = conn.getresponse()
        first = resp.read1(1)
        samples.append(time.perf_counter() - t0)
        assert resp.status == 200 and first, resp.status
        resp.read()
    print(f"{statistics.median(samples) * 1000:.3f}")


if __name__ == "__main__":
    main()
