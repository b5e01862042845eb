"""What the tests and the benchmarks both start and wait for, defined once.

Neither ``tests/`` nor ``bench/`` imports the other; both import this package (a test's
pytest specifics, such as skipping, stay in ``tests/``). It imports neither, and neither
``tlog`` nor ``client`` imports it (``tests/test_layers.py``).

* :mod:`harness.net`: free loopback ports, polling a condition or an HTTP server until up;
* :mod:`harness.s3`: a real S3-compatible server (SeaweedFS ``weed mini``) on 127.0.0.1;
* :mod:`harness.gobin`: Go programs built at pinned versions and cached;
* :mod:`harness.gowitness`: the Go witnesses (omniwitness, litewitness) run on 127.0.0.1;
* :mod:`harness.pg`: a throwaway PostgreSQL server on 127.0.0.1, removed by its watchdog
  (:mod:`harness.pgwatchdog`) when its owner dies;
* :mod:`harness.pgreplica`: a PostgreSQL primary with a synchronous streaming standby;
* :mod:`harness.tlog`: the ``tlog`` command run as a process (its command line, a run to
  completion with a bound).

What cannot run on this machine raises :class:`Unavailable` with the reason: a test skips
with it, a benchmark reports it.
"""


class Unavailable(Exception):
    """What was asked for cannot run here (a tool is missing, a build failed): the message
    says why."""
