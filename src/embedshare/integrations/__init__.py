"""Adapters that plug embedshare into other libraries (imported on demand, each needs its extra)."""
