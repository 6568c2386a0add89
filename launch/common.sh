# Shared setup of the launchers in this folder; sourced, not run. Each launcher
# starts with
#
#   set -euo pipefail
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# and then has:
#   LAUNCHER        its file name, which starts every message it prints
#   PYTHON          the Python that runs videoldm.main (default: python3)
#   EXIT_STOPPED    videoldm.main's exit status when a signal stopped it (resumable)
#   die MESSAGE     prints "LAUNCHER: MESSAGE" to stderr and exits with status 2
#   unknown_option OPTION [HINT]      die for an unknown launcher option
#   require_positive_integers VALUE...  die unless each VALUE is 1, 2, 3, ...
#   require_workdir ARG...            die unless an ARG is --workdir=DIR; sets workdir=DIR
#   set_main_args single|multi ARG... sets main_args to `-m videoldm.main ARG...`,
#                                     plus --config.multiprocess=True for multi
#   print_command WORD...             prints the words shell-quoted on one line

LAUNCHER="$(basename "${BASH_SOURCE[1]:-$0}")"
PYTHON="${PYTHON:-python3}"
EXIT_STOPPED=75  # videoldm.main's exit status after a signal stop (videoldm/train/signals.py).

die() {
  echo "$LAUNCHER: $1" >&2
  exit 2
}

unknown_option() {
  die "unknown option '$1'; ${2:-see the options at the top of this script.}"
}

require_positive_integers() {
  local value
  for value in "$@"; do
    if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
      die "'$value' is not a positive integer."
    fi
  done
}

require_workdir() {  # The last --workdir= wins, as for absl flags.
  local arg
  workdir=""
  for arg in "$@"; do
    if [[ "$arg" == --workdir=* ]]; then workdir="${arg#--workdir=}"; fi
  done
  if [[ -z "$workdir" ]]; then
    die "no --workdir=DIR after '--'; expected the run's workdir."
  fi
}

set_main_args() {
  local processes="$1"
  shift
  main_args=(-m videoldm.main "$@")
  case "$processes" in
    single) ;;
    multi) main_args+=(--config.multiprocess=True) ;;
    *) echo "common.sh: set_main_args got '$processes'; expected 'single' or 'multi'." >&2; exit 1 ;;
  esac
}

print_command() {
  printf '%q ' "$@"
  printf '\n'
}
