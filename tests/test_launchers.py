"""Tests for launch/*.sh: arguments pass through verbatim, per-process environments, dry runs.

The launchers run a stand-in `python` (PYTHON=...) that records its arguments
and JAX environment as JSON, so no test here starts JAX. The real multi-process
training run is in tests/test_multihost.py.
"""

import json
import os
import pathlib
import shlex
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
PASSTHROUGH = ['--config=configs/moving_digits.py:stage=video,runlocal',
               '--config.data.data_dir=/tmp/a dir with spaces', '--config.total_steps=3']
ENV_NAMES = ('JAX_PLATFORMS', 'XLA_FLAGS', 'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES',
             'JAX_PROCESS_ID', 'JAX_LOCAL_DEVICE_IDS')

# Records argv and the JAX environment to $RECORD_DIR/<JAX_PROCESS_ID or 0>.json,
# prints a line, then sleeps $SLEEP_<id> seconds and exits with $EXIT_<id> (default 0).
FAKE_PYTHON = r'''#!/usr/bin/env python3
import json, os, sys, time
index = os.environ.get('JAX_PROCESS_ID', '0')
names = %r
record = dict(argv=sys.argv[1:], env={n: os.environ[n] for n in names if n in os.environ})
with open(os.path.join(os.environ['RECORD_DIR'], index + '.json'), 'w') as f:
  json.dump(record, f)
print('hello from', index, flush=True)
time.sleep(float(os.environ.get('SLEEP_' + index, '0')))
sys.exit(int(os.environ.get('EXIT_' + index, '0')))
''' % (ENV_NAMES,)


@pytest.fixture
def fake(tmp_path):
  """(environment for a launcher, record dir) with the stand-in python on PYTHON."""
  python = tmp_path / 'fake_python'
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  records = tmp_path / 'records'
  records.mkdir()
  env = {key: value for key, value in os.environ.items()
         if key not in ENV_NAMES and not key.startswith(('EXIT_', 'SLEEP_'))}
  env.update(PYTHON=str(python), RECORD_DIR=str(records))
  return env, records


def launch(script, *args, env=None, timeout=60):
  return subprocess.run(['bash', str(LAUNCH / script), *args], capture_output=True, text=True,
                        env=env, timeout=timeout, check=False, cwd=REPO)


def record(records, index=0):
  return json.loads((records / f'{index}.json').read_text())


def test_local_passes_arguments_verbatim_and_exit_status(fake, tmp_path):
  env, records = fake
  workdir = f'--workdir={tmp_path}/run'
  result = launch('local.sh', *PASSTHROUGH, workdir, env={**env, 'EXIT_0': '7'})
  assert result.returncode == 7
  assert record(records)['argv'] == ['-m', 'videoldm.main', *PASSTHROUGH, workdir]
  dry = launch('local.sh', '--dry-run', *PASSTHROUGH, workdir, env=env)
  assert dry.returncode == 0
  assert shlex.split(dry.stdout) == [env['PYTHON'], '-m', 'videoldm.main', *PASSTHROUGH, workdir]


def test_multiprocess_cpu_environments_prefixes_and_logs(fake, tmp_path):
  env, records = fake
  workdir = f'--workdir={tmp_path}/run'
  result = launch('multiprocess_cpu.sh', '--num_processes=3', '--devices_per_process=2',
                  '--port=23456', '--', *PASSTHROUGH, workdir, env=env)
  assert result.returncode == 0, result.stderr
  for index in range(3):
    seen = record(records, index)
    assert seen['argv'] == ['-m', 'videoldm.main', *PASSTHROUGH, workdir,
                            '--config.multiprocess=True']
    assert seen['env'] == dict(
        JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2',
        JAX_COORDINATOR_ADDRESS='localhost:23456', JAX_NUM_PROCESSES='3',
        JAX_PROCESS_ID=str(index))
    assert f'[process {index}] hello from {index}' in result.stdout.splitlines()
    log = tmp_path / 'run' / 'logs' / f'process_{index}.log'
    assert log.read_text() == f'hello from {index}\n'


