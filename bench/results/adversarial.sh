#!/usr/bin/env bash
# The adversarial-training results of docs/results.md, in two studies:
#
#   table  every adversarial-training method (docs/methods.md) on MNIST (eps 0.3) and Fashion-MNIST (eps 0.1), 10 epochs,
#          trained under each fixed LR shape and under AccelAT. Per method the fixed shape whose
#          final model has the best robust validation accuracy (PGD-10 on the validation split)
#          is chosen, and only it and the AccelAT runs are evaluated on the test subset
#          (`bulwark eval`: clean, PGD-50x10, CW-20, FGSM), so the test set picks nothing.
#          AccelAT runs twice: from the paper's lr0 1e-3 ("accelat") and from 1e-2, the peak of the
#          one-cycle shape ("accelat-1e-2"), since AccelAT can only lower its rate.
#          On MNIST, PGD-AT is also run with the paper's k=40 under the chosen shape and AccelAT.
#   long   the same sweep over 30 epochs, where AccelAT has room to decay, for PGD-AT on MNIST and
#          PGD-AT and FGSM-RS on Fashion-MNIST: the question is how many epochs each schedule needs.
#   paper  the DEAT paper's own protocol: the full Fashion-MNIST training set at eps 0.1, SGD 0.05,
#          momentum 0.9, weight decay 5e-4, x0.1 at 50% and 80% of 10 epochs, no eps warm-up; PGD-7
#          (step eps/4), FGSM-RS, Free-8 (ceil(10/8) = 2 epochs), M+DEAT and M+PGD, each under that
#          schedule and under AccelAT from the same 0.05.
#   cifar  the seeds' dataset: CIFAR-10 (the JPEG copy of ../shared/data) at eps 8/255 with cnn7 on
#          the first 10,000 training images, crop augmentation, the paper protocol's optimizer and
#          schedule over --epochs (default 4: the study's budget is 3 CPU-hours, PGD-7 costs ~9
#          CPU-minutes an epoch here), PGD-7 (step 2/255), FGSM-RS and M+DEAT, each fixed and under
#          AccelAT (window 2, cool-down 1: scaled to the short run); evaluated on --test-size
#          (default 200).
# Every study's evaluated runs get `bulwark eval`'s rows (clean, PGD-50x10, CW-20, FGSM) and the
# AutoAttack suite (APGD-CE, APGD-T, FAB-T, Square-5000 on the survivors).
#
#   bench/results/adversarial.sh [--study table|long|paper|cifar] [--runs DIR] [--jobs J]
#                                [--datasets "..."] [--methods "..."] [--shapes "..."]
#                                [--train-size N] [--epochs E] [--test-size N] [--evaluated-only]
#       --evaluated-only  (table) retrain only the runs the committed page evaluates (the chosen
#                         shapes of docs/results/runs/table and the AccelAT runs), e.g. to evaluate
#                         them again; a deterministic run reproduces its committed metrics.jsonl.
#   bench/results/adversarial.sh --check-configs
#       for every committed run (docs/results/runs), resolve its command line under the current
#       defaults (`bulwark train --dry-run`) and compare the method, schedule and optimizer with
#       the run's config.json; exit 1 naming each run that would now train differently.
#
# Every run of a study uses the same training subset, epoch budget, model and optimizer; Free-AT
# trains E / m epochs (each replays every batch m times), as the method prescribes. A finished
# run is skipped and an interrupted one resumed, so the script can be stopped and started again.
# J runs go in parallel, one thread each. The small files of every run (not the checkpoints) are
# copied to docs/results/runs/<study>/ and the page is regenerated from them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# Debian's python3 first: the page's plots need its python3-matplotlib (.ci/setup installs it).
py=/usr/bin/python3
[ -x "$py" ] || py=python3
bulwark="${BULWARK:-$root/build/bulwark}"
runs_root="$root/runs/results"
study=table
jobs=2
datasets="" methods="" epochs=""
pairs=""  # "dataset:method ...": the runs of a study; --datasets/--methods give all their pairs
# The settings of the table and long studies; study_settings changes some for the others.
study_defaults() {
  # The comparison shapes of the AccelAT paper (constant, piecewise, cyclic-restart, one-cycle; its
  # exponential range test finds a rate rather than trains, so it is left out) and the shapes the
  # method papers use: Fast-AT's cyclic triangle and DEAT's x0.1 at 50% and 80% (multistep).
  shapes="constant piecewise multistep cyclic cyclic-restart one-cycle"
  accelat_shapes="accelat accelat-1e-2"
  train_size=5000
  test_size=1000
  model=wong_small
  optimizer="--optimizer adam"
  extra_train=""   # study-specific training options
  pgd_steps=10    # PGD-AT's k for the tables; MNIST adds the paper's k=40 ("pgd40")
  eps_ramp=3      # epochs of eps warm-up (Free-AT: the same fraction of its shorter run)
  free_replays=5  # so that E / m is a whole number of epochs at E = 10 and 30
  accelat_extra=""  # AccelAT's options, when a study changes them
}
study_defaults
evaluated_only=0
shared="${BULWARK_SHARED_DATA:-$root/../shared/data}"
check_configs=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --study) study="$2"; shift 2 ;;
    --runs) runs_root="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --datasets) datasets="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --shapes) shapes="$2"; shift 2 ;;
    --train-size) train_size="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --test-size) test_size="$2"; shift 2 ;;
    --evaluated-only) evaluated_only=1; shift ;;
    --check-configs) check_configs=1; shift ;;
    -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
    *) echo "adversarial.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
