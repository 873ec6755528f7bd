#!/usr/bin/env bash
# Runs the sweeps behind the paper's tables (the paper's solver and every baseline, 3 seeds, on each
# published experiment) and builds one table per experiment with `semdl table`.
#
#   scripts/reproduce_paper.sh [--smoke] [--out DIR]
#
# --smoke runs the same pipeline on the smoke presets (synthetic or bundled data, 3 rounds, 1 seed) in a
# few minutes on a CPU; the test suite runs it. Without --smoke, the CIFAR and MNIST runs need the datasets
# (downloaded on first use, or data.root / $SEMDL_DATA) and, for 1000 rounds, a GPU.
# Weight averaging (fedavg_*) needs one architecture at every node, so it is left out of the experiments
# whose nodes run the published heterogeneous encoders.
set -euo pipefail

prefix="" seeds="0,1,2" out="outputs/paper"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) prefix="smoke_" seeds="0" out="outputs/paper_smoke"; shift ;;
        --out) out="$2"; shift 2 ;;
        *) echo "usage: scripts/reproduce_paper.sh [--smoke] [--out DIR]" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"

sweep() {
    local experiment="$1" solvers="$2"
    semdl train -m "experiment=${prefix}${experiment}" "solver=${solvers}" "seed=${seeds}" \
        "hydra.sweep.dir=${out}/${experiment}"
    semdl table "${out}/${experiment}" --rows solver.name --csv "${out}/${experiment}.csv" > "${out}/${experiment}.md"
}

sweep paper_iid10_cifar10 primal_dual,local,centralized
sweep paper_iid_mnist primal_dual,local,centralized,fedavg_mcr2,fedavg_ce
sweep paper_iid_cifar100 primal_dual,local,centralized
sweep paper_niid4_cifar10 cluster_bcd,primal_dual,local,centralized,fedavg_mcr2,fedavg_ce
sweep paper_niid5_cifar10 cluster_bcd,primal_dual,local,centralized,fedavg_mcr2,fedavg_ce

for table in "${out}"/*.md; do
    echo "## $(basename "$table" .md)"
    cat "$table"
    echo
done
