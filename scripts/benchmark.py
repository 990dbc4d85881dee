"""Shim: the GPU benchmark lives in the library (``python -m blossom_hf.benchmarks.gpu --help``)."""
from blossom_hf.benchmarks.gpu import main

raise SystemExit(main())