study_settings() {  # study: its runs' settings (the --datasets, --methods and --epochs given win)
  case "$1" in
    table) : "${datasets:=mnist fashion-mnist}" "${methods:=standard pgd fgsm-rs free mplus-deat mplus-pgd}" "${epochs:=10}" ;;
    long) [[ -n "$datasets$methods" ]] || pairs="mnist:pgd fashion-mnist:pgd fashion-mnist:fgsm-rs"
          : "${datasets:=mnist fashion-mnist}" "${methods:=pgd fgsm-rs}" "${epochs:=30}" ;;
    paper|cifar)
      # The protocol of the DEAT and Fast-AT papers: SGD, x0.1 at 50% and 80% of the run, no warm-up.
      shapes=multistep accelat_shapes=accelat optimizer="--optimizer sgd --momentum 0.9 --weight-decay 5e-4"
      eps_ramp=0 free_replays=8 pgd_steps=7
      if [[ "$1" == paper ]]; then
        : "${datasets:=fashion-mnist}" "${methods:=pgd fgsm-rs free mplus-deat mplus-pgd}" "${epochs:=10}"
        train_size=0
      else
        : "${datasets:=cifar10}" "${methods:=pgd fgsm-rs mplus-deat}" "${epochs:=4}"
        [[ "$test_size" == 1000 ]] && test_size=200
        train_size=10000 model=cnn7 extra_train="--crop-pad 4 --robust-val-size 500"
        # The paper's window of 5 epochs (and 5 of cool-down) leaves a 4-epoch run no room to
        # decay: scaled to the run, as its epochs are to the paper's.
        accelat_extra="--accelat-window 2 --accelat-cooldown 1"
      fi ;;
    *) echo "adversarial.sh: unknown study '$1' (table, long, paper or cifar)" >&2; exit 2 ;;
  esac
}
[[ -x "$bulwark" ]] || { echo "adversarial.sh: $bulwark not built (cmake --build build)" >&2; exit 2; }
runs="$runs_root/$study"
[[ "$check_configs" == 1 ]] || study_settings "$study"

dataset_args() {  # the dataset and its eps
  case "$1" in
    mnist) echo "--dataset mnist --data-dir $shared/mnist --eps 0.3" ;;
    fashion-mnist) echo "--dataset fashion-mnist --eps 0.1" ;;
    cifar10) echo "--dataset cifar10 --data-dir $shared/cifar10-jpeg --eps 8/255" ;;
    *) echo "adversarial.sh: unknown dataset $1" >&2; exit 2 ;;
  esac
}
dataset_eps() { case "$1" in mnist) echo 0.3 ;; cifar10) echo 0.0313725 ;; *) echo 0.1 ;; esac; }

run_epochs() {  # the epochs a method trains: Free-AT replays each batch m times in E / m epochs
  if [[ "$1" == free ]]; then echo $(( (epochs + free_replays - 1) / free_replays )); else echo "$epochs"; fi
}

