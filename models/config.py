"""Named model sizes.

Sizes are nominal: the parameter count a run reports is measured from its tensors. ``vocab_size``
here is what the memory model assumes for a size; a training run replaces it with the vocabulary of
the tokenizer it actually uses (4096 for the shipped corpus by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class ModelConfig:
    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int  # SwiGLU hidden width (~8/3 * dim, rounded)
    vocab_size: int = 4096
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        return replace(self, vocab_size=vocab_size)

    def to_dict(self) -> dict:
        return asdict(self)

    def n_params(self) -> int:
        """Exact parameter count of ``models.llama.Transformer`` for this config (untied head)."""
        d, f, v = self.dim, self.ffn_dim, self.vocab_size
        per_layer = 4 * d * d + 3 * d * f + 2 * d  # wq wk wv wo, w1 w2 w3, two RMSNorm weights
        return self.n_layers * per_layer + 2 * v * d + d  # embedding, lm_head, final norm

    def linear_params(self) -> int:
        """Parameters inside the transformer blocks' nn.Linear layers (what FP8 recipes convert)."""
        d, f = self.dim, self.ffn_dim
        return self.n_layers * (4 * d * d + 3 * d * f)


SIZES: dict[str, ModelConfig] = {
    # CPU default: ~5.3M params at vocab 4096; trains to a clear loss drop in a few hundred steps.
    "tiny": ModelConfig(dim=256, n_layers=4, n_heads=4, ffn_dim=688, max_seq_len=1024),
    "small": ModelConfig(dim=512, n_layers=8, n_heads=8, ffn_dim=1376, max_seq_len=1024),
    "125m": ModelConfig(dim=768, n_layers=16, n_heads=12, ffn_dim=2048),
    "350m": ModelConfig(dim=1024, n_layers=24, n_heads=16, ffn_dim=2816),
    "1b": ModelConfig(dim=2048, n_layers=20, n_heads=16, ffn_dim=5504),
    # Used for memory estimates (Llama-2 shapes, 32k vocabulary).
    "7b": ModelConfig(dim=4096, n_layers=32, n_heads=32, ffn_dim=11008, vocab_size=32000, max_seq_len=4096),
    "10b": ModelConfig(dim=5120, n_layers=32, n_heads=40, ffn_dim=13824, vocab_size=32000, max_seq_len=4096),
}


def get_model_config(name: str) -> ModelConfig:
    try:
        return SIZES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(SIZES)}") from None
