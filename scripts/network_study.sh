#!/usr/bin/env bash
# The study of docs/networks.md: how primal_dual and fedavg_mcr2 degrade as links fail, and what compressed
# statistics cost and save, on the default digits experiment and on an MNIST-shaped configuration. Each
# configuration gets three sweeps (link failures; half precision; low rank) and one table of all its runs.
#
#   scripts/network_study.sh [--seeds 0,1] [--out DIR]
#
# On 2 CPU cores: about 11 minutes for digits (2 seeds) and 16 for the MNIST-shaped runs (1 seed).
set -euo pipefail

digits_seeds="0,1" mnist_seeds="0" out="outputs/network_study"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seeds) digits_seeds="$2" mnist_seeds="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "usage: scripts/network_study.sh [--seeds 0,1] [--out DIR]" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"

# 28x28 single-channel images (synthetic classes of 4-dimensional subspaces), the published MNIST encoder, 5 nodes
# on a ring, mini-batches of 50 (BatchNorm's running statistics need several steps a round), 20 rounds.
MNIST_SHAPED=(data=synthetic data.num_classes=10 data.ambient_dim=784 "data.shape=[1,28,28]" data.train_per_class=150
    data.test_per_class=100 model=cnn_mnist train.batch_size=50 train.rounds=20)

study() {
    local name="$1" seeds="$2"
    shift 2
    semdl train -m "$@" solver=primal_dual,fedavg_mcr2 network.link_drop=0,0.1,0.3,0.5 "seed=${seeds}" \
        "hydra.sweep.dir=${out}/${name}/links"
    semdl train -m "$@" solver=primal_dual,fedavg_mcr2 comm.compress=fp16 "seed=${seeds}" \
        "hydra.sweep.dir=${out}/${name}/fp16"
    semdl train -m "$@" solver=primal_dual comm.compress=lowrank comm.rank=32,16,8 "seed=${seeds}" \
        "hydra.sweep.dir=${out}/${name}/lowrank"
    # The lower bound: no communication at all.
    semdl train -m "$@" solver=local "seed=${seeds}" "hydra.sweep.dir=${out}/${name}/local"
    semdl table "${out}/${name}" --rows solver.name,network.link_drop,comm.compress,comm.rank \
        --csv "${out}/${name}.csv" > "${out}/${name}.md"
}

study digits "$digits_seeds"
study mnist_shaped "$mnist_seeds" "${MNIST_SHAPED[@]}"
