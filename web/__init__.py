"""The Datagraph dashboard: a server-rendered FastAPI app over the engine's telemetry.

``web`` imports ``datagraph``; ``datagraph`` never imports ``web``.
"""
