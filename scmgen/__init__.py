"""scmgen: causal generative models of images as declarative structural causal models.

    from scmgen import SCM
    model = SCM.from_yaml("graphs/cgn_double_colored_mnist.yaml")
    values = model.sample(8, do={"shape": 3}, seed=0)
"""
import os

__version__ = "0.1.0"

# OpenMP threads that spin while they wait collapse when another process holds a core: a CGN
# training step on 2 threads ran 0.2 steps/s with the default policy and 4.6 with PASSIVE while a
# second process was busy (4.8 on one thread). It must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from scmgen.errors import ScmgenError, SpecError, UsageError  # noqa: E402
from scmgen.model import SCM  # noqa: E402
from scmgen.plugins import AdversarialLoss, Loss, Mechanism, NodeInfo, check_shape  # noqa: E402
from scmgen.registry import register  # noqa: E402

__all__ = ["SCM", "Mechanism", "Loss", "AdversarialLoss", "NodeInfo", "check_shape", "register",
           "ScmgenError", "SpecError", "UsageError", "__version__"]
