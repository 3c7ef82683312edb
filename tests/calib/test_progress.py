"""The calibration progress bar: samples, throughput, time left; silent unless enabled."""

from __future__ import annotations

import io

from kiln.calib.progress import ProgressBar


def test_draws_samples_rate_and_eta():
    stream = io.StringIO()
    bar = ProgressBar(64, stream=stream, enabled=True)
    bar.update(16)
    bar.update(48)
    text = stream.getvalue()
    assert "64/64 samples" in text and "samples/s" in text and "[" + "#" * 24 + "]" in text
    bar.close()
    assert stream.getvalue().endswith("\r\x1b[K")


def test_unknown_total_and_disabled():
    stream = io.StringIO()
    bar = ProgressBar(None, stream=stream, enabled=True)
    bar.update(3)
    assert "3 samples" in stream.getvalue()
    quiet = io.StringIO()
    bar = ProgressBar(10, stream=quiet)  # not a terminal: off by default
    bar.update(10)
    bar.close()
    assert quiet.getvalue() == "" and bar.done == 10
