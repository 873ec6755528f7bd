#!/usr/bin/env bash
# Runs the sweeps behind the paper's tables (the paper's solver and every baseline, 3 seeds, on each
# published experiment) and builds one table per experiment with `semdl table`.
#
#   scripts/reproduce_paper.sh [--smoke] [--out DIR] [--only EXPERIMENT]
#
# --only runs one experiment's sweep and table (one of the names below), e.g. to rerun one table of the paper.
# --smoke runs the same pipeline on the smoke presets (synthetic or bundled data, 3 rounds, 1 seed) in a
# few minutes on a CPU; the test suite runs it. Without --smoke, the CIFAR and MNIST runs need the datasets
# (downloaded on first use, or data.root / $SEMDL_DATA) and, for 1000 rounds, a GPU.
# Weight averaging (fedavg_*) needs one architecture at every node, so it is left out of the experiments
# whose nodes run the published heterogeneous encoders.
set -euo pipefail

usage="usage: scripts/reproduce_paper.sh [--smoke] [--out DIR] [--only EXPERIMENT]"
experiments="paper_iid10_cifar10 paper_iid_mnist paper_iid_cifar100 paper_niid4_cifar10 paper_niid5_cifar10"
declare -A solvers=(
    [paper_iid10_cifar10]=primal_dual,local,centralized
    [paper_iid_mnist]=primal_dual,local,centralized,fedavg_mcr2,fedavg_ce
    [paper_iid_cifar100]=primal_dual,local,centralized
    [paper_niid4_cifar10]=cluster_bcd,primal_dual,local,centralized,fedavg_mcr2,fedavg_ce
    [paper_niid5_cifar10]=cluster_bcd,primal_dual,local,centralized,fedavg_mcr2,fedavg_ce
)
prefix="" seeds="0,1,2" out="outputs/paper" only=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) prefix="smoke_" seeds="0" out="outputs/paper_smoke"; shift ;;
        --out) [[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }; out="$2"; shift 2 ;;
        --only) [[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }; only="$2"; shift 2 ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
if [[ -n "$only" && " $experiments " != *" $only "* ]]; then
    echo "reproduce_paper.sh: --only $only is not one of: $experiments" >&2
    exit 2
fi
mkdir -p "$out"

chosen() { [[ -z "$only" || "$only" == "$1" ]]; }

for experiment in $experiments; do
    chosen "$experiment" || continue
    semdl train -m "experiment=${prefix}${experiment}" "solver=${solvers[$experiment]}" "seed=${seeds}" \
        "hydra.sweep.dir=${out}/${experiment}"
    semdl table "${out}/${experiment}" --rows solver.name --csv "${out}/${experiment}.csv" > "${out}/${experiment}.md"
done

for experiment in $experiments; do
    chosen "$experiment" || continue
    echo "## ${experiment}"
    cat "${out}/${experiment}.md"
    echo
done
