"""The subprocess wrapper stops whole process groups."""

import asyncio
import os
import textwrap

import pytest

from bkd import exec as bkexec


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


async def test_cancel_kills_a_tool_that_ignores_sigterm_and_its_grandchild(tmp_path):
    pids = tmp_path / "pids"
    tool = tmp_path / "stubborn"
    tool.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        trap '' TERM
        sh -c 'trap "" TERM; echo $$ >> {pids}; exec sleep 300' &
        echo $$ >> {pids}
        echo started
        sleep 300
        """))
    tool.chmod(0o755)
    lines = []
    task = asyncio.create_task(bkexec.run([tool], on_stdout=lines.append, grace=0.5))
    while len(lines) < 1 or len(pids.read_text().split()) < 2:
        await asyncio.sleep(0.05)
    recorded = [int(p) for p in pids.read_text().split()]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if not any(_alive(pid) for pid in recorded):
            break
        await asyncio.sleep(0.05)
    assert not any(_alive(pid) for pid in recorded)


async def test_output_lines_and_a_bounded_stderr_tail(tmp_path):
    script = "import sys\nfor i in range(100): print('err', i, file=sys.stderr)\nprint('a\\rb')\nsys.exit(3)"
    out = []
    result = await bkexec.run(["python3", "-c", script], on_stdout=out.append)
    assert result.returncode == 3
    assert out == ["a", "b"]
    assert len(result.stderr_tail) == bkexec.STDERR_TAIL_LINES and result.stderr_tail[-1] == "err 99"


async def test_stdout_can_go_to_a_reader_as_the_chunks_it_was_read_in():
    """rsync's itemized list is framed by its reader (CR and LF mean
    different things there): the bytes arrive as they are, none lost or split
    into lines, and stderr keeps its bounded tail."""
    script = ("import os, sys\nos.write(1, b'a\\rb\\n' * 100000)\nos.write(1, b'end')\n"
              "print('err', file=sys.stderr)")
    chunks = []
    result = await bkexec.run(["python3", "-c", script], on_stdout_bytes=chunks.append)
    assert result.returncode == 0 and result.stderr_tail == ["err"]
    assert b"".join(chunks) == b"a\rb\n" * 100000 + b"end"
    assert len(chunks) < 100  # read in big chunks, not a callback per line


async def test_a_tool_writing_a_line_at_a_time_wakes_the_reader_at_most_every_read_interval():
    """rsync writes each itemized line on its own, paced by the transfer:
    read as it came, every line cost an event-loop wakeup, and reading cost
    as much CPU as hashing (issue 17 item 12)."""
    script = "import os, time\nfor i in range(1000):\n    os.write(1, b'line %d\\n' % i)\n    time.sleep(0.0005)"
    chunks = []
    started = asyncio.get_running_loop().time()
    await bkexec.run(["python3", "-c", script], on_stdout_bytes=chunks.append)
    took = asyncio.get_running_loop().time() - started
    assert b"".join(chunks) == b"".join(b"line %d\n" % i for i in range(1000))
    assert len(chunks) <= took / bkexec.READ_EVERY + 2, (len(chunks), took)


async def test_a_chunk_reader_leaves_no_descriptor_and_no_watch_behind(tmp_path):
    opened = set(os.listdir("/proc/self/fd"))
    loop = asyncio.get_running_loop()
    with pytest.raises(FileNotFoundError):  # the child cannot even start
        await bkexec.run(["true"], cwd=str(tmp_path / "missing"), on_stdout_bytes=lambda chunk: None)
    chunks = []
    task = asyncio.create_task(bkexec.run(["sh", "-c", "echo started; exec sleep 60"],
                                          on_stdout_bytes=chunks.append, grace=0.5))
    deadline = loop.time() + 30
    while not chunks:  # it runs, and its output is being read
        assert loop.time() < deadline and not task.done()
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)  # the cancelled reader's own cleanup has run
    assert set(os.listdir("/proc/self/fd")) <= opened
    watched = {key.fd for key in loop._selector.get_map().values()}
    assert not watched - {int(fd) for fd in opened}


async def test_stopping_a_tool_whose_child_left_the_group_holding_its_output_ends_at_once(tmp_path):
    """A hook that starts a daemon of its own (setsid) which keeps stdout open:
    cancelling the hook ends as soon as the hook's group is dead, instead of
    waiting out the grace period for pipes that child holds."""
    pid_file = tmp_path / "escaped"
    lines = []
    task = asyncio.create_task(bkexec.run(
        ["sh", "-c", f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 60' & echo started; exec sleep 300"],
        on_stdout=lines.append, grace=5))
    while not lines or not pid_file.exists() or not pid_file.read_text().strip():
        await asyncio.sleep(0.05)
    escaped = int(pid_file.read_text())
    try:
        started = asyncio.get_running_loop().time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.get_running_loop().time() - started < 2.5  # not the 5 s grace
    finally:
        os.kill(escaped, 9)


# ---- the stall watchdog: progress is I/O of the group's processes, not output ------

async def test_a_tool_that_sleeps_without_io_is_stopped_after_its_stall_limit(tmp_path):
    """rsync whose remote end is frozen prints nothing and moves no data: the
    group (here a shell and its sleeping grandchild) is stopped, and the run
    raises Stalled naming the limit."""
    pid_file = tmp_path / "pid"
    started = asyncio.get_running_loop().time()
    with pytest.raises(bkexec.Stalled) as stalled:
        await bkexec.run(["sh", "-c", f"sh -c 'echo $$ > {pid_file}; exec sleep 300'; sleep 300"], stall=1.5,
                         grace=0.5)
    took = asyncio.get_running_loop().time() - started
    assert 1.5 <= took < 5, took
    assert str(stalled.value) == "no I/O for 1.5s" and stalled.value.seconds == 1.5
    assert not _alive(int(pid_file.read_text()))


async def test_keepalives_alone_are_no_progress(tmp_path):
    """A frozen transfer's local processes still trade keepalives (rsync
    writes 4 bytes every few seconds, ssh a few dozen): that is not progress."""
    script = "import os, time\nwhile True:\n    os.write(1, b'1234')\n    time.sleep(0.2)"
    with pytest.raises(bkexec.Stalled):
        await bkexec.run(["python3", "-c", script], stall=1.5, grace=0.5)


async def test_a_tool_that_reads_steadily_without_printing_is_not_stopped(tmp_path):
    """A compare prints nothing for minutes while it reads: reading is
    progress, also when a grandchild does it."""
    data = tmp_path / "data"
    data.write_bytes(os.urandom(64 * 1024))
    script = (f"import time\nfor _ in range(20):\n    open({str(data)!r}, 'rb').read()\n    time.sleep(0.15)\n"
              "print('done')")
    lines = []
    result = await bkexec.run(["sh", "-c", 'python3 -c "$1"; true', "sh", script], on_stdout=lines.append,
                              stall=1.0)
    assert result.returncode == 0 and lines == ["done"]  # 3 s of silence on stdout, never stopped


# ---- bounded reads (issue 18, item 4) ------------------------------------------------------------------
# A compromised host's endless stderr line (40 MiB, no newline) made a sub-second run take 39 s and put
# the whole line into the job's detail: every line read from a child is cut at a fixed size, the rest
# counted and dropped as it arrives, and the buffer is never copied again as it grows.

ENDLESS = 40 * 1024 * 1024


async def test_an_endless_stderr_line_is_cut_counted_and_read_in_linear_time():
    script = (f"import sys\nsys.stderr.buffer.write(b'first\\n' + b'\\x1b' * {ENDLESS} + b'\\nlast\\n')\n"
              "sys.exit(1)")
    started = asyncio.get_running_loop().time()
    result = await bkexec.run(["python3", "-c", script])
    assert asyncio.get_running_loop().time() - started < 10  # 39 s before, most of it re-copying the buffer
    assert result.returncode == 1
    assert result.stderr_tail[0] == "first" and result.stderr_tail[-1] == "last"
    cut = result.stderr_tail[1]
    assert cut.startswith("\x1b" * bkexec.STDERR_LINE_LIMIT)
    assert cut.endswith(f" [+{ENDLESS - bkexec.STDERR_LINE_LIMIT} bytes not kept]")
    assert result.dropped == ENDLESS - bkexec.STDERR_LINE_LIMIT
    assert sum(map(len, result.stderr_tail)) < bkexec.STDERR_TAIL_LINES * (bkexec.STDERR_LINE_LIMIT + 64)


async def test_a_line_without_its_end_never_reaches_a_parser():
    """stdout is parsed (rsync's itemized list): an over-long line is not
    handed on cut, where its first part could pass for a whole line."""
    limit = bkexec.LINE_LIMIT
    script = f"import sys\nsys.stdout.write('a\\n' + 'x' * {limit + 10} + '\\r' + 'y' * {limit} + '\\nb')"
    out = []
    result = await bkexec.run(["python3", "-c", script], on_stdout=out.append)
    assert out == ["a", "y" * limit, "b"]
    assert result.dropped == 10


async def test_a_flood_of_short_stderr_lines_keeps_the_newest_and_is_read_fast():
    script = "import sys\nsys.stderr.buffer.write(b'line\\n' * 20_000_000 + b'end\\n')"
    started = asyncio.get_running_loop().time()
    result = await bkexec.run(["python3", "-c", script])
    assert asyncio.get_running_loop().time() - started < 10
    assert result.stderr_tail[-1] == "end" and len(result.stderr_tail) == bkexec.STDERR_TAIL_LINES
