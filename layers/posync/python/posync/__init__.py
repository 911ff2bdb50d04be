"""posync: point-of-sale orders from Clover and Poynt into your own AWS account.

This package is the shared Lambda layer: the domain (connections, tokens, orders,
exports) and its adapters (AWS, providers). Handlers in ``functions/`` stay thin.
"""

__version__ = "0.1.0"
