"""What the benchmarks share to drive a VMM: vireo's control socket and
QEMU's QMP, each a Unix socket that may not be there yet."""
import json
import socket
import time


def connect(path, tries=1000):
    """A connection to the Unix socket PATH, tried every 10 ms while the
    VMM is starting."""
    for _ in range(tries):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return s
        except OSError:
            s.close()
            time.sleep(0.01)
    raise SystemExit(f"cannot connect to {path}")


def vireo_ctl(path, **req):
    """One request on vireo's control socket; its reply, which must be ok."""
    with connect(path) as s:
        f = s.makefile("rw")
        f.write(json.dumps(req) + "\n")
        f.flush()
        r = json.loads(f.readline())
    if not r.get("ok"):
        raise SystemExit(f"vireo {req}: {r}")
    return r


class Qmp:
    """QEMU's monitor, capabilities negotiated."""
    def __init__(self, path):
        self.s = connect(path)
        self.f = self.s.makefile("rw")
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise SystemExit(f"qmp {name}: {r['error']}")
