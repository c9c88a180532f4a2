"""py-spy on running processes during a benchmark, and its samples summed per function.

``Recording`` runs ``py-spy record --format raw`` (collapsed stacks: ``frame;frame;... count``)
on a process until the block ends; :func:`by_function` sums the samples of one output by
function: *self* counts the samples where the function is the innermost frame, *total* the
samples where it is anywhere on the stack (once per stack, however deep the recursion).

Idle threads are not sampled (py-spy's default), so the figures are where the busy CPU went.
``python -m bench.profiling FILE [N]`` prints the top N (20) of a saved recording.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

PY_SPY = Path(sys.executable).with_name("py-spy")
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Innermost frames of a thread that waits (the event loop's select, an idle pool thread): py-spy
# counts a waiting thread that the kernel has not put to sleep yet, or one that is runnable
# but not running on a busy machine. Left out of the "busy" figures.
WAITING = frozenset(
    {
        "EpollSelector.select (selectors.py)",
        "Condition.wait (threading.py)",
        "_worker (thread.py)",
        "Event.wait (threading.py)",
    }
)


class Recording:
    """``py-spy record`` of ``pid`` into ``output`` while the ``with`` block runs.

    Non-blocking: the process is not paused to sample it, so it runs at its own speed (a
    stack may rarely be torn).
    """

    def __init__(self, pid: int, output: Path, rate: int = 100, *, gil: bool = False) -> None:
        self.output = output
        self.args = [
            str(PY_SPY), "record", "--pid", str(pid), "--format", "raw", "--threads",
            "--output", str(output), "--rate", str(rate), "--nonblocking",
            *(["--gil"] if gil else []),
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Recording:
        self.process = subprocess.Popen(  # noqa: S603
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def function_of(frame: str) -> str:
    """``name (path/to/module.py:12)`` → ``name (module.py)``: one entry per function."""
    found = _FRAME.match(frame.strip())
    if found is None:
        return frame.strip()
    return f"{found['function']} ({Path(found['file']).name})"


def package_of(frame: str) -> str:
    """The top-level package (``sqlalchemy``, ``asyncio``, ``api``) or module of a frame."""
    found = _FRAME.match(frame.strip())
    if found is None:
        return frame.strip()
    return found["file"].split("/", 1)[0].removesuffix(".py")


@dataclass
class Profile:
    samples: int
    busy: int  # samples whose innermost frame is not a wait (see ``WAITING``)
    self_samples: Counter[str]
    total_samples: Counter[str]
    package_samples: Counter[str]  # busy samples by the package of the innermost frame


def by_function(path: Path) -> Profile:
    """Self and total samples per function of a ``py-spy record --format raw`` output.

    Frames of SQLAlchemy's async layer run in greenlets, whose stacks py-spy sees without
    their callers: self samples and packages count them right, totals of callers miss them.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = busy = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # py-spy names the thread first when asked to ("process 123:..." or "thread (0x...)");
        # that is no function and is left out.
        raw_frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not raw_frames:
            continue
        frames = [function_of(f) for f in raw_frames]
        samples += count
        own[frames[-1]] += count
        for function in set(frames):
            total[function] += count
        if frames[-1] not in WAITING:
            busy += count
            packages[package_of(raw_frames[-1])] += count
    return Profile(samples, busy, own, total, packages)


def summary(path: Path, top: int = 20) -> str:
    """The ``top`` functions by self samples and by total samples, in percent of all samples."""
    profile = by_function(path)
    if not profile.samples:
        return f"{path.name}: no samples"
    lines = [
        f"{path.name}: {profile.samples} samples, {profile.busy} busy",
        "  busy samples by package: "
        + ", ".join(
            f"{package} {count / profile.busy:.0%}"
            for package, count in profile.package_samples.most_common(12)
        ),
    ]
    for title, counter in (("self", profile.self_samples), ("total", profile.total_samples)):
        lines.append(f"  by {title}:")
        lines += [
            f"    {count / profile.samples:6.1%}  {function}"
            for function, count in counter.most_common(top)
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 20))
