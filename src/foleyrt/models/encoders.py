"""SigLIP2 (semantic visual features) and CLAP (text features) through `transformers`.

Only what the pipeline uses is loaded: SigLIP2's vision tower (its pooled MAP-head output is
what the release's `get_image_features` returns) and CLAP's text tower (the release reads the
token-level `last_hidden_state`, before the projection head). The tiny random variants use the
same classes with small configs and a byte-level tokenizer built in code, so tests and smoke
runs exercise the real code path without any download.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor, nn

from foleyrt.config import fetch_command
from foleyrt.errors import InputError, WeightsError

if TYPE_CHECKING:  # transformers is imported where a model is built (it is slow to import)
    from transformers import (
        ClapTextModelWithProjection,
        PreTrainedTokenizerBase,
        SiglipVisionModel,
    )

log = logging.getLogger(__name__)

SIGLIP_IMAGE_SIZE = 512


Loaded = TypeVar("Loaded")


def _from_pretrained(load: Callable[..., Loaded], repo: str, **kwargs: Any) -> Loaded:
    """`load(repo)` (a `from_pretrained`) with failures turned into one actionable line."""
    try:
        return load(repo, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(
            f"cannot load {repo!r} ({first}); on a machine with network run "
            f"{fetch_command(repo)} once (it is cached), or pass a local directory"
        ) from None


class SigLIP2Encoder(nn.Module):
    """Per-frame 768-d SigLIP2 features (not L2-normalised), one token per 8 fps frame."""

    def __init__(self, vision_model: SiglipVisionModel) -> None:
        super().__init__()
        self.vision_model = vision_model

    @property
    def width(self) -> int:
        return self.vision_model.config.hidden_size

    @classmethod
    def from_pretrained(cls, repo: str) -> SigLIP2Encoder:
        from transformers import SiglipVisionModel

        return cls(_from_pretrained(SiglipVisionModel.from_pretrained, repo))

    @classmethod
    def random(cls, width: int, seed: int, full_size: bool = False) -> SigLIP2Encoder:
        """Random weights; `full_size` keeps the released ViT-B/16 depth (for benchmarks)."""
        from transformers import SiglipVisionConfig, SiglipVisionModel

        layers, heads, mlp = (12, 12, 4 * width) if full_size else (2, 2, 2 * width)
        config = SiglipVisionConfig(
            hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
            num_attention_heads=heads, image_size=SIGLIP_IMAGE_SIZE, patch_size=16,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(SiglipVisionModel(config))

    def forward(self, pixels: Tensor, batch_size: int = 32) -> Tensor:
        """`pixels [T, 3, 512, 512]` in [-1, 1] -> `[1, T, width]` (batches bound memory; rows
        are independent)."""
        dtype = next(self.vision_model.parameters()).dtype
        chunks = [
            self.vision_model(pixel_values=chunk.to(dtype)).pooler_output
            for chunk in pixels.split(batch_size)
        ]
        return torch.cat(chunks).float()[None]


class ClapTextEncoder(nn.Module):
    """CLAP text tower + its tokenizer: `[negative, prompt]` -> token-level hidden states."""

    def __init__(self, text_model: ClapTextModelWithProjection,
                 tokenizer: PreTrainedTokenizerBase, text_length: int = 77) -> None:
        super().__init__()
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.text_length = text_length
        # Batch mode encodes on several threads; a fast tokenizer's first calls set its padding
        # state, which raises "Already borrowed" when another thread is inside it.
        self.tokenizer_lock = threading.Lock()

    @property
    def width(self) -> int:
        return self.text_model.config.hidden_size

    @classmethod
    def from_pretrained(cls, repo: str, text_length: int = 77) -> ClapTextEncoder:
        from transformers import AutoTokenizer, ClapTextModelWithProjection

        model = _from_pretrained(ClapTextModelWithProjection.from_pretrained, repo)
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, repo)
        return cls(model, tokenizer, text_length)

    @classmethod
    def random(
        cls, width: int, seed: int, text_length: int = 77, full_size: bool = False
    ) -> ClapTextEncoder:
        """Random weights; `full_size` keeps the released RoBERTa-base depth (benchmarks)."""
        from transformers import ClapTextConfig, ClapTextModelWithProjection

        tokenizer = byte_level_tokenizer()
        layers, heads, mlp = (12, 12, 4 * width) if full_size else (2, 2, 2 * width)
        config = ClapTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=mlp, projection_dim=width,
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(ClapTextModelWithProjection(config), tokenizer, text_length)

    @property
    def max_tokens(self) -> int:
        # RoBERTa positions start after the padding index.
        cfg = self.text_model.config
        assert cfg.pad_token_id is not None  # CLAP's RoBERTa config sets it
        return cfg.max_position_embeddings - cfg.pad_token_id - 1

    def forward(self, prompt: str, negative_prompt: str) -> tuple[Tensor, Tensor]:
        """Encode `[negative, prompt]` in one padded batch (the release's order and padding:
        the negative row is padded to the prompt's length) -> `(text, uncond_text)`, each
        `[1, L, width]` with `L <= text_length` (tokens past it are cut after encoding)."""
        device = next(self.text_model.parameters()).device
        with self.tokenizer_lock:
            batch = self.tokenizer([negative_prompt, prompt], padding=True, return_tensors="pt")
        n_tokens = batch["input_ids"].shape[1]
        if n_tokens > self.max_tokens:
            raise InputError(
                f"the prompt is too long for the text encoder ({n_tokens} tokens, at most "
                f"{self.max_tokens}); only the first {self.text_length} tokens shape the sound"
            )
        if n_tokens > self.text_length:
            log.warning("prompt has %d tokens; only the first %d influence the sound",
                        n_tokens, self.text_length)
        out = self.text_model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        )
        hidden = out.last_hidden_state[:, : self.text_length].float()
        return hidden[1:], hidden[:1]


def byte_level_tokenizer() -> PreTrainedTokenizerBase:
    """A RoBERTa-style byte-level BPE tokenizer with no merges (one token per byte), built in
    code so the tiny random model needs no download. Not for real weights."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials + sorted(byte_chars) + ["<mask>"])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", mask_token="<mask>",
    )
