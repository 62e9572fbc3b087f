"""The cluster's notice board: one small detached actor that every limner server and every replica reaches by
name, for what a deployment handle cannot carry (a call reaches one replica, and only while its caller lives).

- **Leases.** Each limner server renews its lease every quarter of `ray_lease_s`. A replica stops a job whose
  server's lease is older than that at the job's next step: a server killed outright (SIGKILL, a lost machine)
  cannot cancel its jobs, and its stream's end never reaches the replica.
- **Reports.** Each replica says every tick what it holds loaded, for the `models` tool.
- **Unload orders.** `models(action='unload')` posts one for the deployments that serve a role; every replica
  of them acts on it at its next tick and answers in its report.

Ages are measured on the board's own clock, so the machines' clocks need not agree. Imported only with Ray.
"""

from __future__ import annotations

import time
from typing import Any

import ray

BOARD_NAME = "limner-board"
BOARD_NAMESPACE = "limner"
TICK_S = 0.5  # how often a replica reads its jobs' leases and the unload orders, and reports
ANSWERS_KEPT = 20  # unload answers a replica keeps in its report


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Board:
    """Leases by limner server, reports by replica, unload orders by deployment (numbered)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.leases: dict[str, float] = {}
        self.reports: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, list[tuple[int, list[str]]]] = {}
        self.seq = 0

    def renew(self, server: str) -> None:
        self.leases[server] = time.time()

    def release(self, server: str) -> None:
        self.leases.pop(server, None)

    def tick(
        self, replica: str, deployment: str, servers: list[str], report: dict[str, Any], seen: int
    ) -> tuple[dict[str, float], list[tuple[int, list[str]]], int]:
        """A replica's tick: store its report; answer its servers' lease ages and the orders after `seen`
        (a new replica, seen < 0, starts after the current ones: it holds nothing they could free)."""
        now = time.time()
        self.reports[replica] = {**report, "deployment": deployment, "at": now, "seen": seen}
        # a lease this board never saw (it restarted) counts from the board's start: a grace, not a stop
        ages = {server: now - self.leases.get(server, self.started) for server in servers}
        if seen < 0:
            return ages, [], self.seq
        orders = [(n, targets) for n, targets in self.orders.get(deployment, []) if n > seen]
        return ages, orders, self.seq

    def order(self, deployments: list[str], targets: list[str]) -> int:
        """Post an unload order for the deployments' replicas; its number."""
        self.seq += 1
        for deployment in deployments:
            kept = self.orders.setdefault(deployment, [])
            kept.append((self.seq, targets))
            del kept[:-ANSWERS_KEPT]
        return self.seq

    def reports_of(self, deployment: str) -> dict[str, dict[str, Any]]:
        """The reports of the deployment's replicas, each with its age in seconds."""
        now = time.time()
        return {
            replica: {**report, "age_s": now - report["at"]}
            for replica, report in self.reports.items()
            if report["deployment"] == deployment
        }

    def forget(self, replicas: list[str]) -> None:
        """Drop the reports of replicas that are gone."""
        for replica in replicas:
            self.reports.pop(replica, None)


def board() -> Any:
    """The board's handle: made by the first limner server that connects, found by name after that."""
    return Board.options(  # type: ignore[attr-defined]
        name=BOARD_NAME, namespace=BOARD_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()
