#!/usr/bin/env python3
"""A recording reverse proxy: forwards every request to a `rapid-host serve` and appends what
the client sent (method, path, headers without secrets, JSON body) and the status it got to a
JSON-lines file. Used to record what Claude Code and Codex CLI send (examples/agents/).

    python3 examples/agents/record_proxy.py --listen 18500 --upstream http://127.0.0.1:8000 --log sent.jsonl

Streams (SSE) are passed through as they arrive.
"""
import argparse
import http.client
import http.server
import json
import threading
import urllib.parse

SECRET_HEADERS = {"authorization", "x-api-key", "cookie"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    upstream = urllib.parse.urlsplit(args.upstream)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def relay(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "accept-encoding")}
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=3600)
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = body.decode("utf-8", "replace")
            record = {
                "method": self.command,
                "path": self.path,
                "headers": {k: v for k, v in self.headers.items() if k.lower() not in SECRET_HEADERS},
                "body": parsed,
                "status": response.status,
            }
            with lock, open(args.log, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.send_response(response.status)
            for k, v in response.getheaders():
                if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(k, v)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while True:
                chunk = response.read1(65536)
                if not chunk:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            conn.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = relay

    http.server.ThreadingHTTPServer(("127.0.0.1", args.listen), Handler).serve_forever()


if __name__ == "__main__":
    main()
