"""Everything posync knows about Clover, in one package; the rows it relies on are in
``docs/provider-contracts.md`` (``CLV-…``), named in each module's docstring.

- ``oauth``: the OAuth v2 code flow and refresh (CLV-HOST-1, CLV-OAUTH-1, CLV-OAUTH-2,
  CLV-OAUTH-3);
- ``source``: the v3 orders reads (CLV-LIST-1, CLV-LIST-3, CLV-EXPAND-1 to CLV-EXPAND-5,
  CLV-NESTED-1, CLV-MISSING-1; the transport's CLV-LIMIT-1, CLV-429-1);
- ``normalizer``: Clover orders to canonical orders (CLV-MONEY-1, CLV-TAX-1, CLV-TENDER-1,
  CLV-EXPAND-3, CLV-EXPAND-4, CLV-SC-1, CLV-SC-2, CLV-SC-3, CLV-MISSING-1);
- ``probe``: ``posync probe clover MERCHANT_ID``, the read-only checks of those rows.

Nothing is imported here: the handlers that need one module do not pay for the others.
"""
