"""Measured counterfactual quality: anti-causal predictors, the metrics of Melistas et al. (2024)
(effectiveness, minimality, composition, realism) and the per-checkpoint report.

    from scmgen.evaluation import evaluate_model, write_report
"""
from scmgen.evaluation.report import compare, evaluate_model, write_comparison, write_report

__all__ = ["compare", "evaluate_model", "write_comparison", "write_report"]
