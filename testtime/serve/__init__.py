"""``testtime serve``: an OpenAI-compatible test-time-scaling gateway (extra ``serve``)."""
