"""Ground-truth circuits from Tracr: program library, compilation, conversion, circuits."""

from groundtruth.program import Program, program

__all__ = ["Program", "program"]
