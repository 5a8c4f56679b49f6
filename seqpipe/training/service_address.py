"""A tf.data service's addresses and ports, checked without TensorFlow.

`seqpipe.training.data_service` runs the service and trains with it; these
checks are apart so that the command line can run them before it loads
TensorFlow: a taken port or an unreachable dispatcher then fails in a
fraction of a second with one line, and no log line of TensorFlow's.
"""

from __future__ import annotations

import dataclasses
import socket

from seqpipe.config import SERVICE_ADDRESS
from seqpipe.errors import SeqpipeError

PROTOCOL = "grpc"
# Seconds to wait for a dispatcher to accept a connection before calling it unreachable.
_CONNECT_TIMEOUT = 5.0


class DataServiceError(SeqpipeError):
    """A tf.data service that cannot be started or reached."""


@dataclasses.dataclass(frozen=True)
class ServiceAddress:
    """A dispatcher's address, written `grpc://host:port` or `host:port`."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ServiceAddress:
        """Raises DataServiceError for anything but `[grpc://]host:port`."""
        match = SERVICE_ADDRESS.fullmatch(text.strip())
        if match is None:
            raise DataServiceError(f"{text!r} is not a dispatcher address: expected "
                                   "grpc://host:port or host:port")
        return cls(match.group(1), int(match.group(2)))

    @property
    def target(self) -> str:
        """`grpc://host:port`, as tf.data takes it."""
        return f"{PROTOCOL}://{self.hostport}"

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"


def check_reachable(address: ServiceAddress) -> None:
    """Raises DataServiceError (one line) when nothing accepts a connection at `address`.

    tf.data itself retries an unreachable dispatcher for a long time (an
    hour by default) without a word.
    """
    try:
        with socket.create_connection((address.host.strip("[]"), address.port),
                                      timeout=_CONNECT_TIMEOUT):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DataServiceError(
            f"no tf.data service dispatcher answers at {address.hostport} ({reason}); "
            f"start one there with `seqpipe data-service dispatcher --port {address.port}`"
        ) from None


def free_port(port: int) -> int:
    """`port` if nothing listens on it (0: a free port of the system's choosing).

    gRPC servers share a port (SO_REUSEPORT): a second dispatcher on a taken
    port would start without an error and answer half the requests. This
    probe does not share, so it fails on a port in use.

    Raises:
        DataServiceError: the port is in use or out of range.
    """
    if not 0 <= port <= 65535:
        raise DataServiceError(f"--port {port}: expected 0..65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            raise DataServiceError(f"port {port} is in use ({error.strerror}); "
                                   "choose another --port") from None
        return probe.getsockname()[1]


def check_serve_args(role: str, *, port: int, work_dir: str | None = None,
                     dispatcher: str | None = None, host: str | None = None) -> None:
    """The checks of `seqpipe data-service ROLE` before anything starts.

    Raises:
        DataServiceError: a flag of the other role, a worker without
            `--dispatcher` or whose dispatcher does not answer, the port in use.
    """
    if role == "dispatcher" and (dispatcher or host):
        raise DataServiceError("--dispatcher and --host are a worker's flags")
    if role == "worker":
        if work_dir:
            raise DataServiceError("--work-dir is the dispatcher's; a worker keeps no state")
        if not dispatcher:
            raise DataServiceError("a worker needs --dispatcher HOST:PORT")
        check_reachable(ServiceAddress.parse(dispatcher))
    free_port(port)
