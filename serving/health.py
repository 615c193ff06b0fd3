"""One health tracker for the launcher's watchdog and the cluster's active checks: consecutive checks add up to a
verdict, so one slow answer does not take a server out and one good answer does not put a broken one back."""

from __future__ import annotations


class HealthStreak:
    """The run of consecutive good or bad checks of one server, and the verdict it adds up to.

    ``fall`` bad checks in a row make it unhealthy; ``rise`` good checks in a row make it healthy again.
    """

    def __init__(self, fall: int, rise: int, healthy: bool = True) -> None:
        if fall < 1 or rise < 1:
            raise ValueError(f"fall and rise must be >= 1, got {fall} and {rise}")
        self.fall = fall
        self.rise = rise
        self.healthy = healthy
        self.run = 0  # > 0: consecutive good checks; < 0: consecutive bad ones

    def observe(self, good: bool) -> bool:
        """Count one check; returns the verdict after it."""
        self.run = max(self.run, 0) + 1 if good else min(self.run, 0) - 1
        if self.run <= -self.fall:
            self.healthy = False
        elif self.run >= self.rise:
            self.healthy = True
        return self.healthy

    def reset(self, healthy: bool = True) -> None:
        """Start counting afresh (after a recovery)."""
        self.run = 0
        self.healthy = healthy
