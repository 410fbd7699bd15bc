"""The operator console: its pages, its auth, and the same in a real browser."""
