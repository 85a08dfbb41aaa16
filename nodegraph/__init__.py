"""nodegraph: a typed node-graph engine for text-conditional image synthesis."""

__version__ = "0.1.0"
