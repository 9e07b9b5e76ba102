"""Well-known image competitions, keyed by their Kaggle slug: the metric the data folder cannot say,
and the quirks a first submission must get right (python -m src.init reads this table).

Each entry cites where its metric is defined: the competition's evaluation page, or openai/mle-bench's
`mlebench/competitions/<slug>/grade.py`, which re-implements Kaggle's scoring. An entry sets only what
the folder cannot show (the metric; a task the labels leave open; a range the predictions must keep).

Standard library only: src.init's --help lists the slugs without loading torch or pandas."""

from __future__ import annotations

from dataclasses import dataclass, field

EVAL = "https://www.kaggle.com/competitions/{}/overview/evaluation"
GRADE = "openai/mle-bench mlebench/competitions/{}/grade.py"


@dataclass(frozen=True)
class Known:
    """What a competition's pages say and its files do not."""

    metric: str  # metric.name
    source: str  # where the metric is defined (EVAL or GRADE, formatted with the slug, or a path here)
    keys: dict = field(default_factory=dict)  # further config keys, dotted ("data.task": "ordinal")
    note: str = ""  # the quirk, for the config's comment


def _k(slug: str, metric: str, grade: bool = True, note: str = "", **keys) -> tuple[str, Known]:
    source = (GRADE if grade else EVAL).format(slug)
    return slug, Known(metric, source, {k.replace("__", "."): v for k, v in keys.items()}, note)


KNOWN: dict[str, Known] = dict([
    _k("aerial-cactus-identification", "roc_auc"),
    _k("alaska2-image-steganalysis", "weighted_auc", note="AUC weighted 2:1 below a TPR of 0.4"),
    _k("aptos2019-blindness-detection", "qwk", data__task="ordinal",
       note="grades 0-4 scored by quadratic weighted kappa; the submission holds integer grades"),
    _k("cassava-leaf-disease-classification", "accuracy"),
    _k("diabetic-retinopathy-detection", "qwk", grade=False, data__task="ordinal"),
    _k("digit-recognizer", "accuracy", grade=False),
    _k("dog-breed-identification", "log_loss", note="one probability column per breed"),
    _k("dogs-vs-cats-redux-kernels-edition", "log_loss", note="the probability that the image is a dog"),
    _k("herbarium-2020-fgvc7", "f1_macro", grade=False),
    _k("herbarium-2021-fgvc8", "f1_macro"),
    _k("herbarium-2022-fgvc9", "f1_macro"),
    _k("histopathologic-cancer-detection", "roc_auc"),
    _k("humpback-whale-identification", "map@5", grade=False, note="five ranked ids per image; new_whale for "
       "individuals not in train"),
    _k("happy-whale-and-dolphin", "map@5", grade=False, note="five ranked individual ids per image"),
    _k("imet-2020-fgvc7", "f2_samples", note="mean F2 over images of the attribute ids written"),
    _k("inaturalist-2019-fgvc6", "top1_error", note="the submission's category id is scored as top-1 error"),
    _k("invasive-species-monitoring", "roc_auc"),
    _k("isic-2024-challenge", "pauc@0.8", grade=False, note="partial AUC above 80% TPR"),
    _k("iwildcam-2019-fgvc6", "f1_macro"),
    _k("Kannada-MNIST", "accuracy", grade=False),
    _k("leaf-classification", "log_loss", note="one probability column per species"),
    _k("paddy-disease-classification", "accuracy", grade=False),
    _k("petfinder-pawpularity-score", "rmse", grade=False, data__task="regression", data__target_range=[1, 100],
       note="Pawpularity 1-100: predictions are clipped to that range"),
    _k("plant-pathology-2020-fgvc7", "roc_auc", grade=False, note="mean column-wise ROC AUC of the four columns"),
    _k("plant-pathology-2021-fgvc8", "f1_samples", grade=False, note="mean F1 over images of the labels written"),
    _k("plant-seedlings-classification", "f1_micro", grade=False),
    _k("planet-understanding-the-amazon-from-space", "f2_samples", grade=False,
       note="mean F2 over images of the tags written"),
    _k("ranzcr-clip-catheter-line-classification", "roc_auc",
       note="mean ROC AUC over the 11 label columns of the sample submission"),
    _k("rsna-breast-cancer-detection", "pfbeta", grade=False, note="probabilistic F1 over prediction_id answers"),
    _k("seti-breakthrough-listen", "roc_auc"),
    _k("siim-isic-melanoma-classification", "roc_auc", note="the probability that a lesion is malignant"),
    _k("statoil-iceberg-classifier-challenge", "log_loss", note="the probability of an iceberg"),
    # the demo competitions (python -m src.demo builds them; their metrics are the configs/demo*.yaml ones)
    ("digits", Known("accuracy", "src/demo.py (--task multiclass)")),
    ("digits_multilabel", Known("f1_macro", "src/demo.py (--task multilabel)")),
    ("digits_ordinal", Known("qwk", "src/demo.py (--task ordinal)", {"data.task": "ordinal"})),
    ("digits_regression", Known("rmse", "src/demo.py (--task regression)", {"data.target_range": [1, 100]})),
    ("digits_topk", Known("map@5", "src/demo.py (--task topk)")),
])


def known(slug: str) -> tuple[str, Known] | None:
    """(the table's spelling of the slug, its entry), matched without regard to case, or None."""
    by_lower = {k.lower(): k for k in KNOWN}
    name = by_lower.get(slug.lower())
    return (name, KNOWN[name]) if name else None
