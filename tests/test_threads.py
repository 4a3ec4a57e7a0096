"""The thread count the commands give torch: the cores other processes leave free, an explicit choice kept."""
from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest

from dualanodiff_core.errors import DualAnoDiffError
from dualanodiff_core.runtime import threads


@pytest.fixture
def two_cpus(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)


@pytest.mark.parametrize("busy,expected", [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (1.9, 1)])
def test_free_cpus_leave_out_those_other_processes_keep_busy(two_cpus, busy, expected):
    assert threads.free_cpus(busy) == expected


def test_all_usable_cpus_where_the_load_is_unknown(two_cpus, monkeypatch):
    monkeypatch.setattr(threads, "busy_cpus", lambda window=0.3: None)  # Windows: no /proc/stat, no load average
    assert threads.free_cpus() == 2


def test_an_explicit_thread_count_wins(two_cpus, monkeypatch):
    monkeypatch.setattr(threads, "busy_cpus", lambda window=0.3: 1.0)
    monkeypatch.delenv("DUALANODIFF_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.choose_threads() == 1
    monkeypatch.setattr(threads, "busy_cpus", lambda window=0.3: 0.0)
    assert threads.choose_threads() == 2 and threads.choose_threads(share=2) == 1  # two processes: one each
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads() is None  # the user's OpenMP setting stays
    monkeypatch.setenv("DUALANODIFF_THREADS", "3")
    assert threads.choose_threads() == 3
    monkeypatch.setenv("DUALANODIFF_THREADS", "two")
    with pytest.raises(DualAnoDiffError, match="DUALANODIFF_THREADS='two' is not a whole number"):
        threads.choose_threads()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_a_busy_process_is_seen():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.busy_cpus(0.5) >= 0.7
    finally:
        spinner.kill()
        spinner.wait()


def test_the_demo_narration_says_what_runs_and_how_long_is_left():
    from dualanodiff_core.demo.narration import Narrator

    now = [0.0]
    out = io.StringIO()
    say = Narrator(out, clock=lambda: now[0])
    say.stage(2, 4, "Training two models side by side")
    for step in (1, 2, 31, 61):  # 60 steps in 30 s after the first: 0.5 s per step
        now[0] = (step - 1) * 0.5
        say.progress("saim", "train", step, 600)
        say.progress("no_saim", "train", step, 600)
    text = out.getvalue()
    assert text.startswith("[2/4] Training two models side by side\n")
    assert "DualAnoDiff 1/600 steps | estimating the time left" in text  # no rate after one report
    assert "DualAnoDiff 61/600 steps | without SAIM 61/600 steps | about 4 min 30 s left" in text
    # in a log, a line when a tenth of the stage is done or another model reports, not one per step
    assert text.count("DualAnoDiff") == 3, text
    say.finish(250.0, "dualanodiff-demo/contact_sheet.png", "dualanodiff-demo/metrics.json",
               {"saim": {"alignment_iou": 0.83}, "no_saim": {"alignment_iou": 0.05}})
    end = out.getvalue().split("Done in", 1)[1]
    assert end.startswith(" 4 min 10 s.") and "Open dualanodiff-demo/contact_sheet.png" in end
    assert "alignment IoU 0.83 with SAIM, 0.05 without" in end and "the mask misses" in end