method_args() {  # dataset method-label eps-ramp: the method and its options
  case "$2" in
    standard) echo "--method standard" ;;  # no attack, so no warm-up to give it
    pgd) if [[ "$pgd_steps" == 7 ]]; then  # the DEAT paper's PGD-7: step eps/4 (2/255 on CIFAR-10)
           echo "--method pgd --steps 7 --alpha $("$py" -c "print(round($(dataset_eps "$1") / 4, 6))") --eps-ramp $3"
         else  # Madry's 2.5 eps / k
           echo "--method pgd --steps $pgd_steps --alpha $("$py" -c "print(2.5 * $(dataset_eps "$1") / $pgd_steps)") --eps-ramp $3"
         fi ;;
    pgd40) echo "--method pgd --steps 40 --alpha 0.01 --eps-ramp $3" ;;  # Madry et al.'s MNIST setting
    free) echo "--method free --replays $free_replays --eps-ramp $3" ;;
    *) echo "--method $2 --eps-ramp $3" ;;
  esac
}

schedule_args() {  # shape epochs: the schedule and its base rate (adam 1e-3; the protocols' SGD 0.05)
  local lr=1e-3
  [[ "$optimizer" == *sgd* ]] && lr=0.05
  case "$1" in
    accelat-1e-2) echo "--schedule accelat --lr 1e-2" ;;
    accelat) echo "--schedule accelat --lr $lr $accelat_extra" ;;
    multistep) echo "--schedule multistep --milestones $("$py" -c "print(f'{$2 / 2:g},{$2 * 4 / 5:g}')") --lr $lr" ;;
    *) echo "--schedule $1 --lr $lr" ;;
  esac
}

train_args() {  # dataset method-label shape: the training command's options (all but --out)
  local ds="$1" method="$2" shape="$3" e ramp
  e="$(run_epochs "$method")"
  ramp="$("$py" -c "print($eps_ramp * $e / $epochs)")"
  echo "$(dataset_args "$ds") $(method_args "$ds" "$method" "$ramp") $(schedule_args "$shape" "$e")" \
    "--model $model $optimizer --train-size $train_size --epochs $e $extra_train" \
    "--test-size $test_size --threads 1 --quiet"
}

train_run() {  # dataset method-label shape
  local ds="$1" method="$2" shape="$3" dir="$runs/$1/$2-$3"
  [[ -f "$dir/summary.json" ]] && return 0
  mkdir -p "$runs/$ds"
  if [[ -f "$dir/last.safetensors" || -f "$dir/interrupted.safetensors" ]]; then  # resumable (Ctrl-C too)
    "$bulwark" train --resume "$dir" --threads 1 --quiet || return 255  # 255: xargs stops
  else
    rm -rf "$dir"
    # shellcheck disable=SC2046
    "$bulwark" train $(train_args "$ds" "$method" "$shape") --out "$dir" || return 255
  fi
  echo "trained: $ds $method $shape ($(date +%H:%M:%S))"
}

eval_run() {  # dataset method-label shape
  local dir="$runs/$1/$2-$3"
  [[ -f "$dir/eval.json" ]] && return 0
  "$bulwark" eval --checkpoint "$dir" --test-size "$test_size" --suite autoattack --threads 1 \
    --json "$dir/eval.json.tmp" > "$dir/eval.txt" || return 255
  mv "$dir/eval.json.tmp" "$dir/eval.json"
  echo "evaluated: $1 $2 $3 ($(date +%H:%M:%S))"
}

# The chosen fixed shape of each (dataset, method): "dataset method shape" lines.
winners() { "$py" "$here/make_page.py" --select --runs "$runs" --shapes "$shapes"; }

