"""The gateway's default addresses: where it listens unless told otherwise, and so where its clients look."""

DEFAULT_LISTEN = "127.0.0.1:50051"  # the provinces' port
DEFAULT_OPS_LISTEN = "127.0.0.1:50052"  # the operators' port (the `gongji` CLI's --ops)
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"  # /metrics and the operators' dashboard
