"""The VP8 RTP payload descriptor (RFC 7741 §4.2): parse it, rewrite its picture ID and TL0PICIDX.

Pure functions, no I/O. The descriptor starts every VP8 RTP payload::

         0 1 2 3 4 5 6 7
        +-+-+-+-+-+-+-+-+
        |X|R|N|S|R| PID | (REQUIRED)
        +-+-+-+-+-+-+-+-+
   X:   |I|L|T|K| RSV   | (OPTIONAL)
        +-+-+-+-+-+-+-+-+
   I:   |M| PictureID   | (OPTIONAL, 7 bits, or 15 bits when M=1: one more byte)
        +-+-+-+-+-+-+-+-+
   L:   |   TL0PICIDX   | (OPTIONAL)
        +-+-+-+-+-+-+-+-+
   T/K: |TID|Y| KEYIDX  | (OPTIONAL)
        +-+-+-+-+-+-+-+-+

followed by the VP8 payload header (§4.3) on the first packet of a frame (S=1, PID=0), whose
lowest bit P is 0 for a key frame. A simulcast consumer
(:class:`~salon.media.layers.LayerSwitcher`) reads the temporal layer (TID) to drop upper
temporal layers, and rewrites the picture ID and TL0PICIDX in place so that the subscriber's
decoder sees them continue across a switch between encodings (each encoding numbers its own
pictures).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Vp8Descriptor", "parse_vp8_descriptor", "write_vp8_descriptor"]


@dataclass(slots=True)
class Vp8Descriptor:
    """What one VP8 payload descriptor says, plus where its rewritable fields are (not frozen:
    one is built per forwarded packet, and a frozen dataclass is twice as slow to build)."""

    start_of_partition: bool
    """S: the packet starts a VP8 partition."""
    partition_index: int
    """PID: the partition index (0: the first partition of the frame)."""
    non_reference: bool
    """N: the frame can be discarded without hurting other frames."""
    picture_id: int | None
    """I: the picture ID (7 or 15 bits), None if absent."""
    picture_id_bits: int
    """0 (absent), 7 or 15."""
    tl0_pic_idx: int | None
    """L: the TL0PICIDX (the index of the last base-layer picture), None if absent."""
    tid: int | None
    """T: the temporal layer index (0 for the base layer), None if absent."""
    layer_sync: bool
    """Y: the frame depends only on base-layer frames (a temporal-layer switching point)."""
    key_idx: int | None
    """K: the KEYIDX, None if absent."""
    size: int
    """Length of the descriptor in bytes: the VP8 payload (header) starts here."""
    key_frame: bool
    """First packet of a key frame: S=1, PID=0 and the payload header's P bit is 0."""

    @property
    def frame_start(self) -> bool:
        """First packet of a frame (S=1, PID=0)."""
        return self.start_of_partition and self.partition_index == 0


def parse_vp8_descriptor(payload: bytes | bytearray | memoryview) -> Vp8Descriptor:
    """Parse the payload descriptor at the start of an RTP VP8 payload.

    Raise :class:`ValueError` when the payload is shorter than the descriptor it announces.
    """
    length = len(payload)
    if length < 1:
        raise ValueError("empty VP8 payload")
    first = payload[0]
    pos = 1
    picture_id: int | None = None
    picture_id_bits = 0
    tl0: int | None = None
    tid: int | None = None
    key_idx: int | None = None
    sync = False
    if first & 0x80:
        if length < 2:
            raise ValueError("VP8 descriptor truncated after X")
        ext = payload[1]
        pos = 2
        if ext & 0x80:
            if pos >= length:
                raise ValueError("VP8 descriptor truncated in the picture ID")
            if payload[pos] & 0x80:
                if pos + 1 >= length:
                    raise ValueError("VP8 descriptor truncated in the 15-bit picture ID")
                picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                picture_id_bits = 15
                pos += 2
            else:
                picture_id = payload[pos] & 0x7F
                picture_id_bits = 7
                pos += 1
        if ext & 0x40:
            if pos >= length:
                raise ValueError("VP8 descriptor truncated in TL0PICIDX")
            tl0 = payload[pos]
            pos += 1
        if ext & 0x30:
            if pos >= length:
                raise ValueError("VP8 descriptor truncated in TID/KEYIDX")
            byte = payload[pos]
            if ext & 0x20:
                tid = byte >> 6
                sync = bool(byte & 0x20)
            if ext & 0x10:
                key_idx = byte & 0x1F
            pos += 1
    start = bool(first & 0x10)
    pid = first & 0x07
    key_frame = start and pid == 0 and pos < length and not payload[pos] & 0x01
    return Vp8Descriptor(
        start_of_partition=start,
        partition_index=pid,
        non_reference=bool(first & 0x20),
        picture_id=picture_id,
        picture_id_bits=picture_id_bits,
        tl0_pic_idx=tl0,
        tid=tid,
        layer_sync=sync,
        key_idx=key_idx,
        size=pos,
        key_frame=key_frame,
    )


def write_vp8_descriptor(
    buffer: bytearray | memoryview,
    descriptor: Vp8Descriptor,
    *,
    picture_id: int | None = None,
    tl0_pic_idx: int | None = None,
) -> None:
    """Overwrite, in place, the picture ID and/or TL0PICIDX of the descriptor at the start of
    ``buffer`` (parsed as ``descriptor``). The field widths are kept: a 7-bit picture ID gets
    the value modulo 128, a 15-bit one modulo 32768. Fields the descriptor lacks are left
    alone (``ValueError`` if asked to write one)."""
    pos = 2
    if picture_id is not None:
        if descriptor.picture_id_bits == 15:
            value = picture_id & 0x7FFF
            buffer[pos] = 0x80 | (value >> 8)
            buffer[pos + 1] = value & 0xFF
        elif descriptor.picture_id_bits == 7:
            buffer[pos] = picture_id & 0x7F
        else:
            raise ValueError("the VP8 descriptor has no picture ID")
    pos += descriptor.picture_id_bits // 7 if descriptor.picture_id_bits else 0
    if tl0_pic_idx is not None:
        if descriptor.tl0_pic_idx is None:
            raise ValueError("the VP8 descriptor has no TL0PICIDX")
        buffer[pos] = tl0_pic_idx & 0xFF
