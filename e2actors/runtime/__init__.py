"""The asyncio actor runtime: actors, refs, mailboxes, nodes, transport, codec, supervision."""
