#!/usr/bin/env python3
"""Replays kept start traces (`testbed compare --keep-traces`, OUT/traces/*.json) against
neighbour-ahead rules, offline: how many reads would miss (wait on the registry) and how many
bytes would be fetched, per rule. A model of the FUSE read path (16 KiB chunks, 2 MiB read-ahead
inside a file, one request per missing read), not a measurement: it keeps the traced order
and takes a read as waiting alone when no other traced miss was in flight as it began. The rule
teleportd runs is `alone + fixed 256 KiB` (fuse-mount/src/fs/neighbour.rs); `layer-share` was
tried and dropped.

Usage: python3 scripts/neighbour-replay.py TRACE.json[.gz] [TRACE.json[.gz] ...]
"""
import gzip
import json
import sys

CHUNK = 16 << 10
READ_AHEAD = 2 << 20
MAX = 256 << 10


class Fixed:
    """The same window after every small file's first-read miss (0: off)."""

    def __init__(self, width):
        self.width = width

    def first_read(self, layer, start, end, cached, alone):
        return 0 if cached else self.width


class Alone:
    """Another rule, applied only to a miss no other traced miss overlapped."""

    def __init__(self, rule):
        self.rule = rule

    def first_read(self, layer, start, end, cached, alone):
        return self.rule.first_read(layer, start, end, cached or not alone, alone)


class LayerShare:
    """Tried and dropped: per layer, a window is judged once `recent` newer ones exist; the
    width stays `mx` while at least 1/`share` of the judged windows' bytes were read, else it
    shrinks in proportion, down to mx/16."""

    def __init__(self, mx=MAX, share=20, recent=4):
        self.mx, self.share, self.recent = mx, share, recent
        self.layers = {}

    def first_read(self, layer, start, end, cached, alone):
        l = self.layers.setdefault(layer, {"recent": [], "judged": 0, "used": 0})
        for w in l["recent"]:
            if w[0] <= start < w[1]:
                w[2] += min(end, w[1]) - start
                return 0
        if cached:
            return 0
        if l["judged"] == 0 or l["used"] * self.share >= l["judged"]:
            width = self.mx
        else:
            width = max(self.mx >> 4, self.mx * l["used"] * self.share // l["judged"])
        l["recent"].append([end, end + width, 0])
        if len(l["recent"]) > self.recent:
            s, e, used = l["recent"].pop(0)
            l["judged"] += e - s
            l["used"] += used
        return width


def alone_flags(events):
    """Per event: a read that missed with no other traced miss in flight as it began."""
    misses = [(e["at_us"], e["at_us"] + e["wait_us"]) for e in events if e["op"] == "read" and not e["cached"]]
    misses.sort()
    flags = []
    for e in events:
        a = e["at_us"]
        flags.append(not any(x < a < y for x, y in misses if x != a))
    return flags


def replay(events, rule):
    files, have = {}, {}
    misses = fetched = 0
    alone = alone_flags(events)
    for e, lone in zip(events, alone):
        if e["op"] == "open":
            if e.get("data"):
                files[(e["mount"], e["ino"])] = (e["data"]["layer"], e["data"]["offset"], e["len"])
            continue
        f = files.get((e["mount"], e["ino"]))
        if not f or e["len"] == 0:
            continue
        layer, base, size = f
        got = have.setdefault(layer, set())
        start, end = base + e["offset"], base + e["offset"] + e["len"]
        past = 0
        if e["offset"] == 0 and size <= READ_AHEAD:
            past = rule.first_read(layer, start, base + size, start // CHUNK in got, lone)
        if all(c in got for c in range(start // CHUNK, (end - 1) // CHUNK + 1)):
            continue
        misses += 1
        fetch_end = base + size + past if past else min(end + READ_AHEAD, base + size)
        for c in range(start // CHUNK, (fetch_end - 1) // CHUNK + 1):
            if c not in got:
                got.add(c)
                fetched += CHUNK
    return misses, fetched


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
            events = json.load(f)["events"]
        print(path)
        for name, rule in [
            ("off", Fixed(0)),
            ("fixed 256 KiB", Fixed(MAX)),
            ("fixed 1 MiB", Fixed(4 * MAX)),
            ("layer-share", LayerShare()),
            ("alone + fixed 256 KiB (teleportd)", Alone(Fixed(MAX))),
            ("alone + layer-share", Alone(LayerShare())),
        ]:
            misses, fetched = replay(events, rule)
            print(f"  {name:34s} misses {misses:5d}  fetched {fetched / 1e6:7.1f} MB")


if __name__ == "__main__":
    main()
