"""Test helpers users can use too: loopback servers that speak model APIs."""

from testtime.testing.loopback import LoopbackOpenAIServer

__all__ = ["LoopbackOpenAIServer"]
