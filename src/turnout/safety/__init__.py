"""Injection screening: a model-free screener for prompt injection on the request path.

``normalize`` reads a text the ways a model could (folded, decoded), ``patterns`` holds the
pattern families as data, ``screen`` scores a text into a ``Verdict``, ``policy`` applies a
task's (and tenant's) ``safety`` config to a request's inputs: block, flag or let through.
"""
