"""REST + WebSocket API and the dashboard: `create_app(runtime)`, `serve(runtime)`, `LiveHub`."""

from service.api.app import attach, create_app
from service.api.live import LiveHub
from service.api.server import listen, serve

__all__ = ["LiveHub", "attach", "create_app", "listen", "serve"]
