"""Outbound calls to provinces (ProvinceInbox) and the outbox that drives them."""
