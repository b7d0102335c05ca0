"""A hook's output is bounded where it is kept: in the log (a hook that relays
a host's output may print without end) and in the run's detail (issue 18,
item 4: a host's endless line became the job's detail)."""

import pytest
from structlog.testing import capture_logs

from bkd import exec as bkexec
from bkd.pipeline import hooks


async def test_a_hook_printing_without_end_logs_its_first_lines_and_a_count():
    with capture_logs() as logs:
        await hooks.run_hook("pre", "seq 100000", 60, {})
    output = [entry for entry in logs if entry["event"] == "hook.output"]
    assert len(output) == hooks.LOGGED_LINES and output[-1]["line"] == str(hooks.LOGGED_LINES)
    assert [entry["lines"] for entry in logs if entry["event"] == "hook.output_not_logged"] == \
        [100000 - hooks.LOGGED_LINES]


async def test_a_failing_hook_s_endless_line_is_cut_in_its_message():
    command = "head -c 10000000 /dev/zero | tr '\\0' x >&2; exit 3"
    with capture_logs(), pytest.raises(hooks.HookFailed) as failed:
        await hooks.run_hook("pre", command, 60, {})
    message = str(failed.value)
    assert message.startswith("pre hook exited with code 3: xxx")
    assert len(message) < bkexec.STDERR_LINE_LIMIT + 100 and message.endswith("bytes not kept]")