def test_multiprocess_cpu_failure_stops_the_others(fake, tmp_path):
  env, records = fake
  start = time.monotonic()
  result = launch('multiprocess_cpu.sh', '--', f'--workdir={tmp_path}/run',
                  env={**env, 'SLEEP_0': '60', 'SLEEP_1': '1', 'EXIT_1': '3'})
  assert result.returncode == 3
  assert time.monotonic() - start < 30  # Process 0 was stopped, not waited for.
  assert sorted(path.name for path in records.iterdir()) == ['0.json', '1.json']


def test_multiprocess_cpu_dry_run_and_errors(fake, tmp_path):
  env, _ = fake
  dry = launch('multiprocess_cpu.sh', '--num_processes=2', '--dry-run', '--', *PASSTHROUGH,
               f'--workdir={tmp_path}', env=env)
  assert dry.returncode == 0
  lines = dry.stdout.splitlines()
  assert len(lines) == 2
  for index, line in enumerate(lines):
    words = shlex.split(line)
    assert f'JAX_PROCESS_ID={index}' in words and words[-2:] == ['>', f'{tmp_path}/logs/process_{index}.log']
    assert words[words.index('videoldm.main') + 1:-2] == [
        *PASSTHROUGH, f'--workdir={tmp_path}', '--config.multiprocess=True']
  missing = launch('multiprocess_cpu.sh', '--', *PASSTHROUGH, env=env)
  assert missing.returncode == 2 and 'no --workdir=DIR' in missing.stderr
  bad = launch('multiprocess_cpu.sh', '--num_processes=0', '--', f'--workdir={tmp_path}', env=env)
  assert bad.returncode == 2 and "'0' is not a positive integer" in bad.stderr


