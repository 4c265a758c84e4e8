"""A node's boot as an ordered list of stages; pure data, time comes in as `now`."""

from __future__ import annotations

from dataclasses import dataclass, field

# The stages of one network boot, in the order a healthy boot reaches them.
STAGES: tuple[str, ...] = (
    "dhcp",  # firmware PXE DORA
    "tftp",  # NBP (iPXE) download
    "dhcp-ipxe",  # iPXE's own DORA
    "bootscript",  # iPXE script over HTTP
    "kernel",
    "initrd",
    "dhcp-linux",  # the booted kernel/initramfs asks again
    "rootfs",  # root=live: image
    "cloud-init",  # meta-data / user-data / vendor-data
    "booted",  # phone-home
)

# A node silent this long before it DHCPs as firmware again is on a new boot.
NEW_BOOT_AFTER = 900.0


@dataclass(slots=True)
class StageRecord:
    """When a stage started (first and last attempt), ended, and what it moved."""

    stage: str
    first_start: float
    last_start: float
    end: float | None = None
    attempts: int = 1
    bytes: int = 0
    detail: str = ""

    @property
    def retries(self) -> int:
        """Attempts beyond the first."""
        return self.attempts - 1


@dataclass(slots=True)
class NodeTimeline:
    """One boot of one node."""

    mac: str
    boot_id: int
    power_on: float
    last_event: float
    stages: dict[str, StageRecord] = field(default_factory=dict)

    @property
    def booted(self) -> bool:
        """The node phoned home on this boot."""
        return "booted" in self.stages

    @property
    def current_stage(self) -> str:
        """The furthest stage reached, by the canonical order."""
        reached = [s for s in STAGES if s in self.stages]
        extra = [s for s in self.stages if s not in STAGES]
        return (reached or extra or ["-"])[-1]

    def is_new_boot(self, stage: str, now: float) -> bool:
        """Whether a firmware DHCP event at `now` begins a fresh boot."""
        if stage != "dhcp":
            return False
        return self.booted or now - self.last_event > NEW_BOOT_AFTER

    def record(
        self, stage: str, event: str, now: float, nbytes: int = 0, detail: str = ""
    ) -> StageRecord:
        """Apply one 'start' | 'end' | 'event' (start and end at once) to a stage."""
        self.last_event = now
        rec = self.stages.get(stage)
        if rec is None:
            rec = self.stages[stage] = StageRecord(stage, now, now)
        elif event in ("start", "event") and (rec.end is not None or event == "start"):
            # A repeated start is a retry; bytes count again from zero.
            rec.attempts += 1
            rec.last_start = now
            rec.end = None
            rec.bytes = 0
        if event in ("end", "event"):
            rec.end = now
        if nbytes:
            rec.bytes += nbytes
        if detail:
            rec.detail = detail
        return rec

    def ordered(self) -> list[StageRecord]:
        """Stages in the order they were first reached."""
        return sorted(self.stages.values(), key=lambda r: r.first_start)

    def to_dict(self) -> dict[str, object]:
        """JSON form for the API and `bootd boots`."""
        return {
            "mac": self.mac,
            "boot_id": self.boot_id,
            "power_on": self.power_on,
            "last_event": self.last_event,
            "current_stage": self.current_stage,
            "booted": self.booted,
            "stages": [
                {
                    "stage": r.stage,
                    "start": round(r.first_start - self.power_on, 3),
                    "end": None if r.end is None else round(r.end - self.power_on, 3),
                    "duration": None if r.end is None else round(r.end - r.last_start, 3),
                    "retries": r.retries,
                    "bytes": r.bytes,
                    "detail": r.detail,
                }
                for r in self.ordered()
            ],
        }
