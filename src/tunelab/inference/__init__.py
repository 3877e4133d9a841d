"""Generation engine, chat session and serving."""
