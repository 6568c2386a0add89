"""`videoldm.train.chain`: stage configs wired to their predecessors, bad stages refused."""

import os

import pytest

from videoldm import stages
from videoldm.train import chain


@pytest.mark.parametrize('config_file', [chain.default_config_file(),
                                         chain.quickstart_config_file()],
                         ids=['moving_digits', 'quickstart'])
def test_stage_config_starts_each_stage_from_its_predecessor(config_file, tmp_path):
  run = str(tmp_path)
  for stage in stages.CHAIN:
    config = chain.stage_config(config_file, stage, 'runlocal', run)
    assert config.stage == stage
    assert config.data.data_dir == os.path.join(run, 'data')
    source = stages.STAGES[stage].init_from
    assert config.init_from.workdir == (os.path.join(run, source) if source else '')


def test_every_stage_but_the_first_of_a_chain_has_a_predecessor_trained_before_it():
  for stage in stages.CHAIN:
    source = stages.STAGES[stage].init_from
    if source:
      assert stages.CHAIN.index(source) < stages.CHAIN.index(stage)


def test_unknown_stage_is_refused_before_any_training(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown stages \['vidoe'\]"):
    chain.train_all(str(tmp_path), chain.default_config_file(), 'runlocal',
                    stages=('autoencoder', 'vidoe'))
  assert not os.listdir(tmp_path)
