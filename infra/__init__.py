"""posync's CDK app (Python), built entirely from ``posync.resources``.

- ``python -m infra.app`` (what ``cdk synth`` runs, see cdk.json): offline, no credentials,
  environment-agnostic; knobs from context (``-c stage=prod``, defaults in cdk.json).
- ``infra.app.build_app(context, outdir)``: the same app in-process (tests).
- ``infra.stack.PosyncStack``: one construct per concern under ``infra.constructs``
  (secrets, storage, sync, exports, functions, api, access, monitoring).
- ``infra.constructs.access.ACCESS``: every function's permissions, in one table.
- ``infra.describe.template_resources(template)``: the template's tables, queues, bucket
  and bus in the form ``posync_local.local_aws.describe_local`` also returns.
- ``python -m infra.layer_build``: the dependency layer, without Docker, cached by hash.
"""
