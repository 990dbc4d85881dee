"""Benchmarks run by ``blossom-hf benchmark <what>`` (each module defines ``main(argv)``)."""
