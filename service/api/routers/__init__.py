"""One router per resource: health, status, events, classes, metrics, live, dashboard."""
