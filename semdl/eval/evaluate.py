"""The evaluation of a network of trained nodes: classifiers on frozen features and the paper's structure claims."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from semdl.data import Dataset
from semdl.eval.classifiers import (
    CLASSIFIERS,
    ClassificationTask,
    accuracy,
    knn_neighbours,
    subspaces_from_features,
)
from semdl.eval.diagnostics import (
    class_spectra,
    class_subspace_angles,
    cross_node_accuracy,
    cross_node_angles,
    effective_rank,
    similarity_matrix,
)
from semdl.eval.features import encode
from semdl.eval.plots import plot_class_spectra, plot_cross_node_accuracy, plot_similarity_heatmap
from semdl.io.run_directory import CROSS_NODE_ACCURACY, SIMILARITY, SPECTRA
from semdl.network import Node
from semdl.objectives import rate_reduction

logger = logging.getLogger("semdl")


def _rates(features: Tensor, labels: Tensor, num_classes: int, eps_sq: float) -> dict:
    dR, R, Rc = rate_reduction(features, labels, num_classes, eps_sq)
    return {"R": float(R), "Rc": float(Rc), "dR": float(dR)}


def _masked_mean(matrices: Tensor, mask: Tensor) -> float:
    """Mean of the entries selected by `mask`, or nan when nothing is selected."""
    return float(matrices[mask].mean()) if bool(mask.any()) else float("nan")


@torch.no_grad()
def node_features(nodes: list[Node], dataset: Dataset) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Each node's features of its own training samples (and their labels), and of the whole test set (N, n, d)."""
    train_features = [encode(node.encoder, node.inputs[node.indices], node.pipeline) for node in nodes]
    train_labels = [node.labels[node.indices] for node in nodes]
    test_features = torch.stack([encode(node.encoder, dataset.test_x, node.pipeline) for node in nodes])
    return train_features, train_labels, test_features


