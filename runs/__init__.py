"""What each node does, without the host: wires loaders/, samplers/ and media/ (host calls passed in)."""
