"""salon as a cluster of nodes on Redis and PostgreSQL (``salon serve --redis-url``).

:mod:`salon.cluster.core` is sans-I/O (what goes on the bus, how a node's mirror of a session
follows it); :mod:`salon.cluster.node` is the asyncio adapter on ``redis.asyncio`` (imported
only when a cluster is configured: the embedded server never loads Redis);
:mod:`salon.cluster.bridge` plugs a node into the signalling service.
"""