def n_components_of(cfg: DictConfig, dim_z: int, num_classes: int) -> int:
    """eval.n_components, or by default d / K (the share of the feature space each class gets when classes are
    orthogonal, as MCR² arranges them), at most 30: a class subspace as large as the feature space explains
    every feature equally well and cannot classify."""
    return cfg.n_components if cfg.n_components is not None else max(1, min(30, dim_z // num_classes))


@torch.no_grad()
def classify(
    nodes: list[Node],
    features: tuple[list[Tensor], list[Tensor], Tensor],
    test_labels: Tensor,
    num_classes: int,
    cfg: DictConfig,
    n_components: int,
) -> dict:
    """Test accuracy of every node and classifier, on all classes and on the classes the node holds."""
    train_features, train_labels, test_features = features
    statistics = torch.stack([node.statistics for node in nodes])
    shared_counts = torch.stack([node.counts * node.responsible for node in nodes])
    results: dict = {name: {"per_node": [], "own_classes": []} for name in cfg.classifiers}
    for node, reference, reference_labels, queries in zip(nodes, train_features, train_labels, test_features):
        task = ClassificationTask(
            node.index, reference, reference_labels, queries, num_classes, n_components, statistics, shared_counts, cfg
        )
        own_classes = (torch.bincount(reference_labels, minlength=num_classes) > 0)[test_labels]
        for name in cfg.classifiers:
            predicted = CLASSIFIERS.get(name, "eval.classifiers").value(task)
            results[name]["per_node"].append(accuracy(predicted, test_labels))
            results[name]["own_classes"].append(accuracy(predicted, test_labels, own_classes))
    if "knn" in results:
        results["knn"]["k"] = [knn_neighbours(labels, num_classes, cfg.knn_k) for labels in train_labels]
        warn_about_capped_knn(cfg.knn_k, results["knn"]["k"], nodes)
    for result in results.values():
        result["mean"] = sum(result["per_node"]) / len(nodes)
        result["own_classes_mean"] = sum(result["own_classes"]) / len(nodes)
    return results


def warn_about_capped_knn(asked: int, used: list[int], nodes: list[Node]) -> None:
    capped = [(node.index, k) for node, k in zip(nodes, used) if k < asked]
    if capped:
        listing = ", ".join(f"node {index}: {k}" for index, k in capped)
        logger.warning(
            f"eval.knn_k={asked} exceeds the smallest class some nodes hold; k-NN votes there among that many "
            f"neighbours instead ({listing}; eval.json: knn.k)"
        )


def evaluation_set(dataset: Dataset, cfg: DictConfig) -> Dataset:
    """The dataset with at most eval.test_per_class test samples of each class, chosen with eval.test_seed: the
    same test set for every node and every evaluation of a run (the whole test set when test_per_class is null)."""
    if cfg.test_per_class is None:
        return dataset
    labels = dataset.test_y
    generator = torch.Generator().manual_seed(cfg.test_seed)
    order = torch.randperm(len(labels), generator=generator).to(labels.device)
    by_class = order[torch.argsort(labels[order], stable=True)]  # each class's samples in the seeded order
    counts = torch.bincount(labels, minlength=dataset.num_classes)
    rank = torch.arange(len(labels), device=labels.device) - (torch.cumsum(counts, 0) - counts)[labels[by_class]]
    keep = by_class[rank < cfg.test_per_class].sort().values
    return replace(dataset, test_x=dataset.test_x[keep], test_y=labels[keep])


def evaluate_accuracy(nodes: list[Node], dataset: Dataset, cfg: DictConfig, dim_z: int) -> dict:
    """Only the classifiers: the periodic evaluation during training."""
    dataset = evaluation_set(dataset, cfg)
    features = node_features(nodes, dataset)
    return classify(
        nodes, features, dataset.test_y, dataset.num_classes, cfg, n_components_of(cfg, dim_z, dataset.num_classes)
    )


NODE_ORDER = "\n(within a class, node 0's samples first, then node 1's, ...)"  # pooled features are stacked by node


def draw_similarity(features: Tensor, labels: Tensor, cfg: DictConfig, path: Path, subject: str) -> None:
    """The class-sorted similarity heatmap of eval.similarity's kind; `subject` says whose features they are."""
    similarity, sorted_labels = similarity_matrix(features, labels, cfg.heatmap_per_class, cfg.similarity)
    kind = "|cosine|" if cfg.similarity == "absolute" else "cosine clipped to [0, 1]"
    plot_similarity_heatmap(similarity, sorted_labels, path, kind, subject)


@torch.no_grad()
def similarity_snapshot(nodes: list[Node], dataset: Dataset, cfg: DictConfig, path: Path, round_index: int) -> None:
    """The heatmap of every node's training features, pooled, at one round (eval.heatmap_every)."""
    train_features = [encode(node.encoder, node.inputs[node.indices], node.pipeline) for node in nodes]
    labels = torch.cat([node.labels[node.indices] for node in nodes])
    subject = f"the training features of all {len(nodes)} nodes, pooled, at round {round_index}{NODE_ORDER}"
    draw_similarity(torch.cat(train_features), labels, cfg, path, subject)


@torch.no_grad()
def evaluate_network(
    nodes: list[Node], dataset: Dataset, cfg: DictConfig, dim_z: int, eps_sq: float, figures: Path | None
) -> dict:
    """Every number of eval.json: accuracies, rates of train and test features, diversity, discriminability and
    cross-node consistency of the class subspaces; draws the figures into `figures` when given."""
    dataset = evaluation_set(dataset, cfg)
    num_classes = dataset.num_classes
    n_components = n_components_of(cfg, dim_z, num_classes)
    features = node_features(nodes, dataset)
    accuracies = classify(nodes, features, dataset.test_y, num_classes, cfg, n_components)
    train_features, train_labels, test_features = features
    held = torch.stack([torch.bincount(labels, minlength=num_classes) > 0 for labels in train_labels])
    spectra = torch.stack([class_spectra(f, y, num_classes) for f, y in zip(train_features, train_labels)])
    ranks = effective_rank(spectra)
    # Angles between subspaces padded with noise directions read near 90 degrees whatever the structure, so the
    # structure diagnostics use the typical class dimension (median effective rank) rather than n_components.
    subspace_rank = max(1, min(n_components, round(float(ranks[held].median()))))
    bases = torch.stack(
        [subspaces_from_features(f, y, num_classes, subspace_rank) for f, y in zip(train_features, train_labels)]
    )
    class_angles = torch.stack([class_subspace_angles(basis) for basis in bases])
    node_angles = cross_node_angles(bases)
    cross_accuracy = cross_node_accuracy(bases, test_features, dataset.test_y, allowed=held)

    pair_held = (
        held.T[:, :, None] & held.T[:, None, :] & ~torch.eye(len(nodes), dtype=torch.bool, device=held.device)[None]
    )
    class_pairs = (
        held[:, :, None] & held[:, None, :] & ~torch.eye(num_classes, dtype=torch.bool, device=held.device)[None]
    )
    pooled_train = torch.cat(train_features)
    pooled_train_labels = torch.cat(train_labels)
    evaluation = {
        "protocol": cfg.name,
        # False for a non-i.i.d. partition: then a node's accuracy on the classes it holds is the number that matters.
        "every_node_holds_every_class": bool(held.all()),
        "classifiers": accuracies,
        "n_components": n_components,
        "subspace_rank": subspace_rank,
        "rates": {
            "per_node": [
                {
                    "train": _rates(f, y, num_classes, eps_sq),
                    "test": _rates(test, dataset.test_y, num_classes, eps_sq),
                }
                for f, y, test in zip(train_features, train_labels, test_features)
            ],
            "pooled": {
                "train": _rates(pooled_train, pooled_train_labels, num_classes, eps_sq),
                "test": _rates(
                    test_features.reshape(-1, dim_z), dataset.test_y.repeat(len(nodes)), num_classes, eps_sq
                ),
            },
        },
        "diversity": {
            "effective_rank": ranks.tolist(),
            "mean_effective_rank": _masked_mean(ranks, held),
            "spectra": spectra.tolist(),
        },
        "discriminability": {
            "class_angles": class_angles.tolist(),
            "mean_class_angle": _masked_mean(class_angles, class_pairs),
        },
        "consistency": {
            "cross_node_angles": node_angles.tolist(),
            "mean_cross_node_angle": _masked_mean(node_angles, pair_held),
            "cross_node_accuracy": cross_accuracy.tolist(),
            "cross_node_shared_classes": (held[:, None] & held[None]).sum(-1).tolist(),
        },
        "test_samples": len(dataset.test_y),
    }
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        subject = f"the training features of all {len(nodes)} nodes, pooled{NODE_ORDER}"
        draw_similarity(pooled_train, pooled_train_labels, cfg, figures / SIMILARITY, subject)
        plot_class_spectra(spectra, figures / SPECTRA)
        plot_cross_node_accuracy(cross_accuracy, held, figures / CROSS_NODE_ACCURACY)
    return evaluation
