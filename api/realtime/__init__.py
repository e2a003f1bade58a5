"""Live updates: the WebSocket clients of one API instance (protocol in docs/websockets.md).

One concern per module, in the order a message travels:

- ``connections``: the registry of sockets (``ConnectionManager``, ``Client``), each socket's
  bounded queue, dropping a slow client, and the close codes.
- ``fanout``: the Hub's listener; routes each pub/sub message to the queues that should see it.
- ``snapshots``: subscribe from a snapshot, holding messages that arrive while it is read, and
  resync every client after the Hub's subscription came back.
- ``positions``: each signed-in user's bookings in line and the ``queue_position`` messages
  that follow their places, coalesced to about one per second per booking.
- ``auth``: the Origin check and the token (in the URL or a first ``auth`` message).
- ``commands``: what a client may send (ping, subscribe, unsubscribe, get_stats) and the stats.
- ``serve``: one socket's life: receiver, sender, heartbeat and expiry in one task group.
- ``shutdown``: close every socket with 1001 after its queued messages, and wait for them.
- ``signals``: do that as soon as SIGTERM/SIGINT arrives, before uvicorn's own 1012 close.
"""
