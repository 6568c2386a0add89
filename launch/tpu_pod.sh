#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create the slice (or reuse it), copy this
# repository to every worker, set up a venv there, and run the same command
# on all workers (`--worker=all`). JAX finds its peers on a pod by itself.
#
#   launch/tpu_pod.sh --tpu=my-v4-32 --zone=us-central2-b --accelerator_type=v4-32 -- \
#     --config=configs/moving_digits.py:stage=video --workdir=gs://my-bucket/runs/video
#
# Launcher options (before `--`):
#   --tpu=NAME                 TPU VM name (required)
#   --zone=ZONE                (required)
#   --project=PROJECT          (default: gcloud's configured project)
#   --accelerator_type=TYPE    used only when the slice is created (default v4-8)
#   --version=IMAGE            TPU VM image for creation (default tpu-ubuntu2204-base)
#   --skip_setup               reuse the copy and venv already on the workers
#   --dry-run                  print the gcloud commands, run nothing
# Everything after `--` goes to `python -m videoldm.main` unchanged, plus
# --config.multiprocess=True. The workdir should be a gs:// bucket (or a disk
# all workers share): orbax writes each worker's share of the checkpoint there.
# Each worker's output is prefixed with `[worker <hostname>]` and kept in
# ~/videoldm-train.log on that worker; log lines also show JAX's process index.
# Preemption (spot and preemptible slices): the workers get SIGTERM about 30 s
# before shutdown; each saves a checkpoint at its next step boundary if the
# step and the save fit in that time (otherwise the previous checkpoint stays
# the latest, so keep checkpoint.every_steps modest) and the run exits with 75.
# A preempted slice must be deleted (`gcloud compute tpus tpu-vm delete NAME
# --zone=ZONE`); this launcher says so, and running the same command afterwards
# recreates the slice, sets it up and resumes from the workdir's latest checkpoint.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu=""; zone=""; project=""; accelerator_type="v4-8"; version="tpu-ubuntu2204-base"
setup=1; dry_run=0
while (( $# )); do
  case "$1" in
    --tpu=*) tpu="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator_type=*) accelerator_type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --skip_setup) setup=0 ;;
    --dry-run) dry_run=1 ;;
    --) shift; break ;;
    *) unknown_option "$1" ;;
  esac
  shift
done
if [[ -z "$tpu" || -z "$zone" ]]; then
  die "--tpu=NAME and --zone=ZONE are required; got tpu='$tpu' zone='$zone'."
fi
require_workdir "$@"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone" ${project:+--project="$project"})
archive=/tmp/videoldm-src.tar.gz
remote_setup='python3 -m venv ~/videoldm-venv && ~/videoldm-venv/bin/pip install --quiet --upgrade pip && rm -rf ~/videoldm && mkdir ~/videoldm && tar -xzf ~/videoldm-src.tar.gz -C ~/videoldm && ~/videoldm-venv/bin/pip install --quiet -e ~/videoldm"[tpu]"'
set_main_args multi "$@"
train_command="~/videoldm-venv/bin/python $(printf '%q ' "${main_args[@]}")"
remote_train="set -o pipefail; cd ~/videoldm && $train_command 2>&1 | tee ~/videoldm-train.log | sed -u \"s/^/[worker \$(hostname)] /\""

run() {  # Prints the command under --dry-run, runs it otherwise.
  if (( dry_run )); then print_command "$@"; else "$@"; fi
}

if (( dry_run )); then
  echo "# Create the slice only if 'gcloud compute tpus tpu-vm describe' does not find it:"
  run "${gcloud_tpu[@]}" create "$tpu" "${where[@]}" --accelerator-type="$accelerator_type" --version="$version"
elif ! state="$("${gcloud_tpu[@]}" describe "$tpu" "${where[@]}" --format='value(state)' 2>/dev/null)"; then
  run "${gcloud_tpu[@]}" create "$tpu" "${where[@]}" --accelerator-type="$accelerator_type" --version="$version"
elif [[ "$state" == PREEMPTED ]]; then
  die "TPU '$tpu' was preempted; delete it (${gcloud_tpu[*]} delete $tpu ${where[*]}) and run this command again to resume."
fi
if (( setup )); then
  run tar -czf "$archive" -C "$repo_root" --exclude=.git --exclude=.venv --exclude=workdirs .
  run "${gcloud_tpu[@]}" scp "$archive" "$tpu":videoldm-src.tar.gz "${where[@]}" --worker=all
  run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command="$remote_setup"
fi
status=0
run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --worker=all --command="$remote_train" || status=$?
if (( status == EXIT_STOPPED )); then
  echo "$LAUNCHER: the run stopped resumably (exit $EXIT_STOPPED, e.g. preempted); run this command again to resume." >&2
fi
exit "$status"
