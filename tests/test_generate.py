"""KV-cached decoding equals the full forward, and generation equals open_flamingo's `generate`."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flamingo_jax.generate import generate
from flamingo_jax.generate import processors
from flamingo_jax.models.flamingo import Flamingo
from flamingo_jax.weights import state_dict as sd_lib
from oracle import reference_models as ref


def _pair(family, every_n=1, seed=0):
  kw = {"rotary_pct": 0.25} if family == "gpt_neox" else {}
  torch_model = ref.build_reference(family, every_n, seed=seed, **kw)
  cfg = ref.jax_config(family, every_n, **kw)
  return torch_model, cfg, sd_lib.flamingo_to_flax(ref.state_dict_numpy(torch_model), cfg)


def _prompt(rng):
  vision, ids, mask = ref.sample_batch(rng, batch=2, length=16, images=3)
  ids[0, -1] = ids[1, -1] = 5  # prompts end on text, after their images
  return vision, ids, mask


@pytest.mark.slow
@pytest.mark.parametrize("family", ["opt", "gpt_neox", "mpt"])
def test_cached_steps_equal_full_forward(family):
  """Prefill + one extend per token gives the logits a full forward gives at those positions."""
  _, cfg, variables = _pair(family)
  model = Flamingo(cfg)
  vision, ids, mask = _prompt(np.random.default_rng(0))
  new = np.array([[7, 8, 9], [10, 11, 12]])
  full_ids = np.concatenate([ids, new], 1)
  full_mask = np.concatenate([mask, np.ones_like(new)], 1)
  # Reference semantics for new tokens: positions continue, images = the prompt's last image.
  from flamingo_jax.models.decoders import positions as pos
  from flamingo_jax.models.xattn import media_text_time
  text_time = media_text_time(jnp.asarray(full_ids), cfg.media_token_id)
  full = model.apply(variables, jnp.asarray(vision), jnp.asarray(full_ids), jnp.asarray(full_mask),
                     method=lambda m, v, i, a: m.decode(m.encode_images(v), i, a,
                                                        pos.generation_positions(a), text_time))
  logits, state = model.apply(variables, jnp.asarray(vision), jnp.asarray(ids), jnp.asarray(mask), 20,
                              method=Flamingo.prefill)
  np.testing.assert_allclose(logits, full[:, ids.shape[1] - 1], atol=1e-4)
  for j in range(new.shape[1]):
    logits, state = model.apply(variables, jnp.asarray(new[:, j]), state, method=Flamingo.extend)
    np.testing.assert_allclose(logits, full[:, ids.shape[1] + j], atol=1e-4)


def _reference_generate(torch_model, vision, ids, mask, **kw):
  with torch.no_grad():
    out = torch_model.generate(ref.to_torch_images(vision), torch.from_numpy(ids),
                               attention_mask=torch.from_numpy(mask), pad_token_id=ref.PAD_ID, **kw)
  return out.numpy()


@pytest.mark.parametrize("family,settings", [
    ("opt", dict(max_new_tokens=6, num_beams=1)),
    ("mpt", dict(max_new_tokens=6, num_beams=1, repetition_penalty=1.3, no_repeat_ngram_size=2)),
    ("gpt_neox", dict(max_new_tokens=6, num_beams=3, length_penalty=0.0)),
    ("opt", dict(max_new_tokens=5, num_beams=3, length_penalty=1.0, no_repeat_ngram_size=2)),
])
def test_generate_matches_open_flamingo(family, settings):
  torch_model, cfg, variables = _pair(family)
  vision, ids, mask = _prompt(np.random.default_rng(1))
  theirs = _reference_generate(torch_model, vision, ids, mask, **settings)
  ours = generate(cfg, variables, vision, ids, mask, eos_token_ids=(ref.EOC_ID,),
                  pad_token_id=ref.PAD_ID, **settings)
  np.testing.assert_array_equal(ours, theirs)


def test_stops_at_end_of_chunk_and_pads():
  _, cfg, variables = _pair("opt")
  vision, ids, mask = _prompt(np.random.default_rng(2))
  first = generate(cfg, variables, vision, ids, mask, max_new_tokens=1)[:, -1]
  # Declare the first generated token of row 0 an EOS: row 0 stops, row 1 runs on, padded after.
  out = generate(cfg, variables, vision, ids, mask, max_new_tokens=4, eos_token_ids=(int(first[0]),),
                 pad_token_id=ref.PAD_ID)
  assert out[0, ids.shape[1]] == first[0]
  assert (out[0, ids.shape[1] + 1:] == ref.PAD_ID).all()


def test_sampling_is_seeded_and_generate_compiles_once_per_model():
  """The same seed gives the same tokens; a second `generate()` call for the same model (even
  with other weights of that configuration) traces and compiles nothing again."""
  _, cfg, variables = _pair("mpt")
  vision, ids, mask = _prompt(np.random.default_rng(3))
  kw = dict(max_new_tokens=5, do_sample=True, top_k=3, temperature=0.7)
  traces = []
  def listener(event, duration, **_):
    if event == "/jax/core/compile/jaxpr_trace_duration":
      traces.append(duration)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    a = generate(cfg, variables, vision, ids, mask, rng=jax.random.PRNGKey(1), **kw)
    first = len(traces)
    b = generate(cfg, variables, vision, ids, mask, rng=jax.random.PRNGKey(1), **kw)
    other = jax.tree_util.tree_map(lambda x: x * 1.01, variables)
    generate(cfg, other, vision, ids, mask, rng=jax.random.PRNGKey(1), **kw)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  np.testing.assert_array_equal(a, b)
  assert first > 0 and len(traces) == first, (first, len(traces))


def test_processors_follow_hf_semantics():
  from transformers.generation.logits_process import (NoRepeatNGramLogitsProcessor,
                                                      RepetitionPenaltyLogitsProcessor,
                                                      TopPLogitsWarper)
  rng = np.random.default_rng(0)
  seqs = rng.integers(0, 6, size=(3, 9))
  scores = rng.normal(size=(3, 6)).astype(np.float32)
  for proc, ours in [
      (RepetitionPenaltyLogitsProcessor(1.5), lambda s: processors.repetition_penalty(s, jnp.asarray(seqs), 9, 1.5)),
      (NoRepeatNGramLogitsProcessor(2), lambda s: processors.no_repeat_ngram(s, jnp.asarray(seqs), 9, 2)),
      (NoRepeatNGramLogitsProcessor(3), lambda s: processors.no_repeat_ngram(s, jnp.asarray(seqs), 9, 3)),
      (TopPLogitsWarper(0.6), lambda s: processors.top_p_filter(s, 0.6)),
  ]:
    theirs = proc(torch.from_numpy(seqs), torch.from_numpy(scores.copy())).numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(scores))), theirs, rtol=1e-6)
  # Unfilled slots (beyond cur_len) are ignored.
  padded = np.concatenate([seqs, np.full((3, 4), 5)], 1)
  np.testing.assert_allclose(processors.no_repeat_ngram(jnp.asarray(scores), jnp.asarray(padded), 9, 2),
                             processors.no_repeat_ngram(jnp.asarray(scores), jnp.asarray(seqs), 9, 2))


@pytest.mark.slow
def test_a_batch_sharded_over_devices_gives_the_same_tokens():
  """The Sampler puts a batch on the mesh's batch axes and runs inside its logical-axis rules:
  over 8 devices (data parallel) the tokens are those of one device; with parameters and
  activations split too (2, 2, 2) the prompt logits agree."""
  from configs import common
  from flamingo_jax.generate import DecodeSettings, Sampler
  from flamingo_jax.models import rules
  from flamingo_jax.weights import load
  _, cfg, variables = _pair("mpt")
  vision, ids, mask = ref.sample_batch(np.random.default_rng(4), batch=8, length=16, images=3)
  ids[:, -1] = 5
  mask[:, -1] = 1
  settings = DecodeSettings(max_new_tokens=5, num_beams=3, eos_token_ids=(ref.EOC_ID,), pad_token_id=ref.PAD_ID)
  one = Sampler(cfg, variables)
  logits_one, _ = one.prefill(vision, ids, mask, 24)
  full = common.base_config()
  full.model = cfg
  for mesh_axes in (dict(data=8, fsdp=1, tensor=1), dict(data=2, fsdp=2, tensor=2)):
    full.mesh.update(mesh_axes)
    mesh, rule_set = rules.make_mesh(full.mesh), rules.logical_rules(full)
    sharded = Sampler(cfg, load.place(variables, cfg, mesh, rule_set), mesh=mesh, rules=rule_set)
    logits, _ = sharded.prefill(vision, ids, mask, 24)
    assert len(logits.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(logits), np.asarray(logits_one), atol=1e-4)
    if mesh_axes["data"] == 8:
      for s in (settings, dataclasses.replace(settings, num_beams=1)):
        np.testing.assert_array_equal(sharded.generate(vision, ids, mask, s), one.generate(vision, ids, mask, s))