if [[ "$check_configs" == 1 ]]; then
  # Each committed run's options as the study gave them, resolved under today's defaults.
  status=0
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  for study in table long paper cifar; do  # this script's studies (runs/sgn is bench/results/sgn.sh's)
    study_dir="$root/docs/results/runs/$study/"
    [[ -d "$study_dir" ]] || continue
    epochs="" datasets="" methods="" pairs=""
    study_defaults
    study_settings "$study"
    for config in "$study_dir"*/*/config.json; do
      d="$(dirname "$config")" ds="$(basename "$(dirname "$(dirname "$config")")")" name="$(basename "$(dirname "$config")")"
      shape=""
      for s in $shapes $accelat_shapes; do [[ "$name" == *"-$s" && ${#s} -gt ${#shape} ]] && shape="$s"; done
      method="${name%-"$shape"}"
      # shellcheck disable=SC2046
      if ! "$bulwark" train $(train_args "$ds" "$method" "$shape") --out "$d" --dry-run 2> "$tmp/resolve.log" \
           > "$tmp/resolved.json"; then
        echo "cannot resolve $d:"; cat "$tmp/resolve.log"; status=1; rm -f "$tmp/resolve.log" "$tmp/resolved.json"; continue
      fi
      rm -f "$tmp/resolve.log"
      if ! "$py" - "$config" "$tmp/resolved.json" <<'PY'
import json, sys
old, new = (json.load(open(p)) for p in sys.argv[1:3])
# An option added since a run was trained is absent from its config: the run had the behaviour
# of the option's default, which is what reading that config gives it, so only keys present count.
diff = [f"{block}.{k}: {old[block].get(k)} -> {v}" for block in ("method", "schedule", "optimizer")
        for k, v in new[block].items() if k in old[block] and old[block][k] != v]
diff += [f"{k}: {old[k]} -> {new[k]}" for k in ("epochs", "seed") if old[k] != new[k]]
if diff:
    print("differs: " + sys.argv[1] + "\n  " + "\n  ".join(diff))
    sys.exit(1)
PY
      then status=1; fi
      rm -f "$tmp/resolved.json"
    done
  done
  [[ "$status" == 0 ]] && echo "adversarial.sh: every committed run resolves to the config it was trained with"
  exit "$status"
fi

export -f train_args train_run eval_run dataset_args dataset_eps run_epochs method_args schedule_args
export py bulwark runs epochs free_replays shared train_size test_size pgd_steps eps_ramp model optimizer extra_train accelat_extra
export OMP_WAIT_POLICY=passive
parallel_lines() { xargs -P "$jobs" -L 1 bash -c "$1"' "$0" "$1" "$2"'; }

if [[ -z "$pairs" ]]; then
  for ds in $datasets; do for m in $methods; do pairs+=" $ds:$m"; done; done
fi
if [[ "$evaluated_only" == 1 ]]; then
  [[ "$study" == table ]] || { echo "adversarial.sh: --evaluated-only is for the table study" >&2; exit 2; }
  # The committed page's choice stands; only its evaluated runs are trained again.
  chosen="$("$py" "$here/make_page.py" --select --runs "$root/docs/results/runs/table" --shapes "$shapes")"
  { printf '%s\n' "$chosen"; for pair in $pairs; do for shape in $accelat_shapes; do echo "${pair%%:*} ${pair#*:} $shape"; done; done; } \
    | parallel_lines train_run
else
  for pair in $pairs; do
    for shape in $shapes $accelat_shapes; do echo "${pair%%:*} ${pair#*:} $shape"; done
  done | parallel_lines train_run
  if [[ "$study" == table ]]; then chosen="$(winners)"; fi
fi

if [[ "$study" == table ]]; then
  extra=""
  if [[ " $datasets " == *" mnist "* && " $methods " == *" pgd "* ]]; then
    pgd_shape="$(awk '$1 == "mnist" && $2 == "pgd" {print $3}' <<< "$chosen")"
    extra="$(printf 'mnist pgd40 %s\nmnist pgd40 accelat\n' "$pgd_shape")"
    printf '%s\n' "$extra" | parallel_lines train_run
  fi
  { printf '%s\n' "$chosen"; for ds in $datasets; do for m in $methods; do echo "$ds $m accelat"; echo "$ds $m accelat-1e-2"; done; done
    if [[ -n "$extra" ]]; then printf '%s\n' "$extra"; fi; } | parallel_lines eval_run
elif [[ "$study" == paper || "$study" == cifar ]]; then
  # A fixed protocol, nothing to choose: every run is evaluated.
  for pair in $pairs; do
    for shape in $shapes $accelat_shapes; do echo "${pair%%:*} ${pair#*:} $shape"; done
  done | parallel_lines eval_run
fi

for f in "$runs"/*/*/summary.json; do
  [[ -f "$f" ]] || continue  # no finished run yet: the pattern stays literal
  d="$(dirname "$f")"
  dest="$root/docs/results/runs/$study/${d#"$runs"/}"
  mkdir -p "$dest"
  for name in config.json metrics.jsonl summary.json eval.json; do
    [[ -f "$d/$name" ]] && cp "$d/$name" "$dest/"
  done
done
"$py" "$here/make_page.py" --runs "$root/docs/results/runs" --out "$root/docs/results.md"
