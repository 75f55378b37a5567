"""scmgen: causal generative models of images as declarative structural causal models.

    from scmgen import SCM
    model = SCM.from_yaml("graphs/cgn_double_colored_mnist.yaml")
    values = model.sample(8, do={"shape": 3}, seed=0)
"""
__version__ = "0.1.0"

from scmgen.errors import ScmgenError, SpecError, UsageError  # noqa: E402
from scmgen.model import SCM  # noqa: E402
from scmgen.plugins import AdversarialLoss, Loss, Mechanism, NodeInfo, check_shape  # noqa: E402
from scmgen.registry import register  # noqa: E402

__all__ = ["SCM", "Mechanism", "Loss", "AdversarialLoss", "NodeInfo", "check_shape", "register",
           "ScmgenError", "SpecError", "UsageError", "__version__"]
