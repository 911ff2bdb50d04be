"""One construct per concern: keys and secrets, storage, sync, exports, functions, API, monitoring."""
