"""The salon server: REST API, signalling WebSocket and (with the media plane) the SFU."""

from salon.server.app import create_app
from salon.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
