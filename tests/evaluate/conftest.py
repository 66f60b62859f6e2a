"""Shared fixtures: the tiny fixture datasets on disk and a tiny random-weight EvalModel."""
import flax.linen as nn
import jax
import pytest

from configs import eval_common, tiny
from flamingo_jax.data import tokenizer as tok_lib
from flamingo_jax.evaluate.inference import EvalModel
from flamingo_jax.generate import Sampler
from flamingo_jax.models import rules, shapes
from flamingo_jax.weights import load
from oracle import eval_fixtures as fixture_data


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory):
  return fixture_data.write_all(str(tmp_path_factory.mktemp("eval_data")))


@pytest.fixture()
def eval_cfg(eval_data):
  c = eval_common.get_config()
  for task, paths in eval_data.items():
    c.data[task].update(paths)
  c.update(batch_size=8, query_set_size=6, pad_multiple=64)
  return c


@pytest.fixture(scope="session")
def tiny_cfg():
  return tiny.get_config()


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
  mesh = rules.make_mesh(tiny_cfg.mesh)
  init = jax.jit(lambda rng: nn.unbox(shapes.init_variables(tiny_cfg.model, rng)))  # eager is slow
  variables = init(jax.random.PRNGKey(0))
  rule_set = rules.logical_rules(tiny_cfg)
  variables = load.place(variables, tiny_cfg.model, mesh, rule_set)
  return EvalModel(Sampler(tiny_cfg.model, variables, mesh=mesh, rules=rule_set),
                   tok_lib.load_tokenizer(tiny_cfg.tokenizer_path), pad_multiple=64)
