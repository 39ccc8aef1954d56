#!/usr/bin/python3
"""Host side of the probe guest's "net" scenario (guest/net.c): on IFACE
(a tap, usually inside a network namespace) send every received frame of
ethertype 0x88b5 back with its MAC addresses swapped. Needs root (raw
socket). usage: net_echo.py IFACE [--count N] [--timeout SECONDS]
Prints "echoed=N" when it stops (after N frames, the timeout or SIGTERM)."""
import argparse
import signal
import socket
import sys
import time

ETHERTYPE = 0x88b5
PACKET_OUTGOING = 4


class Stop(Exception):
    pass


def stop(signum, frame):
    raise Stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("iface")
    ap.add_argument("--count", type=int, default=0, help="stop after N frames (0: no limit)")
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    s.bind((a.iface, ETHERTYPE))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    end = time.monotonic() + a.timeout
    echoed = 0
    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    try:
        while time.monotonic() < end and (not a.count or echoed < a.count):
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                frame, addr = s.recvfrom(65536)
            except socket.timeout:
                break
            if addr[2] == PACKET_OUTGOING:      # our own echoes
                continue
            s.send(frame[6:12] + frame[0:6] + frame[12:])
            echoed += 1
    except Stop:
        pass
    print("echoed=%d" % echoed, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
