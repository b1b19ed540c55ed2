"""Live per-class controls (enable, sensitivity, snooze): one implementation for MQTT and the API.

Changes are persisted in the store's settings table so that they survive a restart, and
listeners (the pipeline's deciders, the MQTT sink) are told about every change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from service.events import iso, utc_now

log = logging.getLogger(__name__)

SNOOZE_MAX = timedelta(days=7)


@dataclass(frozen=True)
class ClassControl:
    name: str
    enabled: bool = True
    sensitivity: float = 0.5
    snoozed_until: datetime | None = None

    def snoozed(self, now: datetime | None = None) -> bool:
        return self.snoozed_until is not None and (now or utc_now()) < self.snoozed_until

    def allows_events(self, now: datetime | None = None) -> bool:
        return self.enabled and not self.snoozed(now)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["snoozed_until"] = iso(self.snoozed_until) if self.snoozed() else None
        data["snoozed"] = self.snoozed()
        return data


Listener = Callable[[ClassControl], None]


class ClassControls:
    """The current control state of every class, with change notification."""

    def __init__(self, initial: Iterable[ClassControl], persist: Callable[[str, Any], None] | None = None) -> None:
        self._controls = {c.name: c for c in initial}
        self._listeners: list[Listener] = []
        self._persist = persist

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def names(self) -> list[str]:
        return list(self._controls)

    def get(self, name: str) -> ClassControl:
        if name not in self._controls:
            raise KeyError(f"unknown class {name!r}; known: {', '.join(self._controls)}")
        return self._controls[name]

    def all(self) -> list[ClassControl]:
        return list(self._controls.values())

    def allows(self, name: str) -> bool:
        return self.get(name).allows_events()

    def update(
        self,
        name: str,
        enabled: bool | None = None,
        sensitivity: float | None = None,
        snoozed_until: datetime | None = None,
        clear_snooze: bool = False,
    ) -> ClassControl:
        """Apply a change; raises ValueError for out-of-range values, KeyError for unknown classes."""
        current = self.get(name)
        if sensitivity is not None and not 0.0 <= sensitivity <= 1.0:
            raise ValueError(f"sensitivity must be between 0 and 1, got {sensitivity}")
        if snoozed_until is not None:
            if snoozed_until.tzinfo is None:
                raise ValueError("snooze time must carry a time zone")
            if snoozed_until - utc_now() > SNOOZE_MAX:
                raise ValueError(f"snooze is limited to {SNOOZE_MAX.days} days")
        changed = replace(
            current,
            enabled=current.enabled if enabled is None else enabled,
            sensitivity=current.sensitivity if sensitivity is None else float(sensitivity),
            snoozed_until=None if clear_snooze else (snoozed_until or current.snoozed_until),
        )
        self._controls[name] = changed
        if self._persist is not None:
            self._persist(f"class:{name}", {
                "enabled": changed.enabled, "sensitivity": changed.sensitivity,
                "snoozed_until": iso(changed.snoozed_until),
            })
        log.info("class %s: enabled=%s sensitivity=%.2f snoozed_until=%s", name, changed.enabled,
                 changed.sensitivity, iso(changed.snoozed_until))
        for listener in self._listeners:
            try:
                listener(changed)
            except Exception:
                log.exception("control listener failed")
        return changed

    def snooze(self, name: str, minutes: float) -> ClassControl:
        if not 0 < minutes <= SNOOZE_MAX.total_seconds() / 60:
            raise ValueError(f"snooze minutes must be in (0, {SNOOZE_MAX.total_seconds() / 60:.0f}], got {minutes}")
        return self.update(name, snoozed_until=utc_now() + timedelta(minutes=minutes))
