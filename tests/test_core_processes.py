"""bench/core_processes.py: the parent drives one worker per core and gathers their rows."""

import os
import sys
import textwrap

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'bench'))
import core_processes  # pylint: disable=g-import-not-at-top,wrong-import-position

# A worker: core i of 2 computes rows [3i, 3i + 3) of arange(6) * 10 + the case's number.
WORKER = textwrap.dedent('''
    import sys
    sys.path.insert(0, {bench!r})
    import core_processes
    core = int(sys.argv[-1].split('=')[1])
    def build(case):
      if case == 'crash':
        raise SystemExit(3)
      import jax.numpy as jnp
      return lambda: jnp.arange(3 * core, 3 * core + 3) * 10 + int(case)
    core_processes.serve(build)
''')


@pytest.fixture(name='script')
def fixture_script(tmp_path):
  path = tmp_path / 'worker.py'
  path.write_text(WORKER.format(bench=os.path.dirname(core_processes.__file__)))
  return str(path)


def test_workers_run_their_rows_and_output_concatenates_them(script):
  workers = core_processes.CoreProcesses(script, [], cores=2)
  try:
    workers.build('1')
    workers.run()
    np.testing.assert_array_equal(workers.output(), np.arange(6) * 10 + 1)
    workers.build('2')  # A second case replaces the first.
    np.testing.assert_array_equal(workers.output(), np.arange(6) * 10 + 2)
  finally:
    workers.close()


def test_a_worker_that_dies_is_an_error_naming_it(script):
  workers = core_processes.CoreProcesses(script, [], cores=1)
  with pytest.raises(RuntimeError, match=r"core worker 0 exited \(status 3\) during 'build'"):
    workers.build('crash')
  workers.close()
