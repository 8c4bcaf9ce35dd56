"""Test helpers: loopback HTTP servers that speak model APIs, and fixtures helpers."""

#: An obviously fake key for loopback servers (never a real credential).
FAKE_KEY = "sk-test-key-not-real-0123456789"
