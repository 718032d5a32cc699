#!/usr/bin/env python3
"""Writes the small seeds of corpus/image_vhd, image_vhdx and image_vdi.

qemu-img writes VHD blocks of 2 MiB, VDI blocks of 1 MiB and VHDX files of 8 MiB at
least, so the seeds are written here with the smallest blocks each format allows (VHD
4 KiB, VDI 4 KiB, VHDX 1 MiB with its regions packed after the header section), in the
layout qemu writes. Run from fuzz/: python3 make_image_seeds.py
"""

import os
import struct
import uuid

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- VHD -------------------------------------------------------------------------


def vhd_footer(disk_type, size, data_offset, app=b"qem2"):
    f = bytearray(512)
    f[0:8] = b"conectix"
    struct.pack_into(">IIQI", f, 8, 2, 0x00010000, data_offset, 0)
    f[28:32] = app
    struct.pack_into(">HH", f, 32, 5, 3)
    f[36:40] = b"Wi2k"
    struct.pack_into(">QQ", f, 40, size, size)
    struct.pack_into(">HBB", f, 56, 0xFFFF, 16, 255)
    struct.pack_into(">I", f, 60, disk_type)
    f[68:84] = uuid.UUID(int=0x1234).bytes
    struct.pack_into(">I", f, 64, ~sum(f) & 0xFFFFFFFF)
    return bytes(f)


