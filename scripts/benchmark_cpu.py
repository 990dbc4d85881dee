"""Shim: the CPU serving benchmark lives in the library (``python -m blossom_hf.benchmarks.cpu --help``)."""
from blossom_hf.benchmarks.cpu import main

raise SystemExit(main())
