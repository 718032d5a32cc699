"""Helpers of benches/kill9.sh and benches/powercut.sh.

  past FILE OFFSET          data bytes FILE holds at or past OFFSET (SEEK_DATA/SEEK_HOLE)
  past-delta FILE NEW JSON OFFSET   bytes of the changed extents at or past OFFSET
                            that FILE already holds as NEW has them
  change FILE JSON SEED     rewrite a quarter of FILE's 1 MiB runs (80 % random bytes,
                            20 % zeroes), write them as changed extents to JSON, print
                            the bytes changed
  differ A B OFFSET         the first offset below OFFSET where A and B differ, or "none"
  report RUNS IDENTICAL CRASHES KILLS DKILLS FRACTIONS REREADS DREREADS
  powercut-report RUNS IDENTICAL CRASHES HANGS BROKEN CUTS DCUTS FRACTIONS DFRACTIONS
"""

import json
import os
import random
import statistics
import sys

MIB = 1 << 20


def past(path, at):
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        end = os.fstat(fd).st_size
        total = 0
        while at < end:
            try:
                d = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            total += h - d
            at = h
        return total
    finally:
        os.close(fd)


def past_delta(path, new, changed, at):
    with open(changed) as f:
        extents = json.load(f)
    total = 0
    with open(path, "rb") as t, open(new, "rb") as n:
        for e in extents:
            if e["offset"] < at:
                continue
            t.seek(e["offset"])
            n.seek(e["offset"])
            if t.read(e["length"]) == n.read(e["length"]):
                total += e["length"]
    return total


def change(path, out, seed):
    rnd = random.Random(seed)
    size = os.path.getsize(path)
    runs = sorted(rnd.sample(range(size // MIB), max(1, size // MIB // 4)))
    with open(path, "r+b") as f:
        for r in runs:
            f.seek(r * MIB)
            f.write(rnd.randbytes(MIB) if rnd.random() < 0.8 else bytes(MIB))
    with open(out, "w") as f:
        json.dump([{"offset": r * MIB, "length": MIB} for r in runs], f)
    return len(runs) * MIB


def differ(a, b, end):
    step = 4 * MIB
    with open(a, "rb") as fa, open(b, "rb") as fb:
        at = 0
        while at < end:
            n = min(step, end - at)
            x, y = fa.read(n), fb.read(n)
            if x != y:
                for i in range(min(len(x), len(y))):
                    if x[i] != y[i]:
                        return str(at + i)
                return str(at + min(len(x), len(y)))
            if len(x) < n:
                break
            at += n
    return "none"


def stats(v):
    return f"mean {statistics.mean(v):.3f}, max {max(v):.3f}" if v else "n/a"


def report(args):
    runs, identical, crashes, kills, dkills = map(int, args[:5])
    f, rr, drr = ([float(x) for x in a.split()] for a in args[5:8])
    print(
        f"kill9: runs {runs}, identical {identical}, crashes {crashes}; "
        f"full copies: kills {kills} (in {len(f)} runs), re-read fraction {stats(rr)}, "
        f"finishing attempt read {stats(f)}; "
        f"delta rounds: kills {dkills} (in {len(drr)} runs), re-read fraction {stats(drr)}"
    )


def powercut_report(args):
    runs, identical, crashes, hangs, broken, cuts, dcuts = map(int, args[:7])
    f, df = ([float(x) for x in a.split()] for a in args[7:9])
    print(
        f"powercut: runs {runs}, identical {identical}, crashes {crashes}, hangs {hangs}, "
        f"broken promises {broken}; full copies: cuts {cuts} (in {len(f)} runs), "
        f"finishing attempt read {stats(f)} of the data; "
        f"delta rounds: cuts {dcuts} (in {len(df)} runs), finishing attempt read {stats(df)} "
        f"of the changed bytes"
    )


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "past":
        print(past(sys.argv[2], int(sys.argv[3])))
    elif cmd == "past-delta":
        print(past_delta(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
    elif cmd == "change":
        print(change(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    elif cmd == "differ":
        print(differ(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    elif cmd == "powercut-report":
        powercut_report(sys.argv[2:])
    elif cmd == "report":
        report(sys.argv[2:])
    else:
        sys.exit(f"kill9_helper: unknown command {cmd}")
