"""Sessions: sticky routing of a conversation to one worker, and their expiry."""
