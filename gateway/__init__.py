"""Gongji: the exchange gateway between provincial medical-insurance platforms."""