def fake_slurm(tmp_path):
  """A bin dir with `srun` (runs the task as SLURM task 5 of 16 on node b) and `scontrol`."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text(
      '#!/usr/bin/env bash\n[[ "$1" == --label ]] && shift\n'
      'SLURM_NTASKS=16 SLURM_PROCID=5 SLURM_LOCALID=5 exec "$@"\n')
  (bin_dir / 'scontrol').write_text(  # `requeue JOB` is recorded in $RECORD_DIR/requeue.
      '#!/usr/bin/env bash\nif [[ "$1" == requeue ]]; then echo "$@" > "$RECORD_DIR/requeue"\n'
      'else printf "node-a\\nnode-b\\n"; fi\n')
  for tool in bin_dir.iterdir():
    tool.chmod(0o755)
  return bin_dir


@pytest.mark.parametrize('per', ['gpu', 'node'])
def test_gpu_slurm_batch_script_runs_each_task_with_its_jax_environment(fake, tmp_path, per):
  env, records = fake
  workdir = '--workdir=/shared/runs/video'
  dry = launch('gpu_slurm.sh', '--nodes=2', '--gpus_per_node=8', f'--per={per}',
               '--partition=a100', '--dry-run', '--', *PASSTHROUGH, workdir, env=env)
  assert dry.returncode == 0, dry.stderr
  script = dry.stdout
  tasks_per_node = 8 if per == 'gpu' else 1
  for line in ('#SBATCH --nodes=2', f'#SBATCH --ntasks-per-node={tasks_per_node}',
               '#SBATCH --gpus-per-node=8', '#SBATCH --partition=a100'):
    assert line in script.splitlines()
  assert 'srun --label ' in script
  batch = tmp_path / 'job.sbatch'
  batch.write_text(script)
  path = f'{fake_slurm(tmp_path)}:{env["PATH"]}'
  job = subprocess.run(['bash', str(batch)], capture_output=True, text=True, timeout=60,
                       env={**env, 'PATH': path, 'SLURM_JOB_NODELIST': 'node-[a-b]'}, check=False)
  assert job.returncode == 0, job.stderr
  seen = record(records, 5)
  assert seen['argv'] == ['-m', 'videoldm.main', *PASSTHROUGH, workdir,
                          '--config.multiprocess=True']
  expected = dict(JAX_COORDINATOR_ADDRESS='node-a:12355', JAX_NUM_PROCESSES='16',
                  JAX_PROCESS_ID='5')
  if per == 'gpu':
    expected['JAX_LOCAL_DEVICE_IDS'] = '5'
  assert seen['env'] == expected


@pytest.mark.parametrize('exit_code, restarts, requeued', [
    (75, '0', True), (75, '20', False), (1, '0', False)])
def test_gpu_slurm_requeues_a_run_stopped_by_its_early_signal(fake, tmp_path, exit_code,
                                                              restarts, requeued):
  """SLURM's early SIGTERM stops the run with 75: requeued, up to --max_requeues times."""
  env, records = fake
  dry = launch('gpu_slurm.sh', '--warn_seconds=300', '--dry-run', '--', '--workdir=/w', env=env)
  assert dry.returncode == 0, dry.stderr
  for line in ('#SBATCH --signal=TERM@300', '#SBATCH --requeue', '#SBATCH --open-mode=append'):
    assert line in dry.stdout.splitlines()
  batch = tmp_path / 'job.sbatch'
  batch.write_text(dry.stdout)
  job = subprocess.run(
      ['bash', str(batch)], capture_output=True, text=True, timeout=60, check=False,
      env={**env, 'PATH': f'{fake_slurm(tmp_path)}:{env["PATH"]}', 'SLURM_JOB_ID': '4242',
           'SLURM_JOB_NODELIST': 'node-[a-b]', 'SLURM_RESTART_COUNT': restarts,
           'EXIT_5': str(exit_code)})
  assert job.returncode == exit_code, job.stderr
  assert (records / 'requeue').exists() == requeued, job.stderr
  if requeued:
    assert (records / 'requeue').read_text().split() == ['requeue', '4242']
    assert 'requeueing job 4242 (restart 1 of 20)' in job.stderr


def test_gpu_slurm_errors(fake):
  env, _ = fake
  missing = launch('gpu_slurm.sh', '--dry-run', '--', *PASSTHROUGH, env=env)
  assert missing.returncode == 2 and 'no --workdir=DIR' in missing.stderr
  bad = launch('gpu_slurm.sh', '--per=core', '--', '--workdir=/w', env=env)
  assert bad.returncode == 2 and "--per=core is not 'gpu' or 'node'" in bad.stderr


