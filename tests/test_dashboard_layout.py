"""The dashboard's layout on a phone (390×844) and a desktop (1280×900), in headless Chromium
against the real daemon. Layout facts are asserted from bounding boxes; the screenshots go to
artifacts/ for a human to look at.

The daemon plays a 12 s loop with a T3 smoke alarm (so events open, stay ongoing for a few
seconds and close with a clip), and its store already holds an event from three days ago.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from service.events import EventRecord
from service.sinks.store import EventStore
from tests.conftest import require, t3_scene
from tests.harken_process import Harken

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
OLD_EVENT_ID = "old-glass-break"

pytestmark = pytest.mark.integration


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _seed_old_event(db: Path) -> datetime:
    """A closed glass break three days ago, as an earlier run of harken stored it."""
    started = (datetime.now(UTC) - timedelta(days=3)).replace(microsecond=0)
    event = EventRecord(
        id=OLD_EVENT_ID, source="nursery", class_name="glass_break", start_s=12.0, detected_s=12.1,
        started_at=started, detected_at=started + timedelta(seconds=0.1), score=0.9, model_version="test",
    ).ended(end_s=12.4, ended_at=started + timedelta(seconds=0.4), peak_score=0.95, mean_score=0.8, flicker=0)
    store = EventStore(db)
    try:
        store.save_event(event)
    finally:
        store.close()
    return started


@pytest.fixture
def harken(tmp_path: Path) -> Iterator[Harken]:
    wav = tmp_path / "t3.wav"
    # 12 s loop: the alarm sounds from 1.5 s for 7 s; a 2 s merge gap ends each event before the next.
    sf.write(str(wav), t3_scene(12.0, alarm_at_s=1.5), 16000, subtype="PCM_16")
    db = tmp_path / "harken.db"
    _seed_old_event(db)
    config = {
        "sources": [{"name": "nursery", "url": f"file:{wav}", "realtime": True, "loop": True}],
        "classes": {"smoke_alarm": {"decision": {"merge_gap_s": 2.0}}},
        "store": {"path": str(db), "clip_pre_s": 1.0, "clip_post_s": 0.5},
        "api": {"host": "127.0.0.1", "port": _free_port()},
    }
    process = Harken(tmp_path, config).start()
    try:
        process.wait_api()
        yield process
    finally:
        process.cleanup()


def _box(page: Any, selector: str) -> dict[str, float]:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not rendered"
    return box


def _no_horizontal_scroll(page: Any, width: int) -> None:
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width


def _pill_shows(page: Any, words: str, viewport: dict[str, int]) -> None:
    """The connection pill shows its words, whole, inside the screen."""
    from playwright.sync_api import expect

    expect(page.locator("#conn-text")).to_have_text(words, timeout=20_000)
    expect(page.locator("#conn-text")).to_be_visible()
    text, pill = _box(page, "#conn-text"), _box(page, "#conn")
    assert text["width"] > 10 and text["x"] >= pill["x"] and text["x"] + text["width"] <= pill["x"] + pill["width"]
    assert pill["x"] >= 0 and pill["x"] + pill["width"] <= viewport["width"]
    clipped = page.evaluate("(e => e.scrollWidth > e.clientWidth)(document.querySelector('#conn-text'))")
    assert not clipped, f"{words!r} is cut off in the pill"


def test_dashboard_layout_on_a_phone_and_a_desktop(harken: Harken) -> None:
    require(importlib.util.find_spec("playwright") is not None, "playwright for Python (pip install playwright)")
    require(Path(CHROMIUM).exists(), f"chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=DESKTOP, color_scheme="dark")
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(harken.api + "/")
            expect(page.locator(".class-card")).to_have_count(3, timeout=10_000)
            expect(page.locator("body")).to_have_attribute("data-live", "1", timeout=20_000)

            # ---- desktop: cards on the left, the events beside them, no summary lines
            _pill_shows(page, "live", DESKTOP)
            expect(page.locator(f'.event[data-id="{OLD_EVENT_ID}"]')).to_be_visible(timeout=10_000)
            expect(page.locator("#class-summary")).to_be_hidden()
            classes, events = _box(page, "#classes"), _box(page, ".events-panel")
            level = _box(page, ".level-panel")
            assert events["x"] >= classes["x"] + classes["width"]  # a column of its own on the right
            assert abs(events["y"] - level["y"]) < 2 and events["y"] < DESKTOP["height"]
            _no_horizontal_scroll(page, DESKTOP["width"])
            page.screenshot(path=str(ARTIFACTS / "dashboard-1280x900.png"))

            # ---- phone
            page.set_viewport_size(PHONE)
            page.evaluate("window.scrollTo(0, 0)")
            _pill_shows(page, "live", PHONE)
            _no_horizontal_scroll(page, PHONE["width"])
            chips = page.locator("#class-summary .chip")
            expect(chips).to_have_count(3)
            for i in range(3):
                expect(chips.nth(i)).to_be_visible()
                chip = chips.nth(i).bounding_box()
                assert chip is not None and chip["height"] < 60  # one line per class
            # The recent events come before the tall cards, and the first one is on the first screen.
            events, first_card = _box(page, ".events-panel"), _box(page, ".class-card")
            assert events["y"] + 40 < first_card["y"]
            first_row = _box(page, "#events .event")
            assert first_row["y"] + first_row["height"] <= PHONE["height"], first_row
            # A summary line leads to its card.
            chips.nth(1).click()
            expect(page.locator('.class-card[data-class="smoke_alarm"]')).to_be_in_viewport()
            page.evaluate("window.scrollTo(0, 0)")

            # An event from three days ago shows its date; today's show the time alone.
            day = "d => d.toLocaleDateString([], {month: 'short', day: 'numeric'})"
            three_days_ago = page.evaluate(f"({day})(new Date(Date.now() - 3 * 86400e3))")
            today = page.evaluate(f"({day})(new Date())")
            old_when = page.locator(f'.event[data-id="{OLD_EVENT_ID}"] .ev-when').inner_text()
            assert three_days_ago in old_when, old_when

            # An ongoing event: its play button is disabled and the row says why. Found and read
            # in one step inside the page, so the event cannot end between two looks.
            facts = page.wait_for_function(
                """() => {
                    const row = document.querySelector('#events .event[data-state="open"]');
                    if (!row) return null;
                    const play = row.querySelector('.play'), note = row.querySelector('.clip-note');
                    return {id: row.dataset.id, disabled: play.disabled, title: play.title,
                            label: play.getAttribute('aria-label'),
                            note: note.checkVisibility() ? note.textContent : null,
                            when: row.querySelector('.ev-when').textContent};
                }""",
                timeout=30_000,
            ).json_value()
            assert facts["disabled"] is True, facts
            assert facts["title"] == facts["label"] == "The clip is written when the event ends", facts
            assert facts["note"] and "clip when it ends" in facts["note"], facts
            assert today not in facts["when"], facts
            page.screenshot(path=str(ARTIFACTS / "dashboard-390x844.png"))
            # When it has ended and its clip is written, the note goes and the button plays.
            row = page.locator(f'.event[data-id="{facts["id"]}"]')
            expect(row).to_have_attribute("data-state", "closed", timeout=30_000)
            expect(row.locator(".play")).to_be_enabled(timeout=20_000)
            expect(row.locator(".play")).to_have_attribute("title", "Play the clip")
            expect(row.locator(".clip-note")).to_be_hidden()
            page.screenshot(path=str(ARTIFACTS / "dashboard-390x844-full.png"), full_page=True)

            # harken goes away: the pill still says so in words on the phone.
            code, _ = harken.terminate()
            assert code == 0
            _pill_shows(page, "reconnecting…", PHONE)
            page.screenshot(path=str(ARTIFACTS / "dashboard-390x844-reconnecting.png"))
        finally:
            browser.close()
    assert not errors, errors
