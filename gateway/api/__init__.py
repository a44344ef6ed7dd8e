"""The gRPC edge: servicers that translate, the error table, interceptors and conversions."""
