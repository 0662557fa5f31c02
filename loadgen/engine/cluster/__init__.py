"""Load generation on a Ray cluster (the optional ``loadgen[ray]`` extra): ``--ray ADDRESS|local``.

The worker boundary of :mod:`loadgen.engine.workers` (one picklable job in, records and a result out)
runs in Ray actors instead of local processes, one CPU each, spread over the cluster's nodes:

- :mod:`.local` starts a one-node Ray for ``--ray local`` (in its own session, so a terminal's
  Ctrl-C reaches loadgen and not Ray) and connects to a running cluster otherwise;
- :mod:`.clock` measures each actor's clock against the driver's (UDP pings, minimum-RTT filter);
- :mod:`.actor` is the actor: the job's event loop in a thread, records to a file on its node;
- :mod:`.pool` is the driver's side: one schedule split as across processes, the start at one
  instant of the driver's clock, records streamed back into the one ``requests.jsonl``, a lost actor
  turned into a partial report naming its node, and per-node certification.
"""
