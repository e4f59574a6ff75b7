"""Evaluation on frozen features: weighted kNN, linear probe, few-shot logistic regression."""

from fastproto.evaluation.features import extract_features
from fastproto.evaluation.fewshot import few_shot
from fastproto.evaluation.knn import knn_classify
from fastproto.evaluation.linear import linear_probe

__all__ = ["extract_features", "few_shot", "knn_classify", "linear_probe"]
