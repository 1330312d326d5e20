"""The edge: frame sources, the agent (front half + feature coding) and the gRPC client."""

from .agent import EdgeAgent, EncodedFrame
from .client import Client, LinkError, Reply, check_compatible
from .sources import ImageSource, Source, SourceError, SourceFrame, list_images, open_source

__all__ = [
    "Client", "EdgeAgent", "EncodedFrame", "ImageSource", "LinkError", "Reply", "Source", "SourceError",
    "SourceFrame", "check_compatible", "list_images", "open_source",
]
