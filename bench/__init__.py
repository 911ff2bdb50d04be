"""posync's sync engine benchmark (``make bench`` runs ``python -m bench.run``).

Five scenarios, each checked against the Clover sandbox's ground truth (zero lost, zero
duplicated orders):

1. ``pipeline``  one merchant's backfill through fetch -> normalize -> a counting sink, at
   50 ms and 200 ms of latency, against Clover's real limits (:mod:`bench.pipeline`);
2. ``tick``      200 merchants, one schedule tick: dispatcher -> queue -> concurrent
   workers -> a counting sink (:mod:`bench.tick`);
3. ``aws_calls`` the real adapters on the embedded AWS: DynamoDB, S3 and Secrets Manager
   calls per 1,000 orders / partition / run, counted with botocore event hooks
   (:mod:`bench.aws_calls`);
4. ``memory``    a worker's peak RSS at 10,000 and 100,000 orders, each in a fresh
   subprocess with the real export writer (:mod:`bench.memory`);
5. ``coldstart`` each handler module's import time against a bare handler
   (:mod:`bench.coldstart`).

The sandbox runs in a child process of its own (:mod:`bench.sandboxproc`): it is the
provider, and it must not share the benchmarked process's interpreter lock. Figures go to
stdout; the last line is one JSON object holding all of them.
"""
