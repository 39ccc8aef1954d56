#!/usr/bin/env python3
"""Seed inputs for tests/fuzz/fuzz_virtio.c: well-formed rings of the
layout its header comment describes, one file per kind of request.
usage: seeds_virtio.py vq|blk|balloon|net OUTDIR"""
import os
import struct
import sys

DESC, AVAIL, USED, BUF = 0x100, 0x200, 0x300, 0x1000
NEXT, WRITE, INDIRECT = 1, 2, 4


def image(chains, q=0, flags=0, qlog=3, extra=b"", pkt_len=0):
    """chains: list of [(addr, len, write)] or ("indirect", [(...)], table_addr)."""
    m = bytearray(0x3000)
    m[0:16] = struct.pack("<BBHIII", qlog, flags | q << 2, 0, DESC, AVAIL, USED)
    m[16:18] = struct.pack("<H", pkt_len)
    d = 0
    heads = []
    for ch in chains:
        heads.append(d)
        if ch[0] == "indirect":
            _, segs, table = ch
            for i, (a, n, w) in enumerate(segs):
                fl = (WRITE if w else 0) | (NEXT if i + 1 < len(segs) else 0)
                m[table + 16 * i:table + 16 * i + 16] = struct.pack("<QIHH", a, n, fl, i + 1)
            m[DESC + 16 * d:DESC + 16 * d + 16] = struct.pack("<QIHH", table, 16 * len(segs),
                                                              INDIRECT, 0)
            d += 1
            continue
        for i, (a, n, w) in enumerate(ch):
            fl = (WRITE if w else 0) | (NEXT if i + 1 < len(ch) else 0)
            m[DESC + 16 * d:DESC + 16 * d + 16] = struct.pack("<QIHH", a, n, fl, d + 1)
            d += 1
    m[AVAIL:AVAIL + 4] = struct.pack("<HH", 0, len(heads))
    for i, h in enumerate(heads):
        m[AVAIL + 4 + 2 * i:AVAIL + 6 + 2 * i] = struct.pack("<H", h)
    m[BUF:BUF + len(extra)] = extra
    return bytes(m)


def blk_req(t, sector, data_len, write_data=False, payload=b""):
    hdr = struct.pack("<IIQ", t, 0, sector)
    extra = hdr + payload
    segs = [(BUF, 16, False)]
    if payload:
        segs.append((BUF + 16, len(payload), False))
    elif data_len:
        segs.append((BUF + 0x800, data_len, not write_data))
    segs.append((BUF + 0xfff, 1, True))
    return segs, extra


def seeds(kind):
    out = {}
    if kind == "vq":
        out["chain"] = image([[(BUF, 16, False), (BUF + 16, 512, True), (BUF + 528, 1, True)]])
        out["indirect"] = image([("indirect", [(BUF, 8, False), (BUF + 8, 64, True)], 0x800)])
        out["two"] = image([[(BUF, 4, False)], [(BUF + 4, 4, True)]], flags=1)
    elif kind == "blk":
        for name, (t, data_len, wr) in {"read": (0, 1024, False), "write": (1, 1024, True),
                                        "flush": (4, 0, False), "getid": (8, 20, False)}.items():
            segs, extra = blk_req(t, 1, data_len, wr)
            out[name] = image([segs], extra=extra)
        for name, t in (("discard", 11), ("zeroes", 13)):
            segs, extra = blk_req(t, 0, 0, payload=struct.pack("<QII", 2, 8, 0))
            out[name] = image([segs], extra=extra)
    elif kind == "balloon":
        pfns = struct.pack("<4I", 1, 2, 3, 7)
        out["inflate"] = image([[(BUF, len(pfns), False)]], q=0, extra=pfns)
        out["deflate"] = image([[(BUF, len(pfns), False)]], q=1, extra=pfns)
        stats = struct.pack("<HQHQ", 4, 1 << 20, 5, 1 << 22)
        out["stats"] = image([[(BUF, len(stats), False)]], q=2, extra=stats)
        out["report"] = image([[(0x2000, 0x1000, True)]], q=3)
    elif kind == "net":
        frame = bytes(12) + b"\xff" * 6 + b"\x52\x54\x00\x12\x34\x56" + b"\x08\x00" + b"x" * 46
        out["tx"] = image([[(BUF, 12, False), (BUF + 12, len(frame) - 12, False)]], q=1,
                          extra=frame)
        out["rx"] = image([[(BUF, 1600, True)]], q=0, pkt_len=80)
        out["rx-merge"] = image([[(BUF, 40, True)], [(BUF + 40, 40, True)],
                                 [(BUF + 80, 40, True)]], q=0, flags=2, pkt_len=100)
    else:
        sys.exit(f"unknown kind {kind}")
    return out


def main():
    kind, outdir = sys.argv[1], sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    for name, data in seeds(kind).items():
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