def test_tpu_pod_dry_run_creates_sets_up_and_runs_on_all_workers(fake):
  env, _ = fake
  workdir = '--workdir=gs://bucket/runs/video'
  pod = ['--tpu=pod', '--zone=us-central2-b', '--accelerator_type=v4-32']
  dry = launch('tpu_pod.sh', *pod, '--dry-run', '--', *PASSTHROUGH, workdir, env=env)
  assert dry.returncode == 0, dry.stderr
  commands = [shlex.split(line) for line in dry.stdout.splitlines() if not line.startswith('#')]
  assert [words[:5] for words in commands if words[0] == 'gcloud'] == [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', verb] for verb in ('create', 'scp', 'ssh', 'ssh')]
  assert '--accelerator-type=v4-32' in commands[0]
  for words in commands[2:]:
    assert '--worker=all' in words and '--zone=us-central2-b' in words
  setup = next(w for w in commands[3] if w.startswith('--command='))
  assert 'pip install' in setup and '[tpu]' in setup
  train = shlex.split(next(w for w in commands[4] if w.startswith('--command=')))
  start = train.index('videoldm.main') + 1
  assert train[start:start + len(PASSTHROUGH) + 2] == [
      *PASSTHROUGH, workdir, '--config.multiprocess=True']
  skip = launch('tpu_pod.sh', *pod, '--skip_setup', '--dry-run', '--', workdir, env=env)
  assert [line.split()[4] for line in skip.stdout.splitlines()
          if line.startswith('gcloud')] == ['create', 'ssh']


def fake_gcloud(tmp_path, state: str, ssh_exit: int):
  """A bin dir with `gcloud`: `describe` prints `state` (or fails if empty), `ssh` exits `ssh_exit`."""
  bin_dir = tmp_path / 'gcloud_bin'
  bin_dir.mkdir()
  describe = f'echo {state}' if state else 'exit 1'
  (bin_dir / 'gcloud').write_text(
      '#!/usr/bin/env bash\necho "$@" >> "$RECORD_DIR/gcloud"\n'
      f'case "$4" in describe) {describe} ;; ssh) exit {ssh_exit} ;; esac\n')
  (bin_dir / 'gcloud').chmod(0o755)
  return bin_dir


@pytest.mark.parametrize('state, ssh_exit, returncode, message', [
    ('READY', 75, 75, 'the run stopped resumably (exit 75, e.g. preempted); run this command '
     'again to resume.'),
    ('READY', 0, 0, ''),
    ('PREEMPTED', 0, 2, "TPU 'pod' was preempted; delete it (gcloud compute tpus tpu-vm delete "
     'pod --zone=z) and run this command again to resume.'),
])
def test_tpu_pod_reports_preemption(fake, tmp_path, state, ssh_exit, returncode, message):
  env, records = fake
  path = f'{fake_gcloud(tmp_path, state, ssh_exit)}:{env["PATH"]}'
  result = launch('tpu_pod.sh', '--tpu=pod', '--zone=z', '--skip_setup', '--',
                  '--workdir=gs://b/r', env={**env, 'PATH': path})
  assert result.returncode == returncode, result.stderr
  assert message in result.stderr
  calls = [line.split()[3] for line in (records / 'gcloud').read_text().splitlines()]
  assert calls == (['describe'] if state == 'PREEMPTED' else ['describe', 'ssh'])


def test_tpu_pod_errors(fake):
  env, _ = fake
  result = launch('tpu_pod.sh', '--zone=z', '--dry-run', '--', '--workdir=gs://b/r', env=env)
  assert result.returncode == 2 and '--tpu=NAME and --zone=ZONE are required' in result.stderr


@pytest.mark.parametrize('script, args, message', [
    ('multiprocess_cpu.sh', ['--bogus', '--', '--workdir=/w'], "unknown option '--bogus'; expected"),
    ('gpu_slurm.sh', ['--bogus', '--', '--workdir=/w'],
     "unknown option '--bogus'; see the options at the top of this script."),
    ('tpu_pod.sh', ['--bogus', '--', '--workdir=/w'],
     "unknown option '--bogus'; see the options at the top of this script."),
    ('gpu_slurm.sh', ['--cpus_per_task=1.5', '--', '--workdir=/w'], "'1.5' is not a positive integer."),
    ('tpu_pod.sh', ['--tpu=pod', '--zone=z', '--dry-run', '--', '--config=x'],
     "no --workdir=DIR after '--'; expected the run's workdir."),
])
def test_shared_checks_name_the_launcher_and_the_offending_value(fake, script, args, message):
  """The checks of launch/common.sh, as each launcher reports them."""
  result = launch(script, *args, env=fake[0])
  assert result.returncode == 2
  assert result.stderr.startswith(f'{script}: {message}'), result.stderr


def test_launchers_find_their_shared_setup_from_any_directory(fake, tmp_path):
  env, records = fake
  workdir = f'--workdir={tmp_path}/run'
  result = subprocess.run(['bash', str(LAUNCH / 'local.sh'), *PASSTHROUGH, workdir],
                          capture_output=True, text=True, env=env, timeout=60, check=False,
                          cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert record(records)['argv'] == ['-m', 'videoldm.main', *PASSTHROUGH, workdir]
