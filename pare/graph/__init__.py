"""Graph surgery shared by techniques: channel tracing with torch.fx (``tracing``) and
rebuilding layers with fewer channels (``surgery``)."""
