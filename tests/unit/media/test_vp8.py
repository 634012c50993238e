"""VP8 payload descriptor parsing and in-place rewriting (RFC 7741 §4.2)."""

from __future__ import annotations

import pytest

from salon.media.rtp import is_vp8_keyframe
from salon.media.vp8 import parse_vp8_descriptor, write_vp8_descriptor


def descriptor(
    *,
    start: bool = True,
    pid: int = 0,
    picture_id: int | None = None,
    long_id: bool = True,
    tl0: int | None = None,
    tid: int | None = None,
    sync: bool = False,
    key_idx: int | None = None,
    key: bool = False,
) -> bytes:
    first = (0x10 if start else 0) | pid
    ext = 0
    body = b""
    if picture_id is not None:
        ext |= 0x80
        body += (
            bytes([0x80 | (picture_id >> 8), picture_id & 0xFF]) if long_id else bytes([picture_id & 0x7F])
        )
    if tl0 is not None:
        ext |= 0x40
        body += bytes([tl0])
    if tid is not None or key_idx is not None:
        byte = 0
        if tid is not None:
            ext |= 0x20
            byte |= (tid << 6) | (0x20 if sync else 0)
        if key_idx is not None:
            ext |= 0x10
            byte |= key_idx
        body += bytes([byte])
    head = bytes([first | 0x80, ext]) + body if ext else bytes([first])
    return head + bytes([0x00 if key else 0x01]) + bytes(20)


def test_minimal_descriptor() -> None:
    d = parse_vp8_descriptor(bytes([0x10, 0x00, 0x9D]))
    assert d.start_of_partition and d.partition_index == 0 and d.frame_start
    assert d.picture_id is None and d.tl0_pic_idx is None and d.tid is None
    assert d.size == 1 and d.key_frame


def test_full_descriptor_15_bit() -> None:
    payload = descriptor(picture_id=0x1234, tl0=200, tid=2, sync=True, key_idx=5, key=False)
    d = parse_vp8_descriptor(payload)
    assert d.picture_id == 0x1234 and d.picture_id_bits == 15
    assert d.tl0_pic_idx == 200 and d.tid == 2 and d.layer_sync and d.key_idx == 5
    assert d.size == 6 and not d.key_frame


def test_7_bit_picture_id_and_key_frame() -> None:
    payload = descriptor(picture_id=100, long_id=False, tl0=7, tid=0, key=True)
    d = parse_vp8_descriptor(payload)
    assert d.picture_id == 100 and d.picture_id_bits == 7 and d.size == 5
    assert d.key_frame and d.key_frame == is_vp8_keyframe(payload)


def test_key_frame_only_on_first_partition_start() -> None:
    assert not parse_vp8_descriptor(descriptor(start=False, picture_id=1, key=True)).key_frame
    assert not parse_vp8_descriptor(descriptor(pid=1, picture_id=1, key=True)).key_frame
    assert parse_vp8_descriptor(descriptor(picture_id=1, tl0=0, tid=0, key=True)).key_frame


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 4])
def test_truncated_descriptor_is_rejected(cut: int) -> None:
    payload = descriptor(picture_id=0x1234, tl0=1, tid=1)
    with pytest.raises(ValueError):
        parse_vp8_descriptor(payload[:cut])


def test_rewrite_in_place_keeps_widths_and_the_rest() -> None:
    payload = bytearray(descriptor(picture_id=0x7FFE, tl0=255, tid=1, sync=True, key_idx=3))
    d = parse_vp8_descriptor(payload)
    write_vp8_descriptor(payload, d, picture_id=0x8001, tl0_pic_idx=256 + 9)
    e = parse_vp8_descriptor(payload)
    assert e.picture_id == 1 and e.picture_id_bits == 15 and e.tl0_pic_idx == 9
    assert (e.tid, e.layer_sync, e.key_idx, e.size) == (1, True, 3, d.size)
    short = bytearray(descriptor(picture_id=5, long_id=False, tl0=1))
    ds = parse_vp8_descriptor(short)
    write_vp8_descriptor(short, ds, picture_id=200, tl0_pic_idx=2)
    es = parse_vp8_descriptor(short)
    assert (es.picture_id, es.picture_id_bits, es.tl0_pic_idx) == (200 & 0x7F, 7, 2)


def test_rewrite_of_a_missing_field_is_refused() -> None:
    payload = bytearray(descriptor(tl0=4))
    with pytest.raises(ValueError):
        write_vp8_descriptor(payload, parse_vp8_descriptor(payload), picture_id=3)
    payload = bytearray(descriptor(picture_id=4))
    with pytest.raises(ValueError):
        write_vp8_descriptor(payload, parse_vp8_descriptor(payload), tl0_pic_idx=3)
