"""Ground-truth circuits from Tracr: program library, compilation, conversion, verified circuits.

Loading an artifact needs torch only (:func:`load_artifact`); compiling and
checking programs (``groundtruth build``, ``groundtruth check``) need Tracr and
JAX (``pip install -e '.[tracr]'``), imported only when used.
"""

from groundtruth.artifacts import Artifact, ArtifactError, load_artifact
from groundtruth.program import Program, program
from groundtruth.recovery import Recovery, recover

__all__ = ["Artifact", "ArtifactError", "load_artifact", "Recovery", "recover", "Program", "program"]
