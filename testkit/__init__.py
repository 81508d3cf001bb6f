"""Helpers shared by tests and benchmarks; not part of the product.

``seaweedfs``: a throw-away local S3 server; ``oracle``: the official SAM 2 package built with random weights, and our
model holding the same weights; ``admission``: discovery's full-resolution host admission rule, the oracle of the
device matcher.
"""
