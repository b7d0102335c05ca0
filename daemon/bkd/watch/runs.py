"""What follows a run's start and end for the people watching, as listeners
of the run lifecycle (runs/lifecycle.py):

- the alert rules: a backup run that fails `failures_before_alert` times in
  a row opens `run_failed` (heavy work at once, per kind); one refused by
  ssh itself (login, host key) opens `auth` at once instead; a good run
  resolves them. Thresholds come from the run's plan: a reload during the
  run changes nothing about it.
- the host's dead-man pings (healthchecks.io convention): `/start` when a
  backup run starts, the URL when it succeeds, `/fail` with the log tail
  when it fails; a run cancelled or interrupted pings neither (the next
  run's outcome will)."""

from __future__ import annotations

from bkctl.fmt import safe
from bkctl.protocol import BACKUP_KINDS, AlertKind, Kind, Status

from ..alerts.notify.ping import Pinger
from ..alerts.service import Alerts
from ..config.runtime import Runtime
from ..pipeline import failures
from ..runs.lifecycle import Lifecycle
from ..runs.registry import Run
from ..state.hosts import Fleet

LOG_TAIL = 10_000  # bytes of the log tail a `/fail` carries (healthchecks keeps 100 kB)


class RunWatch:
    def __init__(self, runtime: Runtime, lifecycle: Lifecycle, fleet: Fleet, alerts: Alerts, pinger: Pinger):
        self.runtime = runtime
        self.fleet = fleet
        self.alerts = alerts
        self.pinger = pinger
        lifecycle.on_started.append(self.started)
        lifecycle.on_concluded.append(self.concluded)
        lifecycle.on_recorded.append(self.recorded)

    def started(self, run: Run) -> None:
        if url := _ping_url(run):
            self.pinger.send(run.host, url, "start")

    def concluded(self, run: Run) -> None:
        """The end's ping, at once."""
        url = _ping_url(run)
        if not url or run.started is None:
            return
        if run.status in (Status.OK, Status.WARNING):
            self.pinger.send(run.host, url, "")
        elif run.status is Status.FAILED:
            # The log tail a person reads on the checker's page: what a host printed in it, escaped.
            tail = f"bkd: {run.host} job {run.job_id} {run.status}\n{safe(run.detail or run.error or '')}\n"
            self.pinger.send(run.host, url, "fail", tail.encode(errors="replace")[-LOG_TAIL:])

    async def recorded(self, run: Run) -> None:
        """The alert rules, once the run's record is written."""
        if run.request.dry_run or run.kind is Kind.RESTORE:
            return
        subject = None if run.kind in BACKUP_KINDS else str(run.kind)
        refusal = run.refusal if run.status is Status.FAILED else None
        if refusal and subject is None:
            # A refused login or host key needs a person: `auth` at once, instead of run_failed.
            await self.alerts.raise_(AlertKind.AUTH, run.host, failures.auth_message(refusal))
        elif run.status is Status.FAILED:
            streak = self.fleet.record(run.host).consecutive_failures if subject is None else 1
            # A run that failed before it was planned (a bug) has no plan: the config of now.
            config = run.plan.config if run.plan else self.runtime.config
            threshold = config.alerts.failures_before_alert if subject is None else 1
            if streak >= threshold:
                what = f"{run.kind} run failed" + (f" ({streak} in a row)" if streak > 1 else "")
                await self.alerts.raise_(AlertKind.RUN_FAILED, run.host, f"{what}: {run.error}", subject,
                                         count=streak if subject is None else None)
        elif run.status in (Status.OK, Status.WARNING):
            await self.alerts.resolve(AlertKind.RUN_FAILED, run.host, subject)
            if subject is None:
                await self.alerts.resolve(AlertKind.AUTH, run.host)


def _ping_url(run: Run) -> str:
    """The host's ping URL for a backup run, from the run's own plan (a reload never changes it)."""
    if run.kind not in BACKUP_KINDS or run.request.dry_run or run.plan is None:
        return ""
    return run.plan.settings.host.ping_url
