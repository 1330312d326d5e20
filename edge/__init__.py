"""The edge: frame sources, the agent (front half + feature coding) and the gRPC client."""

from .agent import EdgeAgent, EncodedFrame
from .client import Client, LinkError, Reply, check_compatible
from .sources import IMAGE_SUFFIXES, ImageSource, SourceError, list_images, read_image

__all__ = [
    "IMAGE_SUFFIXES", "Client", "EdgeAgent", "EncodedFrame", "ImageSource", "LinkError", "Reply", "SourceError",
    "check_compatible", "list_images", "read_image",
]
