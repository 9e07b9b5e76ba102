"""The image + metadata model (data.meta_cols): a timm backbone's pooled features and a metadata
branch, concatenated, then one linear head, as the SIIM-ISIC 2020 winners built it.

    image (N, 3, H, W) -> backbone (num_classes=0)                      -> (N, F)
    meta  (N, D)       -> [dense | embedded categories] -> MLP          -> (N, hidden[-1])
    concat (N, F + hidden[-1]) -> Linear -> logits (N, n_outputs)

The MLP is Linear-BN-SiLU-Dropout-Linear-BN-SiLU (model.meta_hidden gives its widths). The model
takes one argument, the pair (image, meta), so every loop that calls `model(x)` carries both; its
state dict is `backbone.*`, `meta.*` and `head.*`. Without data.meta_cols no such model is built.
"""

from __future__ import annotations

import torch
from torch import nn

from src.core.config import ModelCfg


class MetaBranch(nn.Module):
    """Metadata vectors (N, dense + categories) -> features (N, hidden[-1])."""

    def __init__(self, dense: int, cards: list[int], hidden: list[int], dropout: float, emb_dim: int):
        super().__init__()
        self.dense = dense
        self.embeddings = nn.ModuleList(nn.Embedding(c, min(emb_dim, (c + 1) // 2)) for c in cards)
        width = dense + sum(e.embedding_dim for e in self.embeddings)
        layers: list[nn.Module] = []
        for i, h in enumerate(hidden):
            if i:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.SiLU()]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, meta: torch.Tensor) -> torch.Tensor:
        meta = meta.float()
        cats = meta[:, self.dense:].long()  # category indices travel as floats in the one vector
        parts = [meta[:, :self.dense]] + [e(cats[:, i]) for i, e in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, 1))


class MetaModel(nn.Module):
    """A timm backbone without its classifier, a MetaBranch and the head over both."""

    def __init__(self, backbone: nn.Module, cfg: ModelCfg, dense: int, cards: list[int], n_outputs: int):
        super().__init__()
        backbone.reset_classifier(0)  # pooled features (N, F)
        self.backbone = backbone
        self.meta = MetaBranch(dense, cards, cfg.meta_hidden, cfg.meta_dropout, cfg.meta_emb_dim)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(backbone.num_features + self.meta.out_features, n_outputs)

    @property
    def pretrained_cfg(self) -> dict:
        return self.backbone.pretrained_cfg

    def no_weight_decay(self) -> set[str]:
        skip = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {f"backbone.{n}" for n in skip}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, meta = x
        features = torch.cat([self.backbone(image), self.meta(meta)], 1)  # (N, F + hidden[-1])
        return self.head(self.drop(features))
