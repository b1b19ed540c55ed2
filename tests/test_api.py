"""REST API through the real app, against a real SQLite store filled by the real pipeline.

Two file sources ("kitchen", "hall") play the same T3 smoke-alarm scene through
`run_daemon` (as fast as possible), which stores two events with their clips; then
the app is built on a runtime over that store and exercised with httpx's TestClient.
"""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from service.api import create_app, listen
from service.api.feedback import FALSE_ALARM_CLASS, MANIFEST_COLUMNS
from service.config import ApiConfig, Settings
from service.daemon import Runtime, StartupError, _prune_forever, build_runtime, run_daemon
from tests.conftest import t3_scene

TOKEN = "s3cret-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOCAL = "http://127.0.0.1"


def settings_for(root: Path, kitchen: Path, hall: Path) -> Settings:
    return Settings.model_validate(
        {
            "sources": [
                {"name": "kitchen", "url": f"file:{kitchen}", "realtime": False},
                {"name": "hall", "url": f"file:{hall}", "realtime": False},
            ],
            "store": {"path": str(root / "harken.db"), "clip_pre_s": 1.0, "clip_post_s": 1.0},
            "api": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A store with the events and clips the real pipeline wrote for two sources."""
    root = tmp_path_factory.mktemp("api")
    kitchen, hall = root / "kitchen.wav", root / "hall.wav"
    sf.write(str(kitchen), t3_scene(15.0, alarm_at_s=2.0), 16000, subtype="PCM_16")
    # The hall hears its alarm 3 s later, so its event is both stored and started last.
    sf.write(str(hall), t3_scene(15.0, alarm_at_s=5.0), 16000, subtype="PCM_16")
    settings = settings_for(root, kitchen, hall)
    asyncio.run(asyncio.wait_for(run_daemon(settings), 60))
    return settings


def open_runtime(settings: Settings, token: str | None) -> Runtime:
    api = ApiConfig(enabled=True, token=token)
    return build_runtime(settings.model_copy(update={"api": api}))


def close_runtime(runtime: Runtime) -> None:
    runtime.executor.shutdown(wait=True)
    runtime.store.close()


@pytest.fixture(scope="module")
def runtime(filled: Settings) -> Iterator[Runtime]:
    rt = open_runtime(filled, TOKEN)
    yield rt
    close_runtime(rt)


@pytest.fixture(scope="module")
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def events(client: TestClient) -> list[dict]:
    response = client.get("/api/events", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()["events"]


# ----------------------------------------------------------------- auth
def test_health_needs_no_token(client: TestClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize(
    "path",
    ["/api/status", "/api/events", "/api/classes", "/metrics", "/api/events/0123abcd/clip.wav"],
)
def test_everything_else_needs_the_token(client: TestClient, path: str) -> None:
    missing = client.get(path)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in missing.json()["detail"]
    wrong = client.get(path, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert wrong.json()["detail"] == "wrong bearer token"
    assert client.patch("/api/classes/smoke_alarm", json={"enabled": False}).status_code == 401


def test_refuses_to_listen_beyond_loopback_without_token() -> None:
    with pytest.raises(StartupError, match=r"api.host is '0.0.0.0'.*set api.token"):
        listen(ApiConfig(host="0.0.0.0", port=0))
    sock = listen(ApiConfig(host="127.0.0.1", port=0))  # loopback without a token is fine
    sock.close()
    sock = listen(ApiConfig(host="0.0.0.0", port=0, token=TOKEN))
    sock.close()


def test_port_in_use_is_a_clear_startup_error() -> None:
    sock = listen(ApiConfig(host="127.0.0.1", port=0))
    sock.listen()
    try:
        port = sock.getsockname()[1]
        with pytest.raises(StartupError, match=rf"api: cannot listen on 127.0.0.1:{port}"):
            listen(ApiConfig(host="127.0.0.1", port=port))
    finally:
        sock.close()


def test_without_token_only_loopback_host_names_are_answered(filled: Settings) -> None:
    runtime = open_runtime(filled, None)
    try:
        with TestClient(create_app(runtime), base_url=LOCAL) as c:
            assert c.get("/api/status").status_code == 200
            rebound = c.get("/api/status", headers={"Host": "evil.example:8080"})
            assert rebound.status_code == 400
            assert "not allowed" in rebound.json()["detail"]
            assert c.get("/api/health", headers={"Host": "[::1]:8080"}).status_code == 200
    finally:
        close_runtime(runtime)


# ----------------------------------------------------------------- status, dashboard
def test_status_reports_model_sources_sinks_and_classes(client: TestClient) -> None:
    status = client.get("/api/status", headers=AUTH).json()
    assert status["model"]["classes"] == ["baby_cry", "smoke_alarm", "glass_break"]
    assert [s["name"] for s in status["sources"]] == ["kitchen", "hall"]
    assert set(status["sources"][0]["scores"]) == set(status["model"]["classes"])
    assert "store" in status["sinks"] and "live" in status["sinks"]
    assert status["sinks"]["live"]["clients"] == 0
    assert {c["name"] for c in status["classes"]} == set(status["model"]["classes"])


def test_dashboard_is_served_with_local_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '"static/app.js"' in page.text and '"static/style.css"' in page.text
    # Relative links only, so that the page works under a path prefix (ingress, /harken/).
    assert 'src="/' not in page.text and 'href="/' not in page.text
    assert (
        "http://" not in page.text.replace("http://www.w3.org", "") and "https://" not in page.text
    )
    for asset in ("/static/app.js", "/static/style.css", "/static/icon.svg"):
        assert client.get(asset).status_code == 200


# ----------------------------------------------------------------- events
def test_pipeline_events_are_listed_newest_first(events: list[dict]) -> None:
    assert [e["class"] for e in events] == ["smoke_alarm", "smoke_alarm"]
    assert [e["source"] for e in events] == ["hall", "kitchen"]
    assert events[0]["started_at"] > events[1]["started_at"]
    for event in events:
        assert event["state"] == "closed"
        alarm_at_s = 5.0 if event["source"] == "hall" else 2.0
        assert alarm_at_s - 0.5 < event["start_s"] < alarm_at_s + 1.0
        assert event["clip_url"] == f"/api/events/{event['id']}/clip.wav"


def test_event_filters(client: TestClient, events: list[dict]) -> None:
    def ids(**params: str) -> list[str]:
        response = client.get("/api/events", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()["events"]]

    hall = [e["id"] for e in events if e["source"] == "hall"]
    assert ids(source="hall") == hall
    assert ids(**{"class": "smoke_alarm"}) == [e["id"] for e in events]
    assert ids(**{"class": "baby_cry"}) == []
    first = datetime.fromisoformat(min(e["started_at"] for e in events).replace("Z", "+00:00"))
    assert ids(until=first.isoformat()) == []
    assert len(ids(since=first.isoformat())) == 2
    naive_later = (first + timedelta(hours=1)).astimezone(UTC).replace(tzinfo=None)
    assert ids(since=naive_later.isoformat()) == []  # a time without a zone is UTC


def test_cursor_pagination(client: TestClient, events: list[dict]) -> None:
    first = client.get("/api/events", params={"limit": 1}, headers=AUTH).json()
    assert [e["id"] for e in first["events"]] == [events[0]["id"]]
    assert first["next_cursor"]
    second = client.get(
        "/api/events", params={"limit": 1, "cursor": first["next_cursor"]}, headers=AUTH
    ).json()
    assert [e["id"] for e in second["events"]] == [events[1]["id"]]
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"limit": 0}, "query.limit"),
        ({"limit": 501}, "query.limit"),
        ({"cursor": "abc"}, "query.cursor"),
        ({"since": "yesterday"}, "query.since"),
        (
            {"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"},
            "since must not be later than until",
        ),
    ],
)
def test_bad_queries_are_422_with_a_clear_message(
    client: TestClient, params: dict, where: str
) -> None:
    response = client.get("/api/events", params=params, headers=AUTH)
    assert response.status_code == 422
    assert where in response.json()["detail"]


def test_one_event_and_unknown_ids(client: TestClient, events: list[dict]) -> None:
    event = client.get(f"/api/events/{events[0]['id']}", headers=AUTH).json()
    assert event == events[0]
    missing = client.get("/api/events/doesnotexist", headers=AUTH)
    assert missing.status_code == 404 and "doesnotexist" in missing.json()["detail"]
    assert client.get("/api/events/bad%20id!", headers=AUTH).status_code == 422


# ----------------------------------------------------------------- clips
def test_clip_is_the_event_with_pre_and_post_roll(
    client: TestClient, events: list[dict], tmp_path: Path
) -> None:
    event = events[0]
    response = client.get(event["clip_url"], headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    path = tmp_path / "clip.wav"
    path.write_bytes(response.content)
    info = sf.info(str(path))
    assert info.samplerate == 16000 and info.channels == 1
    # At least 1 s pre-roll + the event + 1 s post-roll. (The pipeline keeps collecting
    # until the end is decided, merge_gap_s later, so a clip may run longer.)
    assert event["duration_s"] + 2.0 - 0.1 <= info.duration <= 15.0


def test_clip_paths_cannot_escape_the_clips_folder(
    client: TestClient,
    runtime: Runtime,
    events: list[dict],
    tmp_path: Path,
) -> None:
    store = runtime.store
    event_id = events[1]["id"]
    original = store.get_event(event_id).clip_path
    secret = tmp_path / "secret.wav"
    shutil.copyfile(store.clips_dir / original, secret)
    link = store.clips_dir / "link.wav"
    os.symlink(secret, link)
    try:
        for evil in ("../harken.db", "/etc/passwd", str(secret), "link.wav", "..", "", "a\x00b"):
            store.set_clip(event_id, evil)
            response = client.get(f"/api/events/{event_id}/clip.wav", headers=AUTH)
            assert response.status_code == 404, evil
            assert response.headers["content-type"] == "application/json"
        for url in (
            "/api/events/..%2F..%2Fharken.db/clip.wav",
            "/api/events/../../harken.db",
            "/static/../../daemon.py",
            "/static/..%2F..%2Fdaemon.py",
        ):
            response = client.get(url, headers=AUTH)
            assert response.status_code in (404, 422), url
            assert b"SQLite" not in response.content and b"import" not in response.content
    finally:
        store.set_clip(event_id, original)
        link.unlink()


# ----------------------------------------------------------------- feedback
def test_false_alarm_keeps_the_clip_as_a_training_example(
    client: TestClient,
    runtime: Runtime,
    events: list[dict],
) -> None:
    event = events[0]
    folder = runtime.store.path.parent / "feedback"
    response = client.post(
        f"/api/events/{event['id']}/feedback", json={"verdict": "false_alarm"}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["event"]["feedback"] == "false_alarm"
    assert body["example"] == f"{FALSE_ALARM_CLASS}/{event['id']}.wav"
    kept = folder / body["example"]
    assert kept.read_bytes() == (runtime.store.clips_dir / event["clip_path"]).read_bytes()
    with (folder / "MANIFEST.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == MANIFEST_COLUMNS
        rows = list(reader)
    assert len(rows) == 1
    row = rows[0]
    assert row["path"] == body["example"] and row["class"] == FALSE_ALARM_CLASS
    assert row["split"] == "train" and row["group"] == f"harken:{event['source']}"
    assert row["onset"] == "" and "false_alarm_of=smoke_alarm" in row["notes"]
    assert (
        client.get(f"/api/events/{event['id']}", headers=AUTH).json()["feedback"] == "false_alarm"
    )
    # Twice is once; changing one's mind removes the example.
    client.post(
        f"/api/events/{event['id']}/feedback", json={"verdict": "false_alarm"}, headers=AUTH
    )
    assert len(list(csv.DictReader((folder / "MANIFEST.csv").open()))) == 1
    undo = client.post(
        f"/api/events/{event['id']}/feedback", json={"verdict": "true_positive"}, headers=AUTH
    )
    assert undo.status_code == 200 and undo.json()["example"] is None
    assert list(csv.DictReader((folder / "MANIFEST.csv").open())) == []
    assert not kept.exists()


def test_feedback_validation(client: TestClient, events: list[dict]) -> None:
    url = f"/api/events/{events[0]['id']}/feedback"
    bad = client.post(url, json={"verdict": "maybe"}, headers=AUTH)
    assert bad.status_code == 422 and "body.verdict" in bad.json()["detail"]
    assert client.post(url, content="false_alarm", headers=AUTH).status_code == 422
    assert (
        client.post(
            "/api/events/nope/feedback", json={"verdict": "false_alarm"}, headers=AUTH
        ).status_code
        == 404
    )


# ----------------------------------------------------------------- classes
def test_class_controls_go_through_the_shared_controls(
    client: TestClient, runtime: Runtime
) -> None:
    classes = client.get("/api/classes", headers=AUTH).json()
    assert [c["name"] for c in classes] == ["baby_cry", "smoke_alarm", "glass_break"]
    changed = client.patch(
        "/api/classes/glass_break", json={"sensitivity": 0.8, "enabled": False}, headers=AUTH
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["sensitivity"] == 0.8 and changed.json()["enabled"] is False
    assert runtime.controls.get("glass_break").enabled is False
    assert runtime.store.get_setting("class:glass_break")["sensitivity"] == 0.8  # persisted
    snoozed = client.patch(
        "/api/classes/glass_break", json={"snooze_minutes": 30}, headers=AUTH
    ).json()
    assert snoozed["snoozed"] is True and snoozed["enabled"] is False
    until = datetime.fromisoformat(snoozed["snoozed_until"].replace("Z", "+00:00"))
    assert timedelta(minutes=29) < until - datetime.now(UTC) <= timedelta(minutes=30)
    woken = client.patch(
        "/api/classes/glass_break", json={"snooze_minutes": 0, "enabled": True}, headers=AUTH
    ).json()
    assert woken["snoozed"] is False and woken["snoozed_until"] is None and woken["enabled"] is True
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    assert client.patch(
        "/api/classes/glass_break", json={"snoozed_until": later}, headers=AUTH
    ).json()["snoozed"]
    assert not client.patch(
        "/api/classes/glass_break", json={"snoozed_until": None}, headers=AUTH
    ).json()["snoozed"]
    client.patch("/api/classes/glass_break", json={"sensitivity": 0.5}, headers=AUTH)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"sensitivity": 1.5}, "body.sensitivity"),
        ({"sensitivity": "high"}, "body.sensitivity"),
        ({}, "nothing to change"),
        ({"enabled": None}, "enabled cannot be null"),
        ({"snooze_minutes": 99999}, "body.snooze_minutes"),
        ({"snoozed_until": "2030-01-01T00:00:00"}, "must carry a time zone"),
        ({"snoozed_until": "2099-01-01T00:00:00Z"}, "snooze is limited to 7 days"),
        ({"snooze_minutes": 5, "snoozed_until": None}, "not both"),
        ({"volume": 3}, "body.volume"),
    ],
)
def test_bad_class_changes_are_422(client: TestClient, body: dict, message: str) -> None:
    response = client.patch("/api/classes/smoke_alarm", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_unknown_class_is_404(client: TestClient) -> None:
    response = client.patch("/api/classes/dog_bark", json={"enabled": True}, headers=AUTH)
    assert response.status_code == 404
    assert "dog_bark" in response.json()["detail"] and "smoke_alarm" in response.json()["detail"]


# ----------------------------------------------------------------- metrics, openapi
def test_metrics_are_prometheus_text(client: TestClient) -> None:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for family in (
        "harken_audio_seconds_total",
        "harken_inference_seconds_total",
        "harken_events_total",
        "harken_sink_failures_total",
        "harken_sink_queue_depth",
        "harken_source_overruns_total",
    ):
        assert f"# TYPE {family} " in text
    assert 'harken_sink_queue_depth{sink="live"} 0' in text
    for line in text.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2


def test_openapi_is_published_and_documents_every_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    assert {
        "/api/health",
        "/api/status",
        "/api/events",
        "/api/events/{event_id}",
        "/api/events/{event_id}/clip.wav",
        "/api/events/{event_id}/feedback",
        "/api/classes",
        "/api/classes/{name}",
        "/metrics",
    } <= set(paths)
    assert "401" in paths["/api/status"]["get"]["responses"]
    assert "401" not in paths["/api/health"]["get"]["responses"]


# ----------------------------------------------------------------- retention
def test_retention_prunes_events_and_their_clips(
    filled: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = Path(filled.store.path).parent
    shutil.copytree(source / "clips", tmp_path / "clips")
    shutil.copyfile(source / "harken.db", tmp_path / "harken.db")
    for suffix in ("-wal", "-shm"):
        if (source / f"harken.db{suffix}").exists():
            shutil.copyfile(source / f"harken.db{suffix}", tmp_path / f"harken.db{suffix}")
    settings = filled.model_copy(
        update={
            "store": filled.store.model_copy(
                update={"path": tmp_path / "harken.db", "retention_days": 1.0}
            )
        }
    )
    runtime = build_runtime(settings)
    # Two days later (file sources run ahead of the wall clock, so "now" would not do).
    monkeypatch.setattr("service.daemon.utc_now", lambda: datetime.now(UTC) + timedelta(days=2))
    try:
        clips = list((tmp_path / "clips").glob("*.wav"))
        assert len(clips) == 2 and runtime.store.count_events() == 2

        async def prune_once() -> None:
            task = asyncio.create_task(_prune_forever(runtime))
            await asyncio.sleep(0.2)
            task.cancel()

        asyncio.run(prune_once())
        assert runtime.store.count_events() == 0
        assert list((tmp_path / "clips").glob("*.wav")) == []
    finally:
        close_runtime(runtime)


def test_false_alarm_marked_before_its_clip_exists_is_kept_when_the_clip_arrives(
    client: TestClient, runtime: Runtime, events: list[dict]
) -> None:
    event = events[1]
    store = runtime.store
    name = store.get_event(event["id"]).clip_path
    store.set_clip(event["id"], "")  # as while the event is still collecting its post-roll
    try:
        response = client.post(
            f"/api/events/{event['id']}/feedback", json={"verdict": "false_alarm"}, headers=AUTH
        )
        assert response.status_code == 200 and response.json()["example"] is None
        # The pipeline writes the clip and calls its hook (wrapped by the API's attach()).
        runner = next(r for r in runtime.runners if r.source.name == event["source"])
        runner.on_clip(event["id"], name)
        manifest = store.path.parent / "feedback" / "MANIFEST.csv"
        rows = list(csv.DictReader(manifest.open()))
        assert [r["path"] for r in rows] == [f"{FALSE_ALARM_CLASS}/{event['id']}.wav"]
    finally:
        store.set_clip(event["id"], name)
        client.post(
            f"/api/events/{event['id']}/feedback", json={"verdict": "true_positive"}, headers=AUTH
        )


def test_check_config_and_run_refuse_an_exposed_api_without_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    config = tmp_path / "exposed.yaml"
    config.write_text(f"api: {{host: 0.0.0.0}}\nstore: {{path: {tmp_path / 'h.db'}}}\n")
    assert main(["check-config", str(config)]) == 2
    assert "api.host is '0.0.0.0'" in capsys.readouterr().err
    assert main(["run", "--config", str(config), "--source", "demo"]) == 2
    assert "no api.token is set" in capsys.readouterr().err
