"""Routes: pages (HTML), designer (HTML), api (JSON, metrics, health), events (SSE)."""