def vhd_dynamic(size, block, allocated):
    """allocated: {block index: fill byte}"""
    entries = -(-size // block)
    bat_off = 512 + 1024
    bat_len = -(-entries * 4 // 512) * 512
    bitmap = -(-(block // 512 // 8) // 512) * 512
    head = bytearray(512 + 1024)
    foot = vhd_footer(3, size, 512)
    head[0:512] = foot
    h = bytearray(1024)
    h[0:8] = b"cxsparse"
    struct.pack_into(">QQIII", h, 8, 0xFFFFFFFFFFFFFFFF, bat_off, 0x00010000, entries, block)
    struct.pack_into(">I", h, 36, ~sum(h) & 0xFFFFFFFF)
    head[512:] = h
    bat = bytearray(b"\xff" * bat_len)
    data = bytearray()
    at = bat_off + bat_len
    for i, fill in sorted(allocated.items()):
        struct.pack_into(">I", bat, i * 4, (at + len(data)) // 512)
        data += b"\xff" * bitmap + bytes([fill]) * block
    return bytes(head) + bytes(bat) + bytes(data) + foot


def vhd_fixed(size, fill):
    return bytes(size // 2) + bytes([fill]) * (size - size // 2) + vhd_footer(2, size, 0xFFFFFFFFFFFFFFFF)


# ---- VDI -------------------------------------------------------------------------


def vdi(size, block, bmap, static=False):
    """bmap: a list of entries (0xFFFFFFFF unallocated, 0xFFFFFFFE discarded)"""
    h = bytearray(512)
    h[0:36] = b"<<< QEMU VM Virtual Disk Image >>>\n\0"
    struct.pack_into("<IIII", h, 0x40, 0xBEDA107F, 0x00010001, 0x180, 2 if static else 1)
    bmap_off = 512
    bmap_len = -(-len(bmap) * 4 // 512) * 512
    data_off = bmap_off + bmap_len
    struct.pack_into("<II", h, 0x154, bmap_off, data_off)
    struct.pack_into("<IIII", h, 0x15C, 0, 0, 0, 512)
    allocated = [e for e in bmap if e < 0xFFFFFFFE]
    struct.pack_into("<QIIII", h, 0x170, size, block, 0, len(bmap), len(allocated))
    h[0x188:0x198] = uuid.UUID(int=0x5678).bytes
    m = bytearray(b"\xff" * bmap_len)
    for i, e in enumerate(bmap):
        struct.pack_into("<I", m, i * 4, e)
    data = bytearray(block * (max(allocated) + 1 if allocated else 0))
    for i, e in enumerate(bmap):
        if e < 0xFFFFFFFE:
            data[e * block:(e + 1) * block] = bytes([0x40 + i]) * block
    return bytes(h) + bytes(m) + bytes(data)


# ---- VHDX ------------------------------------------------------------------------


def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def guid(s):
    return uuid.UUID(s).bytes_le


def vhdx(size, block, lss, states, flags=0):
    """states: the BAT entries' states (no data blocks: those need 1 MiB each)"""
    mib = 1 << 20
    meta_off, meta_len = mib, 64 * 1024 + 4096
    bat_off, bat_len = meta_off + meta_len, 4096
    f = bytearray(mib + meta_len + bat_len)
    f[0:8] = b"vhdxfile"
    for i, at in enumerate((64 * 1024, 128 * 1024)):
        h = bytearray(4096)
        h[0:4] = b"head"
        struct.pack_into("<Q", h, 8, 10 + i)
        h[16:32] = uuid.UUID(int=1).bytes
        h[32:48] = uuid.UUID(int=2).bytes
        struct.pack_into("<HHIQ", h, 64, 0, 1, 0, mib)  # no log (length 0)
        struct.pack_into("<I", h, 4, crc32c(h))
        f[at:at + 4096] = h
    rt = bytearray(64 * 1024)
    rt[0:4] = b"regi"
    struct.pack_into("<I", rt, 8, 2)
    rt[16:32] = guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
    struct.pack_into("<QII", rt, 32, bat_off, bat_len, 1)
    rt[48:64] = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
    struct.pack_into("<QII", rt, 64, meta_off, meta_len, 1)
    struct.pack_into("<I", rt, 4, crc32c(rt))
    f[192 * 1024:256 * 1024] = rt
    f[256 * 1024:320 * 1024] = rt
    m = bytearray(meta_len)
    m[0:8] = b"metadata"
    items = [
        ("CAA16737-FA36-4D43-B3B6-33F0AA44E76B", struct.pack("<II", block, flags), 4),
        ("2FA54224-CD1B-4876-B211-5DBED83BF4B8", struct.pack("<Q", size), 6),
        ("BECA12AB-B2E6-4523-93EF-C309E000C746", uuid.UUID(int=3).bytes, 6),
        ("8141BF1D-A96F-4709-BA47-F233A8FAAB5F", struct.pack("<I", lss), 6),
        ("CDA348C7-445D-4471-9CC9-E9885251C556", struct.pack("<I", 4096), 6),
    ]
    struct.pack_into("<H", m, 10, len(items))
    at = 64 * 1024
    for i, (g, v, fl) in enumerate(items):
        e = 32 + 32 * i
        m[e:e + 16] = guid(g)
        struct.pack_into("<III", m, e + 16, at, len(v), fl)
        m[at:at + len(v)] = v
        at += len(v)
    f[meta_off:meta_off + meta_len] = m
    for i, s in enumerate(states):
        struct.pack_into("<Q", f, bat_off + 8 * i, s)
    return bytes(f)


if __name__ == "__main__":
    write("image_vhd", "dynamic-4k-blocks.vhd", vhd_dynamic(64 * 1024 + 1536, 4096, {0: 0xAB, 3: 0xCD, 16: 0xEF}))
    write("image_vhd", "dynamic-empty.vhd", vhd_dynamic(1 << 30, 2 << 20, {}))
    write("image_vhd", "fixed-64k.vhd", vhd_fixed(64 * 1024, 0x5A))
    write("image_vdi", "dynamic-4k-blocks.vdi", vdi(9 * 4096 + 1000, 4096, [0, 0xFFFFFFFF, 1, 0xFFFFFFFE, 2] + [0xFFFFFFFF] * 5))
    write("image_vdi", "static-4k-blocks.vdi", vdi(16 * 1024, 4096, [0, 1, 2, 3], static=True))
    write("image_vdi", "dynamic-empty.vdi", vdi(64 << 20, 1 << 20, [0xFFFFFFFF] * 64))
    # Payload states: not present, undefined, zero, unmapped, unmapped (0.95), with 4 KiB
    # logical sectors.
    write("image_vhdx", "dynamic-states-4k-sectors.vhdx", vhdx(5 << 20, 1 << 20, 4096, [0, 1, 2, 3, 5]))
    # A sector bitmap entry after every chunk ratio (2^23 * 512 / 256 MiB = 16) payload
    # entries; a fixed image's flag.
    write("image_vhdx", "big-blocks.vhdx", vhdx(17 * (256 << 20), 256 << 20, 512, [2] * 16 + [0, 2], flags=1))
