#!/usr/bin/env bash
# Submit a training run to a SLURM GPU cluster: one JAX process per GPU (or
# per node), joined through jax.distributed with a coordinator on the first node.
#
#   launch/gpu_slurm.sh --nodes=2 --gpus_per_node=8 -- \
#     --config=configs/moving_digits.py:stage=video --workdir=/shared/runs/video
#
# Launcher options (before `--`, all optional):
#   --nodes=N            nodes (default 1)
#   --gpus_per_node=G    GPUs per node (default 8)
#   --per=gpu|node       one process per GPU (default) or one per node seeing all its GPUs
#   --partition=NAME     SLURM partition;  --time=HH:MM:SS  time limit (default 24:00:00)
#   --cpus_per_task=C    CPU cores per process (default 8)
#   --port=P             coordinator port (default 12355)
#   --job_name=NAME      (default videoldm)
#   --warn_seconds=S     SLURM sends SIGTERM this long before the time limit (default 180)
#   --max_requeues=N     requeue a stopped job at most N times (default 20; 0: never)
#   --dry-run            print the batch script (to stdout), submit nothing
# Everything after `--` goes to `python -m videoldm.main` unchanged, plus
# --config.multiprocess=True. The workdir must be on a filesystem every node
# sees (orbax writes each process's share of the checkpoint there).
# Time limits and preemption: SLURM's early SIGTERM (--signal) makes every
# process save a checkpoint at its next step and exit with 75 ("stopped,
# resumable"); the job then requeues itself (`scontrol requeue`) and the new
# allocation resumes from that checkpoint. Any other exit status ends the job.
# The output file is appended to across requeues.
# Environment: PYTHON (default: python3 on the nodes, e.g. a venv's python).
# Per-process output is labelled by `srun --label` with the process index.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

nodes=1; gpus_per_node=8; per=gpu; partition=""; time_limit="24:00:00"; port=12355
job_name=videoldm; cpus_per_task=8; warn_seconds=180; max_requeues=20; dry_run=0
while (( $# )); do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --gpus_per_node=*) gpus_per_node="${1#*=}" ;;
    --per=*) per="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --time=*) time_limit="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --cpus_per_task=*) cpus_per_task="${1#*=}" ;;
    --job_name=*) job_name="${1#*=}" ;;
    --warn_seconds=*) warn_seconds="${1#*=}" ;;
    --max_requeues=*) max_requeues="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    --) shift; break ;;
    *) unknown_option "$1" ;;
  esac
  shift
done
require_positive_integers "$nodes" "$gpus_per_node" "$port" "$cpus_per_task" "$warn_seconds"
if ! [[ "$max_requeues" =~ ^[0-9]+$ ]]; then
  die "--max_requeues=$max_requeues is not a whole number; expected 0, 1, 2, ..."
fi
case "$per" in
  gpu) tasks_per_node="$gpus_per_node" ;;  # Every task sees all GPUs and picks its own.
  node) tasks_per_node=1 ;;
  *) die "--per=$per is not 'gpu' or 'node'." ;;
esac
require_workdir "$@"

set_main_args multi "$@"
train_command="$(printf '%q ' "$PYTHON" "${main_args[@]}")"
# Per task: the coordinator is the job's first node; SLURM numbers the tasks.
task_script='export JAX_COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):'"$port"'"
export JAX_NUM_PROCESSES="$SLURM_NTASKS" JAX_PROCESS_ID="$SLURM_PROCID"'
if [[ "$per" == gpu ]]; then
  task_script+='
export JAX_LOCAL_DEVICE_IDS="$SLURM_LOCALID"'
fi
task_script+="
exec $train_command"

batch_script="#!/usr/bin/env bash
#SBATCH --job-name=$job_name
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$tasks_per_node
#SBATCH --gpus-per-node=$gpus_per_node
#SBATCH --cpus-per-task=$cpus_per_task
#SBATCH --time=$time_limit
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=TERM@$warn_seconds
#SBATCH --requeue
${partition:+#SBATCH --partition=$partition
}set -euo pipefail
export XLA_PYTHON_CLIENT_PREALLOCATE=false
status=0
srun --label bash -c $(printf '%q' "$task_script") || status=\$?
restarts=\${SLURM_RESTART_COUNT:-0}
if (( status == $EXIT_STOPPED && restarts < $max_requeues )); then
  echo \"$LAUNCHER: the run stopped resumably (exit $EXIT_STOPPED); requeueing job \$SLURM_JOB_ID (restart \$((restarts + 1)) of $max_requeues).\" >&2
  scontrol requeue \"\$SLURM_JOB_ID\"
fi
exit \"\$status\"
"

if (( dry_run )); then
  echo "$LAUNCHER: dry run; the batch script below would be submitted with sbatch." >&2
  printf '%s' "$batch_script"
  exit 0
fi
printf '%s' "$batch_script" | sbatch
