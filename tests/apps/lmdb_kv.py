#!/usr/bin/env python3
"""A key-value application on LMDB in writemap mode, for Bunker's tests.

Serve mode framing (docs/APPLICATIONS.md): each command is a frame (u32
little-endian length, bytes); each answer a frame (u32 length, status
byte, body). Commands: `put KEY VALUE` answers `ok`; `get KEY` answers the
value, or status 1 and `missing`.

LMDB opens `data.mdb` and `lock.mdb` in the working directory and, with
writemap=True and sync=False, changes them only by storing into shared
writable mappings: no write(2), no msync, no close between commands.
"""
import struct
import sys

import lmdb

env = lmdb.open(".", writemap=True, sync=False, metasync=False, map_size=8 << 20)
inp = sys.stdin.buffer
out = sys.stdout.buffer


def answer(status, body):
    out.write(struct.pack("<I", len(body) + 1) + bytes([status]) + body)
    out.flush()


while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    (length,) = struct.unpack("<I", head)
    words = inp.read(length).decode("utf-8", "replace").split(" ", 2)
    if words[0] == "put" and len(words) == 3:
        with env.begin(write=True) as txn:
            txn.put(words[1].encode(), words[2].encode())
        answer(0, b"ok")
    elif words[0] == "get" and len(words) == 2:
        with env.begin() as txn:
            value = txn.get(words[1].encode())
        if value is None:
            answer(1, b"missing")
        else:
            answer(0, bytes(value))
    else:
        answer(2, b"error: expected put KEY VALUE or get KEY")
