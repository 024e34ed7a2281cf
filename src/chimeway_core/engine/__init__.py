"""The engine: ``notify()`` writes a delivery, ``perform()`` runs one job for it.

Theory of operation
-------------------
The engine is a pipeline, one module per stage, behind one front door
(:class:`Chimeway`, in :mod:`~chimeway_core.engine.front`):

==============================================  =========================================
stage                                           module
==============================================  =========================================
settings, checked once and fixed                :mod:`~chimeway_core.engine.settings`
notify, notify_many, resend                     :mod:`~chimeway_core.engine.notify`
hand-over to the backend, outbox flush, relay   :mod:`~chimeway_core.engine.handover`
perform: admit → claim → call → classify →      :mod:`~chimeway_core.engine.perform`
record → decide
upkeep: rescue, prune                           :mod:`~chimeway_core.engine.upkeep`
an operator's get and cancel                    :mod:`~chimeway_core.engine.operate`
==============================================  =========================================

``notify()`` validates its input, evaluates the policies on the delivery as it
is about to be written (its id included), then writes the delivery and its
outbox row in one transaction (the caller's, when a ``session`` is given).
Once that transaction has committed, the id is handed to the backend; the
outbox row is deleted later, in batches. A crash between commit and enqueue
loses nothing: :meth:`Chimeway.relay` (run by :meth:`Chimeway.rescue` and by
workers) hands every outbox row older than a grace period to the backend,
whose job ids dedupe.

``perform()`` is the queue-agnostic port of the reference Oban worker: a
missing, terminal, leased or not-yet-due delivery is acknowledged or deferred
with no side effect; the policies suppress, defer or proceed; the claim takes
a lease and writes the attempt row before the channel is called; the outcome
is classified, recorded with its status transition (fenced by the lease's
version) and the dispatch table decides ACK, RETRY, EXHAUST or RAISE.

One delivery costs three commits end to end: the notify, the claim with its
write-ahead attempt, and the record.
"""

from chimeway_core.engine.front import Chimeway
from chimeway_core.engine.perform import _Claimed as _Claimed  # tests look inside perform()
from chimeway_core.engine.upkeep import RescueReport

__all__ = ["Chimeway", "RescueReport"]
