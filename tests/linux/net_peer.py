#!/usr/bin/python3
"""Host side of the Linux guest's "net" scenario (tests/linux/init): a small
HTTP server, normally run inside the test's network namespace.
  GET /blob     SIZE bytes, pseudo-random from SEED (the guest reports their md5)
  POST /upload  reads the body, base64 (busybox wget posts a file as a C
                string, so binary would stop at its first NUL), answers the
                md5 of the decoded bytes in hex
Prints "ready" once listening, then one line per request:
  "get bytes=N md5=HEX" or "upload bytes=N md5=HEX".
usage: net_peer.py [--port N] [--size BYTES] [--seed N] [--timeout SECONDS]"""
import argparse
import base64
import hashlib
import http.server
import random
import sys
import threading


def blob(size, seed):
    return random.Random(seed).randbytes(size)


def make_handler(data):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, body):
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path != "/blob":
                return self.reply(404, b"")
            self.reply(200, data)
            print("get bytes=%d md5=%s" % (len(data), hashlib.md5(data).hexdigest()), flush=True)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            body = base64.b64decode(self.rfile.read(n))
            digest = hashlib.md5(body).hexdigest()
            print("upload bytes=%d md5=%s" % (len(body), digest), flush=True)
            self.reply(200 if self.path == "/upload" else 404, digest.encode())

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--size", type=int, default=4 << 20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0)
    a = ap.parse_args()
    srv = http.server.ThreadingHTTPServer(("0.0.0.0", a.port), make_handler(blob(a.size, a.seed)))
    stop = threading.Timer(a.timeout, srv.shutdown)
    stop.daemon = True
    stop.start()
    print("ready", flush=True)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
