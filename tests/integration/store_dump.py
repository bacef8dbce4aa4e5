"""Reads a capstan store's records independently of capstan's code: LMDB
through Debian's `mdb_dump` (lmdb-utils), a PostgreSQL store (the data
directory's store.conf names it) through `psql`, protobuf wire format
decoded by hand (field numbers as in storage/records.proto). For the
integration tests that check what was recorded."""
import os
import re
import subprocess


def _varint(b, i):
    v = s = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << s
        s += 7
        if not c & 0x80:
            return v, i


def fields(b):
    """One protobuf message: {field number: [values]} (varints as int,
    length-delimited and fixed-size fields as bytes)."""
    out, i = {}, 0
    while i < len(b):
        k, i = _varint(b, i)
        f, t = k >> 3, k & 7
        if t == 0:
            v, i = _varint(b, i)
        elif t == 2:
            n, i = _varint(b, i)
            v = b[i:i + n]
            i += n
        elif t == 1:
            v = b[i:i + 8]
            i += 8
        elif t == 5:
            v = b[i:i + 4]
            i += 4
        else:
            raise ValueError("wire type %d" % t)
        out.setdefault(f, []).append(v)
    return out


def store_url(data_dir):
    """The PostgreSQL URL of |data_dir|'s store, None for LMDB."""
    try:
        with open(os.path.join(data_dir, "store.conf")) as f:
            for line in f:
                m = re.match(r"\s*store\s*=\s*(\S.*?)\s*$", line)
                if m:
                    return m.group(1)
    except FileNotFoundError:
        return None
    return None


def records(data_dir, db):
    """Every (key bytes, fields) of database |db| in the store at |data_dir|."""
    url = store_url(data_dir)
    if url is not None:
        if not re.fullmatch(r"[a-z_]+", db):
            raise ValueError("database name %r" % db)
        txt = subprocess.run(["psql", url, "-XAtq", "-F", " ", "-c",
                              "SELECT encode(k, 'hex'), encode(v, 'hex') FROM %s ORDER BY k" % db],
                             check=True, capture_output=True, text=True, timeout=120).stdout
        out = []
        for line in txt.splitlines():
            k, _, v = line.partition(" ")
            out.append((bytes.fromhex(k), fields(bytes.fromhex(v))))
        return out
    txt = subprocess.run(["mdb_dump", "-s", db, data_dir], check=True, capture_output=True,
                         text=True).stdout
    body = txt.split("HEADER=END\n", 1)[1].split("DATA=END", 1)[0].split()
    return [(bytes.fromhex(body[j]), fields(bytes.fromhex(body[j + 1])))
            for j in range(0, len(body), 2)]
