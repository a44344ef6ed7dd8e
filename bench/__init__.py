"""`make bench`: Gongji's transfer throughput and latency measured against a bare gRPC echo ceiling."""
