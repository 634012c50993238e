"""``salon bench archive`` through real archiver processes, small: the command's correctness
(every stream written, every frame in), not a timing."""

from __future__ import annotations

import json

import pytest

from salon.cli import main


@pytest.mark.timeout(180)
def test_bench_archive_individual_remuxes_every_frame(capsys: pytest.CaptureFixture[str]) -> None:
    main(["bench", "archive", "--mode", "individual", "--streams", "2", "--duration", "3"])
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "individual" and report["config"]["streams"] == 2
    assert report["output"]["files"] == ["stream-0.webm", "stream-1.webm"]
    assert report["output"]["errors"] == []
    # 3 s of 25 fps video and 20 ms audio per stream, all written (nothing lost on loopback).
    assert report["output"]["frames"] == {f"stream-{i}": {"video": 75, "audio": 150} for i in range(2)}
    cpu = report["cpu"]
    assert cpu["cpu_seconds"] > 0 and cpu["wall_seconds"] >= 3
    assert cpu["cores_per_stream"] == pytest.approx(cpu["cores"] / 2, abs=1e-3)


@pytest.mark.timeout(180)
def test_bench_archive_composed_through_the_archiver(capsys: pytest.CaptureFixture[str]) -> None:
    main(["bench", "archive", "--archiver", "--streams", "2", "--duration", "3", "--resolution", "640x480"])
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "composed (archiver process)" and report["output"]["errors"] == []
    assert report["output"]["frames_in"] == {f"stream-{i}": {"video": 75, "audio": 150} for i in range(2)}
    # The output runs from the archive's start to its stop at 25 fps.
    assert report["output"]["frames"] == round(report["output"]["duration"] * 25)
    assert report["output"]["duration"] >= 3 and report["output"]["bytes"] > 0
    assert report["cpu"]["cores"] > 0
    # Stream 0's flashes and beeps went through the whole pipeline and were paired.
    assert report["av_offset"]["pairs"] >= 2, report["av_offset"]
