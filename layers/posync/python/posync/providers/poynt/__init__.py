"""Everything posync knows about GoDaddy Poynt, in one package.

- ``oauth``: the app's self-signed JWT, the app token, merchant consent and code exchange, refresh.
- ``source``: incremental order reads (``GET /businesses/{id}/orders``) that hold under every
  reading of what ``startAt``/``endAt`` filter and of row order (``docs/provider-contracts.md``).
- ``canonical``: a Poynt order -> canonical order v1.
- ``webhooks``: Poynt's webhook events as Poynt sends them (the order is not in the body).
- ``installs``: on-terminal apps: businesses connected by the app being installed (billing
  subscriptions, ``APPLICATION_SUBSCRIPTION_*`` webhooks), synced with the app's own token.
- ``probe``: read-only checks of the register's ``PNT-…`` rows against a real business.

Nothing is imported here: each module loads on first use (cold starts pay only for what runs).
"""
