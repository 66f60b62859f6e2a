"""The causal-LM loss against Hugging Face's (torch cross-entropy on shifted labels,
ignore_index=-100): loss and logits gradient, with ignored targets, a row with none valid, large
logits, and bf16 logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flamingo_jax.train.loss import causal_lm_loss


def _hf_loss_and_grad(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
  x = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
  shifted, targets = x[:, :-1].reshape(-1, x.shape[-1]), torch.tensor(labels[:, 1:]).reshape(-1).long()
  loss = torch.nn.functional.cross_entropy(shifted, targets, ignore_index=-100)
  loss.backward()
  return float(loss.detach()), x.grad.numpy()


def _batch(seed=0, b=3, length=7, vocab=50, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(b, length, vocab)) * scale).astype(np.float32)
  labels = rng.integers(0, vocab, size=(b, length)).astype(np.int32)
  labels[rng.random((b, length)) < 0.3] = -100
  labels[1] = -100  # a row with nothing to predict
  labels[0, 1:] = np.where(labels[0, 1:] == -100, 4, labels[0, 1:])  # one with everything
  return logits, labels


@pytest.mark.parametrize("scale", [3.0, 200.0])
def test_loss_and_gradient_equal_hugging_face(scale):
  logits, labels = _batch(scale=scale)
  loss, grad = jax.value_and_grad(causal_lm_loss)(jnp.asarray(logits), jnp.asarray(labels))
  want_loss, want_grad = _hf_loss_and_grad(logits, labels)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), want_grad, atol=1e-7)
  assert not np.asarray(grad)[:, -1].any() and not np.asarray(grad)[1].any()  # predict nothing


def test_bf16_logits_give_a_bf16_gradient_of_the_fp32_loss():
  logits, labels = _batch(seed=1)
  x = jnp.asarray(logits).astype(jnp.bfloat16)
  loss, grad = jax.value_and_grad(causal_lm_loss)(x, jnp.asarray(labels))
  want_loss, want_grad = _hf_loss_and_grad(np.asarray(x.astype(jnp.float32)), labels)
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad.astype(jnp.float32)), want_grad, atol=2e-3)


def test_no_valid_target_is_zero_loss():
  logits, labels = _batch()
  loss, grad = jax.value_and_grad(causal_lm_loss)(jnp.asarray(logits), jnp.full_like(jnp.asarray(labels), -100))
  assert float(loss) == 0.0 and not np.asarray(grad).any()
