"""What each encoding of a video producer carries: bitrate and frame rate per temporal layer,
resolution from its key frames (sans-I/O, fed by the producer's packet path).

The allocator (:mod:`salon.media.allocator`) picks a subscriber's layer from these figures:

* **Bitrate** per temporal layer (VP8 TID of the payload descriptor; a stream without TIDs is
  one temporal layer), over windows of :data:`WINDOW` seconds, smoothed over two windows so a
  key frame does not make a layer look twice as expensive for one window.
* **Frame rate** per temporal layer: frames started (S=1, PID=0) per second.
* **Resolution** from the VP8 key frame header (3-byte frame tag, start code ``9d 01 2a``,
  then 14-bit width and height, little-endian) or the H.264 SPS (``pic_width_in_mbs``,
  ``pic_height_in_map_units``, frame cropping) of an IDR. Until an encoding's resolution is
  known, it is assumed from a known one of the same producer: each encoding below is half the
  width and height of the one above (Chromium's ¼, ½, full).

Only simulcast producers parse payload descriptors per packet; a single-encoding producer
counts bytes (:meth:`EncodingMeter.on_bytes`) so its cost is still known.
"""

from __future__ import annotations

from salon.media.h264 import sps_dimensions
from salon.media.vp8 import parse_vp8_descriptor

__all__ = [
    "MAX_TEMPORAL_LAYERS",
    "WINDOW",
    "EncodingMeter",
    "h264_sps_resolution",
    "vp8_key_frame_resolution",
]

#: Measurement window (seconds).
WINDOW = 1.0
#: VP8 TIDs are 2 bits.
MAX_TEMPORAL_LAYERS = 4
#: An encoding without a packet for this long carries nothing (seconds).
IDLE_AFTER = 1.5


def vp8_key_frame_resolution(payload: bytes | memoryview, descriptor_size: int) -> tuple[int, int] | None:
    """(width, height) of a VP8 key frame whose first packet's payload is ``payload`` (the
    payload descriptor takes ``descriptor_size`` bytes), None when the header is not there."""
    start = descriptor_size
    if len(payload) < start + 10 or payload[start] & 0x01:
        return None
    if payload[start + 3] != 0x9D or payload[start + 4] != 0x01 or payload[start + 5] != 0x2A:
        return None
    width = (payload[start + 6] | (payload[start + 7] << 8)) & 0x3FFF
    height = (payload[start + 8] | (payload[start + 9] << 8)) & 0x3FFF
    if not width or not height:
        return None
    return width, height


def _sps_in(payload: bytes | memoryview) -> bytes | None:
    """The SPS NAL unit (without its header byte) of an H.264 RTP payload: a single NAL unit
    or a STAP-A aggregate."""
    if not payload:
        return None
    nal_type = payload[0] & 0x1F
    if nal_type == 7:
        return bytes(payload[1:])
    if nal_type == 24:  # STAP-A
        pos = 1
        while pos + 2 < len(payload):
            size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if size == 0 or pos + size > len(payload):
                return None
            if payload[pos] & 0x1F == 7:
                return bytes(payload[pos + 1 : pos + size])
            pos += size
    return None


def h264_sps_resolution(payload: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) from the SPS in an H.264 RTP payload, None without one (or unparsable)."""
    raw = _sps_in(payload)
    if raw is None:
        return None
    try:
        return sps_dimensions(b"\x67" + raw)  # the NAL header byte back (type 7)
    except ValueError:
        return None


class EncodingMeter:
    """Bitrate and frame rate per temporal layer, and resolution, of one encoding."""

    __slots__ = (
        "_bytes",
        "_frames",
        "_start",
        "bitrates",
        "codec",
        "frame_rates",
        "height",
        "last_packet_at",
        "temporal_layers",
        "width",
    )

    def __init__(self, codec: str) -> None:
        self.codec = codec.lower()
        self._bytes = [0] * MAX_TEMPORAL_LAYERS
        self._frames = [0] * MAX_TEMPORAL_LAYERS
        self._start: float | None = None
        #: Smoothed bit/s per temporal layer (not cumulative), from the last windows.
        self.bitrates: list[float] = [0.0] * MAX_TEMPORAL_LAYERS
        #: Smoothed frames/s per temporal layer (not cumulative).
        self.frame_rates: list[float] = [0.0] * MAX_TEMPORAL_LAYERS
        #: Temporal layers seen in the last window (1 without TIDs).
        self.temporal_layers = 1
        self.width = 0
        self.height = 0
        self.last_packet_at = float("-inf")

    def on_bytes(self, size: int, now: float) -> None:
        """Count one packet of ``size`` bytes on the base temporal layer (no parsing)."""
        self.last_packet_at = now
        self._bytes[0] += size
        self._roll(now)

    def on_packet(self, payload: memoryview, size: int, key_frame: bool, now: float) -> None:
        """One media packet of this encoding (``payload``: the RTP payload, ``size``: the
        whole packet's bytes)."""
        self.last_packet_at = now
        tid = 0
        if self.codec == "vp8":
            try:
                desc = parse_vp8_descriptor(payload)
            except ValueError:
                return
            if desc.tid is not None:
                tid = desc.tid
            if desc.frame_start:
                self._frames[tid] += 1
            if key_frame and desc.key_frame:
                resolution = vp8_key_frame_resolution(payload, desc.size)
                if resolution is not None:
                    self.width, self.height = resolution
        else:
            if header_marker_frame_start(payload):
                self._frames[0] += 1
            if key_frame:
                resolution = h264_sps_resolution(payload) if self.codec == "h264" else None
                if resolution is not None:
                    self.width, self.height = resolution
        self._bytes[tid] += size
        self._roll(now)

    def _roll(self, now: float) -> None:
        start = self._start
        if start is None:
            self._start = now
            return
        elapsed = now - start
        if elapsed < WINDOW:
            return
        self._start = now
        layers = 1
        for tid in range(MAX_TEMPORAL_LAYERS):
            rate = self._bytes[tid] * 8 / elapsed
            fps = self._frames[tid] / elapsed
            if self._bytes[tid]:
                layers = tid + 1
            previous = self.bitrates[tid]
            self.bitrates[tid] = rate if not previous else (previous + rate) / 2
            previous_fps = self.frame_rates[tid]
            self.frame_rates[tid] = fps if not previous_fps else (previous_fps + fps) / 2
            self._bytes[tid] = 0
            self._frames[tid] = 0
        self.temporal_layers = layers

    def active(self, now: float) -> bool:
        return now - self.last_packet_at <= IDLE_AFTER


def header_marker_frame_start(payload: memoryview | bytes) -> bool:
    """Whether an H.264 payload starts a frame, roughly: a single NAL unit or STAP-A that is
    not a FU-A continuation (an FU-A with the start bit counts)."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type == 28:  # FU-A
        return len(payload) > 1 and bool(payload[1] & 0x80) and payload[1] & 0x1F in (1, 5)
    return nal_type in (1, 5, 24)
