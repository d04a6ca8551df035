"""The packet layer: packets, batches, pcap/pcapng, the pcap-filter language. Pure code, no asyncio."""
