"""Running trained models: the batched/streaming generation engine, chat sessions, and task predictions
over rows of data (inference.predict). There is no HTTP server yet."""
