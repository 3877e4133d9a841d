"""`tunelab serve`: an OpenAI-compatible HTTP server over a run or a packaged model (FastAPI + uvicorn)."""
