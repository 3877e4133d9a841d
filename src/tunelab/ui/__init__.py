"""The web UI (`tunelab ui`): runs, run pages with live curves, new runs, data views and a chat playground, served
by FastAPI with server-rendered pages and one small script (no external assets). A front end over tunelab's API."""
