"""The gateway's channels to features, retrieval and ranking: plaintext, or TLS with the gateway's client
certificate (mutual TLS), made again when those files change."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from recsys.v1 import features_pb2_grpc, ranking_pb2_grpc, retrieval_pb2_grpc
from services.common.server import channel_options
from services.common.tls import ClientFiles, ClientTLS, aio_channel
from services.common.watched import WatchedFile

log = logging.getLogger(__name__)

#: How long calls in flight on replaced channels may take to finish (stage budgets are far shorter,
#: Feedback's is a second).
CLOSE_GRACE_S = 5.0


class Backends:
    """Stubs of the three backends, swapped together for new ones when the TLS files change.

    gRPC reads a channel's credentials once: a channel would reconnect with the certificate it was made
    with long after a rotation (and fail once that expires, or once the backends stop trusting its CA). So
    `poll` re-reads the files when they change (a mounted Secret updated, cert-manager renewing) and makes
    new channels; calls in flight finish on the old ones, which are then closed. A changed file that does
    not check out is refused with the reason in the log, and the channels in force stay."""

    def __init__(self, addresses: tuple[str, str, str], tls: ClientTLS | None) -> None:
        self._addresses = addresses
        self._tls = tls
        self._files: WatchedFile[ClientFiles] | None = None
        credentials = None
        if tls is not None:
            files = tls.files()
            if files:
                self._files = WatchedFile(
                    files[0],
                    lambda _: tls.read(),
                    "backend TLS certificates",
                    ClientFiles.describe,
                    files[1:],
                )
                credentials = self._files.value.credentials()
        self._channels: list[grpc.aio.Channel] = []
        self._connect(credentials)

    @property
    def watched(self) -> bool:
        """Whether there are files to follow (TLS with a CA or a client certificate)."""
        return self._files is not None

    def _connect(self, credentials: grpc.ChannelCredentials | None) -> list[grpc.aio.Channel]:
        # round_robin balances over every address a dns:/// name resolves to (one per replica).
        options: list[tuple[str, Any]] = [*channel_options(), ("grpc.lb_policy_name", "round_robin")]
        channels = [aio_channel(a, self._tls, options, credentials) for a in self._addresses]
        old, self._channels = self._channels, channels
        # One step with no await between: a call takes the stubs of one generation.
        self.features = features_pb2_grpc.FeatureServiceStub(channels[0])
        self.retrieval = retrieval_pb2_grpc.RetrievalServiceStub(channels[1])
        self.ranking = ranking_pb2_grpc.RankingServiceStub(channels[2])
        return old

    async def poll(self) -> None:
        """New channels when the TLS files changed (and check out)."""
        if self._files is None or not self._files.poll():
            return
        old = self._connect(self._files.value.credentials())
        log.info("backend channels renewed with the new TLS files")
        for channel in old:
            await channel.close(CLOSE_GRACE_S)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)
