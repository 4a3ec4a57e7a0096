"""What the demo tells a newcomer on stderr while it runs: the stage, what is being trained or drawn, how
long is left, and at the end where the contact sheet is and what to look at in it. On a terminal the
progress line updates in place; in a log, a line every 10 % of a stage."""
from __future__ import annotations

import sys
import time

NAMES = {"saim": "DualAnoDiff", "no_saim": "without SAIM"}
UNITS = {"train": "steps", "generate": "pairs"}


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


class Narrator:
    def __init__(self, stream=None, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.clock = clock
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.began = clock()
        self.progress_state: dict = {}   # (variant, stage) -> (done, total, first report time, first done)
        self.last_shown: dict = {}       # stage -> (tenth of the stage done, variants reported) last printed
        self.open_line = False

    def say(self, text: str) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def stage(self, number: int, total: int, text: str) -> None:
        self.say(f"[{number}/{total}] {text}")

    def progress(self, variant: str, stage: str, done: int, total: int) -> None:
        now = self.clock()
        first = self.progress_state.get((variant, stage))
        start = (now, done) if first is None else first[2:]
        self.progress_state[(variant, stage)] = (done, total, *start)
        line = self._line(stage, now)
        states = [(d, t) for (v, s), (d, t, *_) in self.progress_state.items() if s == stage]
        shown = (sum(d for d, _ in states) * 10 // max(1, sum(t for _, t in states)), len(states))
        if self.tty:
            self.stream.write("\r      " + line.ljust(90))
            self.stream.flush()
            self.open_line = True
        elif shown != self.last_shown.get(stage):
            self.last_shown[stage] = shown
            self.say("      " + line)

    def _line(self, stage: str, now: float) -> str:
        parts, left, unfinished, unknown = [], 0.0, False, False
        for (variant, s), (done, total, t0, d0) in self.progress_state.items():
            if s != stage:
                continue
            parts.append(f"{NAMES.get(variant, variant)} {done}/{total} {UNITS[stage]}")
            if done >= total:
                continue
            unfinished = True
            if done > d0 and now > t0:
                left = max(left, (total - done) * (now - t0) / (done - d0))
            else:
                unknown = True  # no rate yet
        eta = "done" if not unfinished else "estimating the time left" if unknown else f"about {duration(left)} left"
        return " | ".join(parts) + f" | {eta}"

    def finish(self, seconds: float, sheet: str, metrics_path: str, report: dict) -> None:
        with_saim = report.get("saim", {}).get("alignment_iou")
        without = report.get("no_saim", {}).get("alignment_iou")
        lines = [f"Done in {duration(seconds)}.",
                 f"Open {sheet}: first the {report.get('config', {}).get('shots', 8)} real training pairs, then the "
                 "pairs each model drew, one per row:",
                 "  global image (the whole object) | anomaly image (the defect alone) | mask (cut out of the "
                 "anomaly image) | overlay (the mask in green on the global image).",
                 "  With SAIM the green mask covers the magenta defect of the global image: image and mask agree."]
        if without is not None:
            lines.append("  Without SAIM the two images draw their defects in different places, so the mask misses.")
        if "placed" in report:
            lines.append("  The last block puts defects on normal objects, inside the yellow outlines.")
        scores = f"alignment IoU {with_saim}" + (f" with SAIM, {without} without" if without is not None else "")
        lines.append(f"Metrics ({scores}; 1 = mask and defect match exactly): {metrics_path}")
        self.say("\n".join(lines))
