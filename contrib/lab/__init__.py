"""Network-namespace lab for the demo and the end-to-end tests (needs root, iproute2).

``contrib.lab.topology`` builds the namespaces; ``contrib.lab.probe`` proves the data plane
(import it directly: it is also run as ``python -m contrib.lab.probe`` inside the lab).
"""

from contrib.lab.topology import (
    Host,
    Lab,
    LabError,
    Node,
    new_prefix,
    overlay_address,
    overlay_broadcast,
    overlay_network,
    sweep,
)

__all__ = [
    "Host",
    "Lab",
    "LabError",
    "Node",
    "new_prefix",
    "overlay_address",
    "overlay_broadcast",
    "overlay_network",
    "sweep",
]
