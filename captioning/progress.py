"""Telling the user how far a long job is: durations, a progress bar, the trainer's step meter.

- `format_duration(seconds)`: "45s", "3m07s", "1h02m" ("?" for an unknown time).
- `ProgressBar`: one line on stderr for downloads (bytes) and feature
  extraction (images): done/total, percentage, rate and ETA.
- `StepMeter`: the training loop's tokens/s and ETA between two log lines.
"""
import math
import sys
import time

__all__ = ["format_duration", "ProgressBar", "StepMeter"]


def format_duration(seconds):
    """A short human duration: '45s', '3m07s', '1h02m'; '?' when not finite."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ProgressBar:
    """A one-line progress bar: done/total, percentage, rate, ETA.

    unit: "B" (amounts shown in MB) or a word for counted items ("img").
    start: what was already done before this run (resumed work), left out of the rate.
    On a terminal the line is redrawn in place (at most 5 times a second);
    otherwise (a log file) a line is printed every 10% so logs stay short.
    """

    def __init__(self, label, total, start=0, unit="img", stream=None, width=30):
        self.label, self.total, self.start, self.done = label, total, start, start
        self.unit, self.width = unit, width
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = self.last_draw = time.monotonic()
        self.last_tenth = -1

    def update(self, done):
        self.done = done
        now = time.monotonic()
        if self.interactive and now - self.last_draw >= 0.2:
            self.last_draw = now
            self.stream.write("\r" + self.line())
            self.stream.flush()
        elif not self.interactive and self.total:
            tenth = int(10 * done / self.total)
            if tenth > self.last_tenth and done < self.total:
                self.last_tenth = tenth
                self.stream.write(self.line() + "\n")
                self.stream.flush()

    def finish(self):
        self.stream.write(("\r" if self.interactive else "") + self.line() + "\n")
        self.stream.flush()

    def _amount(self, n):
        return f"{n / 1e6:.1f} MB" if self.unit == "B" else str(n)

    def line(self):
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        rate = (self.done - self.start) / elapsed
        rate_text = f"{rate / 1e6:.1f} MB/s" if self.unit == "B" else f"{rate:.1f} {self.unit}/s"
        if not self.total:
            return f"{self.label} {self._amount(self.done)} {rate_text}"
        fraction = min(self.done / self.total, 1.0)
        bar = "#" * int(self.width * fraction)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return (f"{self.label} [{bar:<{self.width}}] {100 * fraction:5.1f}% "
                f"{self._amount(self.done)}/{self._amount(self.total)} ETA {format_duration(eta)} {rate_text}")


class StepMeter:
    """Tokens per second since the last log line, and the ETA of a training run.

    total_steps: steps of the whole run; first_step: the step this session
    started at (resumed runs count only their own steps for the rate).
    """

    def __init__(self, total_steps, first_step, log_every):
        self.total_steps, self.first_step, self.log_every = total_steps, first_step, log_every
        self.session_start = self.window_start = self.last_log = time.perf_counter()
        self.window_tokens = 0

    def session_seconds(self):
        return time.perf_counter() - self.session_start

    def add(self, tokens):
        self.window_tokens += tokens

    def due(self, end_of_epoch):
        """True when a progress line is due (every log_every seconds, and at each epoch's end)."""
        return end_of_epoch or time.perf_counter() - self.last_log >= self.log_every

    def report(self, step, seconds_left=None):
        """(tokens/s, ETA seconds) and start a new window; seconds_left caps the ETA (a time limit)."""
        now = time.perf_counter()
        rate = self.window_tokens / max(now - self.window_start, 1e-9)
        per_step = (now - self.session_start) / max(step - self.first_step, 1)
        eta = per_step * (self.total_steps - step)
        if seconds_left is not None:
            eta = min(eta, seconds_left)
        self.last_log = self.window_start = now
        self.window_tokens = 0
        return rate, eta
