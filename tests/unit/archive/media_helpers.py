"""Coded media for the archive tests: VP8 / H.264 / Opus encoded with PyAV, packetised into
RTP with aiortc's packetisers (what publishers send)."""

from __future__ import annotations

import fractions
from collections.abc import Iterator

import av
import numpy as np
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from salon.media.rtp import build_rtp

VIDEO_RATE = 90000
FPS = 30


def colour_frames(
    count: int, colour: tuple[int, int, int], *, width: int = 320, height: int = 240
) -> Iterator[av.VideoFrame]:
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = colour
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i * (VIDEO_RATE // FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_RATE)
        yield frame


def encode_video(
    codec: str, count: int, colour: tuple[int, int, int], *, key_every: int = 0
) -> list[tuple[bytes, int, bool]]:
    """``count`` frames of one colour encoded: (bitstream, RTP timestamp, key frame)."""
    encoder = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base = fractions.Fraction(1, VIDEO_RATE)
    encoder.framerate = fractions.Fraction(FPS)
    if codec == "vp8":
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    else:
        encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
        encoder.profile = "baseline"
    out: list[tuple[bytes, int, bool]] = []
    for i, frame in enumerate(colour_frames(count, colour)):
        if key_every and i and i % key_every == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in encoder.encode(frame):
            out.append((bytes(packet), int(packet.pts), bool(packet.is_keyframe)))
    for packet in encoder.encode(None):
        out.append((bytes(packet), int(packet.pts), bool(packet.is_keyframe)))
    return out


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (start codes removed)."""
    return [u for u in data.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01") if u]


def rtp_video(
    codec: str, frames: list[tuple[bytes, int, bool]], *, ssrc: int = 1234, seq: int = 1000, pt: int = 96
) -> list[bytes]:
    """RTP packets of the frames (marker on each frame's last packet)."""
    packets: list[bytes] = []
    picture_id = 0
    for data, timestamp, _key in frames:
        if codec == "vp8":
            payloads = Vp8Encoder._packetize(data, picture_id)
        else:
            payloads = H264Encoder._packetize(split_annexb(data))
        picture_id = (picture_id + 1) % (1 << 15)
        for i, payload in enumerate(payloads):
            packets.append(
                build_rtp(
                    payload_type=pt,
                    sequence_number=seq & 0xFFFF,
                    timestamp=timestamp & 0xFFFFFFFF,
                    ssrc=ssrc,
                    payload=payload,
                    marker=i == len(payloads) - 1,
                )
            )
            seq += 1
    return packets


def rtp_opus(
    count: int, *, freq: float = 440.0, ssrc: int = 5678, seq: int = 7000, pt: int = 111
) -> list[bytes]:
    """``count`` 20 ms Opus packets of a tone."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.time_base = fractions.Fraction(1, 48000)
    packets: list[bytes] = []
    timestamp = 3000
    for i in range(count):
        t = (np.arange(960) + i * 960) / 48000
        tone = (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(tone[None, :], 2, 0).T.reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = 48000
        frame.pts = i * 960
        for packet in encoder.encode(frame):
            packets.append(
                build_rtp(
                    payload_type=pt,
                    sequence_number=(seq + len(packets)) & 0xFFFF,
                    timestamp=(timestamp + len(packets) * 960) & 0xFFFFFFFF,
                    ssrc=ssrc,
                    payload=bytes(packet),
                    marker=False,
                )
            )
    return packets
