"""The aiohttp side: WebSocket hub, /m/<name> dispatch, status and admin routes."""
