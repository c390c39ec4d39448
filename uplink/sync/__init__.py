"""The sync transport: a pull server and a push client over HTTPS, for gateways and central nodes.

What travels are sealed envelopes (``uplink.envelope``): each covers a contiguous
range of the origin's journal, is encrypted to every upper node listed in the
config, and is signed by the origin. This package moves them; it never opens them.

Lanes, and why "exactly once, in order" still holds
---------------------------------------------------
There are two lanes, each with its own journal cursor on the gateway:

- ``main`` (cursor ``uplink``): every record, samples and events, in sequence order.
  Central accepts a main envelope only when it continues its cursor for that origin
  (``first <= cursor + 1``); anything already held is skipped, a hole is refused
  and fetched again from the cursor. This lane alone is complete and ordered.
- ``alarms`` (cursor ``uplink.alarms``): only event records (alarm transitions, gap
  records, register changes): small, and sent ahead of the sample backlog. Central
  stores an event that arrives this way at once and remembers its sequence; when
  the main lane later reaches that sequence it skips it. So each (origin, sequence)
  is stored exactly once; samples and events are in order on the main lane, and
  events may be stored *earlier* than their place in it (that is the point).

Both lanes share one ``Link`` (bandwidth cap, priority to alarms, monthly budget).

Wire format (``application/x-safegw-frames``): a concatenation of frames
``lane u8 | stream_seq u64 LE | length u32 LE | envelope``. ``stream_seq`` is the
sender's position after this envelope: the journal sequence on a gateway, the
outbox id on a central node forwarding upward.

HTTP API (every request signed, see ``uplink.auth``)
---------------------------------------------------
Served by a gateway (pull mode) and by a central node to the next level up:

- ``GET /sync/v1/info``: node id, head position, lanes' cursors, link counters.
- ``GET /sync/v1/envelopes?lane=main|alarms&after=N&ack=A&max=K&max_bytes=B&wait=S``: frames
  after position N, at most K envelopes and about B bytes (long-polls up to S seconds
  when there is nothing); ``ack``
  acknowledges what the puller has stored (default: ``after``). A puller that
  prefetches the next range while it stores the current one asks ``after`` = what
  it received and ``ack`` = what it stored.
- ``POST /sync/v1/ack`` ``{"lane": "main", "seq": N}``: acknowledge explicitly.
- ``POST /sync/v1/config`` (a gateway only): a signed config from central
  (``remote_config``; docs/central.md "Configuration from central").

Served by a central node (push mode): ``POST /sync/v1/push?head=H&first=F`` with
frames; answers ``{"cursors": {"main": N, "alarms": M}}`` in the sender's positions
(and ``"config": V``, the newest config issued to the sender, which it fetches with
``GET /sync/v1/config?have=M`` when it has not handled V).
The pusher advances its cursors only to what central answered (and rewinds to it
when central reports a hole).

Modules: ``source`` (frames, ``Source``, ``JournalSource``), ``server`` (the pull
server and its HTTPS listener), ``client`` (signed requests, the push client),
``service`` (the gateway's ``uplink`` service), ``remote_config`` (configs from central).
"""

# what central/, the daemon (``uplink.sync:build_service``), tests and benchmarks use
from uplink.sync.client import NET_ERRORS, Peer, PeerError, PushClient, Signer
from uplink.sync.server import HttpsListener, SyncServer
from uplink.sync.service import UplinkService, build_service
from uplink.sync.source import LANES, MAX_BODY, FrameError, Item, pack_frames, unpack_frames

__all__ = [
    "LANES", "MAX_BODY", "NET_ERRORS", "FrameError", "HttpsListener", "Item", "Peer", "PeerError",
    "PushClient", "Signer", "SyncServer", "UplinkService", "build_service", "pack_frames", "unpack_frames",
]
