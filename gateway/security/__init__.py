"""Signing and verification, key files, and other security primitives."""
